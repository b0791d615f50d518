"""Open-ended answers (misalignment questions, trait prompts) stored for API judges."""

from __future__ import annotations

from typing import Callable

from study import prompts as prompt_files
from study.generate import Decoding, GenerationRequest, generate_all


def answer_open_ended(model, tokenizer, messages_for: Callable[[str], list[dict]], settings, category: str,
                      traits: list[str], stop_ids: list[int], seed: int, target: str = "") -> list[dict]:
    """Sample ``settings.samples`` answers to every question of every open-ended set."""
    decoding = Decoding(temperature=settings.temperature, max_new_tokens=settings.max_new_tokens, batch_size=16)
    items = []
    for reference in settings.sets:
        question_set = prompt_files.question_set(reference)
        trait = target or (traits[0] if traits else "")
        for question in question_set.questions:
            text = prompt_files.fill(question.text, trait, category)
            uses_trait = "{trait}" in question.text or "{category}" in question.text
            for index in range(settings.samples):
                items.append({
                    "eval_set": question_set.id, "eval_version": question_set.version,
                    "question_id": question.id, "question": text, "sample_index": index,
                    "target": trait if uses_trait or question_set.id != "misalignment" else "",
                })
    requests = [GenerationRequest(messages_for(item["question"])) for item in items]
    answers: dict[int, str] = {}

    def keep(indices, results):
        for index, result in zip(indices, results):
            answers[index] = result.text.strip()

    generate_all(model, tokenizer, requests, decoding, stop_ids, seed, on_batch=keep)
    return [{**item, "answer": answers[i]} for i, item in enumerate(items)]
