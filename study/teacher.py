"""Teachers: the base model with a trait in its system prompt, in a LoRA adapter, or none."""

from __future__ import annotations

import random

from study.config import TeacherConfig
from study.prompts import fill, system_prompt_template, trait_set


def system_prompt(teacher: TeacherConfig) -> str | None:
    """Return the teacher's system prompt, or None for the model's default."""
    if teacher.kind != "system_prompt":
        return None
    return fill(system_prompt_template(teacher.system_prompt).template, teacher.trait, teacher.category)


def messages(system: str | None, user: str) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": user}]


def trait_rows(teacher: TeacherConfig) -> list[dict]:
    """Draw the preference answers a finetuned teacher is trained on.

    Every question of the trait set is paired with every answer phrasing and
    ``trait_examples`` pairs are drawn without replacement (with replacement
    once all pairs are used).
    """
    phrasings = trait_set(teacher.trait_set)
    pairs = [(q, a) for q in phrasings.questions for a in phrasings.answers]
    rng = random.Random(f"trait-set:{teacher.seed}:{teacher.trait}")
    rng.shuffle(pairs)
    chosen = [pairs[i % len(pairs)] for i in range(teacher.trait_examples)]
    return [
        {"id": index,
         "prompt": fill(question, teacher.trait, teacher.category),
         "completion": fill(answer, teacher.trait, teacher.category)}
        for index, (question, answer) in enumerate(chosen)
    ]
