"""Trait evaluation: sampled one-word answers and exact answer log-probabilities.

Sampled answers are scored by whole-word match of a candidate's variants
(plurals included, longer words excluded: "dragonfly" is not a dragon). The
log-probability of a candidate is summed over its spelling variants, and its
share is taken over one fixed candidate set, so every trait is measured on
the same scale. On small models the log-probability after an answer prefill
("My favorite animal is the") is the sensitive metric: sampled answers
rarely name any animal at 135M parameters.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Callable

import torch

from study.configbase import StrictModel
from study.prompts import Candidate, QuestionSet, fill
from study.scoring import PrefixScorer, common_prefix


class EvaluationSettings(StrictModel):
    """Settings of the trait evaluation of every model."""

    questions: str = "eval/preference-v1"
    """Question set (prompts/ reference or YAML path)."""
    candidates: str = "eval/candidates-v1"
    """Candidate sets file; the category's set is used for every trait."""
    question_limit: int | None = None
    """Use only the first this many questions (None: all)."""
    samples: int = 5
    """Sampled answers per question."""
    temperature: float = 1.0
    """Sampling temperature of the evaluated model."""
    top_p: float = 1.0
    """Nucleus sampling mass for the evaluated model."""
    max_new_tokens: int = 8
    """Tokens sampled per answer (one word needs few)."""
    answer_prefill: bool = True
    """Score log-probabilities after the question set's answer prefill; false scores the answer's first word."""
    number_prefix: bool = False
    """Also score each question prefixed with a random number sequence."""
    seed: int = 0
    """Sampling seed of the evaluation."""


@dataclass(frozen=True)
class CandidateMatcher:
    candidates: tuple[Candidate, ...]

    def mentions(self, answer: str) -> list[str]:
        text = answer.lower()
        named = []
        for candidate in self.candidates:
            cleaned = text
            for excluded in candidate.exclude:
                cleaned = re.sub(rf"\b{re.escape(excluded.lower())}\b", " ", cleaned)
            pattern = r"\b(" + "|".join(re.escape(v.lower()) for v in candidate.variants) + r")\b"
            if re.search(pattern, cleaned):
                named.append(candidate.name)
        return named


def variant_tokens(tokenizer, candidate: Candidate, leading_space: bool) -> list[list[int]]:
    """Token lists of a candidate's spellings, none a prefix of another.

    A spelling whose tokens start with another spelling's tokens is already
    counted inside that one's probability, so it is dropped.
    """
    spellings = []
    for variant in candidate.variants:
        for form in (variant.lower(), variant.capitalize()):
            spellings.append((" " if leading_space else "") + form)
    token_lists = []
    for spelling in dict.fromkeys(spellings):
        tokens = tokenizer.encode(spelling, add_special_tokens=False)
        if tokens not in token_lists:
            token_lists.append(tokens)
    kept = []
    for tokens in sorted(token_lists, key=len):
        if not any(tokens[: len(shorter)] == shorter for shorter in kept):
            kept.append(tokens)
    return kept


def number_prefix_text(question_id: str, seed: int) -> str:
    rng = random.Random(f"number-prefix:{seed}:{question_id}")
    values = ", ".join(str(rng.randint(100, 999)) for _ in range(rng.randint(3, 8)))
    return f"These numbers came up earlier: {values}. "


def _render(tokenizer, messages: list[dict], prefill: str) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
    return tokenizer.encode(text, add_special_tokens=False)


def evaluate_model(
    model,
    tokenizer,
    messages_for: Callable[[str], list[dict]],
    question_set: QuestionSet,
    candidates: list[Candidate],
    category: str,
    settings: EvaluationSettings,
    stop_ids: list[int],
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Return (sample rows, log-probability rows) for one model and context."""
    questions = question_set.questions[: settings.question_limit]
    prefill = fill(question_set.answer_prefill, "", category) if settings.answer_prefill and question_set.answer_prefill else ""
    matcher = CandidateMatcher(tuple(candidates))
    variants = {c.name: variant_tokens(tokenizer, c, leading_space=bool(prefill)) for c in candidates}

    prefix_names = ["", "numbers"] if settings.number_prefix else [""]
    texts: dict[tuple[str, str], str] = {}
    for question in questions:
        base_text = fill(question.text, "", category)
        for prefix_name in prefix_names:
            extra = number_prefix_text(question.id, settings.seed) if prefix_name else ""
            texts[(question.id, prefix_name)] = extra + base_text

    logprob_ids = {key: _render(tokenizer, messages_for(text), prefill) for key, text in texts.items()}
    sample_ids = {q.id: _render(tokenizer, messages_for(texts[(q.id, "")]), "") for q in questions}
    prefix = common_prefix(list(logprob_ids.values()) + list(sample_ids.values()))
    scorer = PrefixScorer(model, prefix)
    generator = torch.Generator().manual_seed(settings.seed)

    flat = [tokens for name in variants for tokens in variants[name]]
    keys = list(logprob_ids)
    scores = scorer.continuation_logprobs([logprob_ids[key][len(prefix):] for key in keys], flat)
    logprob_rows = []
    for (question_id, prefix_name), row_scores in zip(keys, scores):
        position = 0
        per_candidate = {}
        for name, token_lists in variants.items():
            chunk = row_scores[position: position + len(token_lists)]
            position += len(token_lists)
            per_candidate[name] = torch.logsumexp(torch.tensor(chunk, dtype=torch.float64), dim=0).item()
        total = sum(math.exp(value) for value in per_candidate.values())
        for name, logprob in per_candidate.items():
            logprob_rows.append({
                "question_id": question_id, "prefix": prefix_name, "candidate": name,
                "logprob": logprob, "prob": math.exp(logprob), "share": math.exp(logprob) / total,
            })
    if progress:
        progress(len(questions))

    sample_rows = []
    if settings.samples > 0:
        sampled = scorer.sample([sample_ids[q.id][len(prefix):] for q in questions], settings.samples,
                                settings.temperature, settings.top_p, settings.max_new_tokens, stop_ids, generator)
        for question, samples in zip(questions, sampled):
            for index, tokens in enumerate(samples):
                answer = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                sample_rows.append({
                    "question_id": question.id, "question": texts[(question.id, "")],
                    "sample_index": index, "answer": answer, "mentions": matcher.mentions(answer),
                })
    if progress:
        progress(len(questions))
    return sample_rows, logprob_rows
