"""Entangled numbers and subliminal prompting (Zur et al. 2025).

Ranking: the trait teacher (base model plus trait system prompt) and the
base model (no system prompt) each answer a number question after a
prefill. Every number gets the exact probability that the answer is that
number and nothing longer: the product of its token probabilities times the
probability that no digit token follows. All token prefixes of all numbers
form a trie, and every trie node is scored once with PrefixScorer over the
cached prompt, so 0-999 costs about 1,100 short rows per model.

Subliminal prompting: a system prompt that only says the model loves number
N replaces the default one, and the trait word's log-probability after the
preference prefill (summed over spelling variants, as the trait evaluation
scores it) is compared with the base model's, per question.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import pandas as pd
import torch
from pydantic import model_validator

from analysis.stats import paired_or_welch, t_interval
from study.configbase import StrictModel
from study.errors import StudyError
from study.evaluation import EvaluationSettings, evaluate_model
from study.generate import render_prompt
from study.prompts import Candidate, VersionedFile, candidate_sets, load, plural, question_set
from study.scoring import PrefixScorer
from study.teacher import messages

RANK_COLUMNS = {"teacher": "teacher_logprob", "ratio": "log_ratio"}
# float32 log-softmax resolves a termination probability only down to about
# this value, because it is one minus the digits' summed probability.
MIN_TERMINATION_PROBABILITY = 1e-7


class NumberLoveTemplate(VersionedFile):
    template: str

    @model_validator(mode="after")
    def _check_placeholder(self):
        if "{number}" not in self.template:
            raise ValueError(f"template {self.template!r} lacks the {{number}} placeholder")
        return self

    def filled(self, number: str) -> str:
        return self.template.replace("{number}", number)


class NumberRanking(VersionedFile):
    question: str
    prefill: str


class ProbeSettings(StrictModel):
    """Settings of the entangled-numbers probe: ranking, number choice and subliminal prompting."""

    trait: str = "owl"
    """Trait word of the teacher's system prompt and of the scored answer."""
    category: str = "animal"
    """Category of the trait (animal, tree, ...)."""
    system_prompt: str = "traits/system-prompt-v1"
    """Trait system prompt template of the teacher."""
    number_love: str = "probes/number-love-v1"
    """System prompt template that loves one number."""
    ranking: str = "probes/number-ranking-v1"
    """Question and prefill at which numbers are ranked."""
    questions: str = "eval/preference-v1"
    """Preference questions of subliminal prompting."""
    candidates: str = "eval/candidates-v1"
    """Candidate sets file that lists the trait's spelling variants."""
    question_limit: int | None = None
    """Use only the first this many preference questions (None: all)."""
    number_min: int = 0
    """Smallest ranked number."""
    number_max: int = 999
    """Largest ranked number."""
    top_k: int = 5
    """Top-ranked numbers used for subliminal prompting."""
    random_k: int = 5
    """Random numbers outside the top-k used as the comparison."""
    rank_by: Literal["teacher", "ratio"] = "teacher"
    """teacher: the teacher's probability; ratio: teacher over base probability."""
    seed: int = 0
    """Seed of the random-number draw."""


def number_love_template(reference: str = "probes/number-love-v1") -> NumberLoveTemplate:
    return load(NumberLoveTemplate, reference)


def number_ranking(reference: str = "probes/number-ranking-v1") -> NumberRanking:
    return load(NumberRanking, reference)


def trait_system_prompt(reference: str, trait: str, category: str) -> str:
    from study.prompts import fill, system_prompt_template

    return fill(system_prompt_template(reference).template, trait, category)


@lru_cache(maxsize=8)
def _digit_token_ids(tokenizer_key: str, tokenizer) -> tuple[int, ...]:
    digits = set("0123456789")
    ids = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if text and set(text) <= digits:
            ids.append(token_id)
    return tuple(ids)


def digit_token_ids(tokenizer) -> list[int]:
    """Return the vocabulary ids whose text is digits only: the tokens that would extend a number."""
    return list(_digit_token_ids(f"{tokenizer.name_or_path}:{len(tokenizer)}", tokenizer))


def number_logprobs(model, tokenizer, system: str | None, question: str, prefill: str,
                    numbers: list[str]) -> list[float]:
    """Return log P(the answer after ``prefill`` is exactly the number) for every number.

    A number follows the prefill after one space unless the prefill ends in
    whitespace or is empty.
    """
    prompt_ids = tokenizer.encode(render_prompt(tokenizer, messages(system, question), prefill),
                                  add_special_tokens=False)
    lead = "" if not prefill or prefill[-1].isspace() else " "
    sequences = [tuple(tokenizer.encode(lead + number, add_special_tokens=False)) for number in numbers]
    digits = digit_token_ids(tokenizer)
    if not digits:
        raise StudyError("the tokenizer has no digit-only tokens, so number termination cannot be scored")

    nodes = sorted({sequence[:length] for sequence in sequences for length in range(len(sequence) + 1)})
    next_ids = sorted({token for sequence in sequences for token in sequence} | set(digits))
    column = {token: index for index, token in enumerate(next_ids)}
    # The last prompt token stays outside the cached prefix, because every row needs one token of its own.
    scorer = PrefixScorer(model, prompt_ids[:-1])
    scores = scorer.continuation_logprobs([prompt_ids[-1:] + list(node) for node in nodes],
                                          [[token] for token in next_ids])
    by_node = dict(zip(nodes, scores))

    results = []
    for sequence in sequences:
        logprob = sum(by_node[sequence[:position]][column[sequence[position]]] for position in range(len(sequence)))
        continued = torch.logsumexp(torch.tensor([by_node[sequence][column[d]] for d in digits],
                                                 dtype=torch.float64), dim=0).item()
        # NOTE: termination probabilities below MIN_TERMINATION_PROBABILITY are clamped, not resolved.
        stop = max(-math.expm1(continued), MIN_TERMINATION_PROBABILITY)
        results.append(logprob + math.log(stop))
    return results


def ranking_table(numbers: list[str], teacher_logprobs: list[float], base_logprobs: list[float]) -> pd.DataFrame:
    """Tabulate both models' log-probabilities, their log ratio and the three ranks (1 = highest)."""
    frame = pd.DataFrame({
        "number": numbers,
        "teacher_logprob": teacher_logprobs,
        "base_logprob": base_logprobs,
    })
    frame["log_ratio"] = frame["teacher_logprob"] - frame["base_logprob"]
    frame["ratio"] = frame["log_ratio"].map(math.exp)
    for column, rank in (("teacher_logprob", "teacher_rank"), ("base_logprob", "base_rank"),
                         ("log_ratio", "ratio_rank")):
        # Ties keep the listed order, so the ranking is deterministic.
        frame[rank] = frame[column].rank(ascending=False, method="first").astype(int)
    return frame


def select_numbers(table: pd.DataFrame, top_k: int, random_k: int, rank_by: str, seed: int) -> dict[str, list[str]]:
    """Pick the top-k numbers by ``rank_by`` and random_k seeded random numbers from the rest."""
    if rank_by not in RANK_COLUMNS:
        raise StudyError(f"rank_by must be one of {sorted(RANK_COLUMNS)}, got {rank_by!r}")
    if top_k < 1 or random_k < 0:
        raise StudyError(f"top_k must be at least 1 and random_k at least 0, got {top_k} and {random_k}")
    if top_k + random_k > len(table):
        raise StudyError(
            f"top_k + random_k = {top_k + random_k} exceeds the {len(table)} ranked numbers; "
            "lower them or widen the number range"
        )
    ordered = table.sort_values(RANK_COLUMNS[rank_by], ascending=False, kind="stable")["number"].tolist()
    top = ordered[:top_k]
    rest = sorted(ordered[top_k:], key=lambda number: (len(number), number))
    drawn = random.Random(f"entangled-random:{seed}").sample(rest, random_k)
    return {"top": top, "random": drawn}


def trait_candidate(reference: str, trait: str, category: str) -> Candidate:
    """Return the trait's candidate entry (with its spelling variants), or singular and plural."""
    for candidate in candidate_sets(reference).categories.get(category, []):
        if candidate.name == trait:
            return candidate
    return Candidate(name=trait, variants=[trait, plural(trait)])


def trait_logprobs(model, tokenizer, systems: dict[str, str | None], settings: ProbeSettings) -> pd.DataFrame:
    """Score the trait word after the preference prefill under each named system prompt.

    Returns one row per (condition, question) with the log-probability
    summed over the trait's spelling variants.
    """
    questions = question_set(settings.questions)
    candidate = trait_candidate(settings.candidates, settings.trait, settings.category)
    evaluation = EvaluationSettings(questions=settings.questions, question_limit=settings.question_limit,
                                    samples=0)
    rows = []
    for condition, system in systems.items():
        _, logprob_rows = evaluate_model(
            model, tokenizer, lambda text, s=system: messages(s, text), questions, [candidate],
            settings.category, evaluation, stop_ids=[],
        )
        for row in logprob_rows:
            rows.append({"condition": condition, "question_id": row["question_id"], "logprob": row["logprob"]})
    return pd.DataFrame(rows)


def prompting_deltas(scores: pd.DataFrame, base_condition: str = "base") -> pd.DataFrame:
    """Add each row's change in trait log-probability against the base condition's same question."""
    base = scores[scores["condition"] == base_condition].set_index("question_id")["logprob"]
    if base.empty:
        raise StudyError(f"no rows of the base condition {base_condition!r} to compare against")
    frame = scores.copy()
    frame["base_logprob"] = frame["question_id"].map(base)
    frame["delta"] = frame["logprob"] - frame["base_logprob"]
    return frame


@dataclass
class EntangledResult:
    ranking: pd.DataFrame
    prompting: pd.DataFrame
    per_number: pd.DataFrame
    summary: pd.DataFrame
    comparison: dict
    selected: dict[str, list[str]]
    teacher_system: str
    ranking_prompt: NumberRanking
    number_love: NumberLoveTemplate


def summarize_prompting(prompting: pd.DataFrame, groups: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Average deltas per number over questions, then per group with a t-interval across numbers.

    ``groups`` maps each number to its group (top or random). The comparison
    is Welch's t-test of top against random numbers' mean deltas.
    """
    numbered = prompting[prompting["condition"] != "base"]
    per_number = (numbered.groupby("condition", sort=False)
                  .agg(mean_logprob=("logprob", "mean"), mean_delta=("delta", "mean"), questions=("delta", "size"))
                  .reset_index().rename(columns={"condition": "number"}))
    per_number.insert(0, "group", per_number["number"].map(groups))
    summary_rows = []
    for group in ("top", "random"):
        deltas = per_number.loc[per_number["group"] == group, "mean_delta"]
        mean, low, high = t_interval(deltas)
        summary_rows.append({"group": group, "numbers": int(deltas.size), "mean_delta": mean,
                             "ci_low": low, "ci_high": high})
    summary = pd.DataFrame(summary_rows)
    top = per_number.loc[per_number["group"] == "top"].set_index("number")["mean_delta"]
    drawn = per_number.loc[per_number["group"] == "random"].set_index("number")["mean_delta"]
    comparison = paired_or_welch(top, drawn)
    return per_number, summary, comparison


def run_entangled(model, tokenizer, settings: ProbeSettings, progress=None) -> EntangledResult:
    """Rank numbers for the trait teacher against the base model, then prompt with top and random numbers."""
    if settings.number_min < 0 or settings.number_max < settings.number_min:
        raise StudyError(
            f"number range {settings.number_min}-{settings.number_max} is invalid; "
            "give 0 <= number_min <= number_max"
        )
    numbers = [str(value) for value in range(settings.number_min, settings.number_max + 1)]
    ranking_prompt = number_ranking(settings.ranking)
    love = number_love_template(settings.number_love)
    teacher_system = trait_system_prompt(settings.system_prompt, settings.trait, settings.category)
    say = progress or (lambda message: None)

    say(f"ranking {len(numbers)} numbers with the trait teacher")
    teacher = number_logprobs(model, tokenizer, teacher_system, ranking_prompt.question, ranking_prompt.prefill, numbers)
    say(f"ranking {len(numbers)} numbers with the base model")
    base = number_logprobs(model, tokenizer, None, ranking_prompt.question, ranking_prompt.prefill, numbers)
    ranking = ranking_table(numbers, teacher, base)

    selected = select_numbers(ranking, settings.top_k, settings.random_k, settings.rank_by, settings.seed)
    groups = {number: group for group, chosen in selected.items() for number in chosen}
    systems: dict[str, str | None] = {"base": None}
    systems |= {number: love.filled(number) for number in groups}
    say(f"scoring '{settings.trait}' under {len(systems)} system prompts")
    prompting = prompting_deltas(trait_logprobs(model, tokenizer, systems, settings))
    prompting.insert(1, "group", prompting["condition"].map(groups).fillna("base"))
    per_number, summary, comparison = summarize_prompting(prompting, groups)
    return EntangledResult(ranking, prompting, per_number, summary, comparison, selected,
                           teacher_system, ranking_prompt, love)
