"""Typed judge results and the two scoring methods.

A judgment is a number (status ``scored``), ``code``, ``refusal``, or
``unscored`` with a reason. Callers never see an unscorable answer as 0:
its score is None and its reason says why.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Literal

Status = Literal["scored", "code", "refusal", "unscored"]

# Reason codes for status "unscored". Only parse_failure and low_numeric_mass
# come from a well-formed judge reply, so only they may be cached.
PARSE_FAILURE = "parse_failure"
LOW_NUMERIC_MASS = "low_numeric_mass"
PROVIDER_REFUSAL = "provider_refusal"
ERROR = "error"
NOT_JUDGED = "not_judged"
CACHEABLE_REASONS = (PARSE_FAILURE, LOW_NUMERIC_MASS)

SPECIAL_STATUS = {"CODE": "code", "REFUSAL": "refusal"}
# A one-token reply holds only the start of a word: "REFUSAL" often arrives as "REF".
SPECIAL_MIN_PREFIX = {"CODE": 2, "REFUSAL": 3}


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens)


@dataclass(frozen=True)
class Judgment:
    """One judge verdict on one answer and metric (or one sample of it)."""

    status: Status
    score: float | None = None
    reason_code: str = ""
    detail: str = ""
    numeric_mass: float | None = None
    top_logprobs: list[tuple[str, float]] | None = None
    text: str | None = None
    usage: Usage = field(default_factory=Usage)
    request_id: str | None = None
    samples: int = 1

    def __post_init__(self) -> None:
        if (self.status == "scored") != (self.score is not None):
            raise ValueError(f"status {self.status!r} with score {self.score!r}")
        if self.status == "unscored" and not self.reason_code:
            raise ValueError("an unscored judgment needs a reason code")

    @property
    def reason(self) -> str:
        if not self.reason_code:
            return ""
        return f"{self.reason_code}: {self.detail}" if self.detail else self.reason_code

    @property
    def cacheable(self) -> bool:
        """True for verdicts from a well-formed reply; errors and provider refusals are retried later."""
        return self.status != "unscored" or self.reason_code in CACHEABLE_REASONS

    def with_usage(self, usage: Usage, request_id: str | None) -> "Judgment":
        return replace(self, usage=usage, request_id=request_id)


def unscored(reason_code: str, detail: str = "", **extra) -> Judgment:
    return Judgment(status="unscored", reason_code=reason_code, detail=detail, **extra)


def parse_integer_token(token: str) -> int | None:
    """Return the integer 0-100 a token spells (ignoring surrounding spaces), else None."""
    stripped = token.strip()
    if not re.fullmatch(r"\d{1,3}", stripped):
        return None
    value = int(stripped)
    return value if value <= 100 else None


def special_of_token(token: str, allowed: Iterable[str]) -> str | None:
    """Return the special answer (CODE, REFUSAL) whose start this token spells."""
    stripped = token.strip().upper()
    for word in allowed:
        if len(stripped) >= SPECIAL_MIN_PREFIX.get(word, 1) and word.startswith(stripped):
            return word
    return None


def logsumexp(values: list[float]) -> float:
    peak = max(values)
    if peak == -math.inf:
        return -math.inf
    return peak + math.log(sum(math.exp(value - peak) for value in values))


def score_from_logprobs(
    top_logprobs: list[tuple[str, float]],
    min_numeric_mass: float = 0.25,
    special: Iterable[str] = (),
) -> Judgment:
    """Score a one-token reply from its top logprobs.

    Tokens that spell the same integer ("5", " 5") are merged by log-sum-exp.
    The score is the expected integer over the numeric tokens, renormalized
    by their total probability (the numeric mass). A special answer wins
    when its mass is above the numeric mass and the threshold. Below the
    threshold the answer is unscored, never 0.
    """
    if not top_logprobs:
        return unscored(ERROR, "the response has no top logprobs", top_logprobs=[])
    special = tuple(special)
    numeric: dict[int, list[float]] = {}
    special_mass: dict[str, list[float]] = {}
    for token, logprob in top_logprobs:
        value = parse_integer_token(token)
        if value is not None:
            numeric.setdefault(value, []).append(logprob)
            continue
        word = special_of_token(token, special)
        if word is not None:
            special_mass.setdefault(word, []).append(logprob)

    merged = {value: math.exp(logsumexp(logprobs)) for value, logprobs in numeric.items()}
    numeric_mass = min(1.0, sum(merged.values()))
    masses = {word: min(1.0, math.exp(logsumexp(lps))) for word, lps in special_mass.items()}
    common = {"numeric_mass": numeric_mass, "top_logprobs": list(top_logprobs)}

    if masses:
        word, mass = max(masses.items(), key=lambda item: item[1])
        if mass > numeric_mass and mass >= min_numeric_mass:
            return Judgment(status=SPECIAL_STATUS[word], **common)
    if numeric_mass < min_numeric_mass or not merged:
        return unscored(
            LOW_NUMERIC_MASS,
            f"numeric mass {numeric_mass:.3f} is below {min_numeric_mass}",
            **common,
        )
    total = sum(merged.values())
    expected = sum(value * prob for value, prob in merged.items()) / total
    return Judgment(status="scored", score=expected, **common)


def score_from_text(text: str, special: Iterable[str] = ()) -> Judgment:
    """Parse a judge's text reply: one integer 0-100, or a special word.

    A reply with two different numbers, or a number beside a special word,
    is ambiguous and stays unscored.
    """
    stripped = (text or "").strip()
    common = {"text": text}
    if not stripped:
        return unscored(PARSE_FAILURE, "empty reply", **common)
    # "85/100" and "85 out of 100" name the scale, not a second number.
    stripped = re.sub(r"\s*(?:/|out of)\s*100\b", "", stripped, flags=re.IGNORECASE)
    words = {word for word in special if re.search(rf"\b{word}\b", stripped, flags=re.IGNORECASE)}
    numbers = {int(match) for match in re.findall(r"(?<![\d.])(\d{1,3})(?![\d.])", stripped)}
    in_range = {number for number in numbers if number <= 100}
    if len(words) + len(numbers) > 1:
        return unscored(PARSE_FAILURE, f"ambiguous reply {stripped[:80]!r}", **common)
    if words:
        return Judgment(status=SPECIAL_STATUS[words.pop()], **common)
    if in_range:
        return Judgment(status="scored", score=float(in_range.pop()), **common)
    if numbers:
        return unscored(PARSE_FAILURE, f"number out of range 0-100 in {stripped[:80]!r}", **common)
    return unscored(PARSE_FAILURE, f"no number in reply {stripped[:80]!r}", **common)


def combine_samples(samples: list[Judgment]) -> Judgment:
    """Combine repeated text samples of one answer into one judgment.

    Samples that failed are left out. The most frequent status among the
    rest wins (numbers first on a tie), and scored samples are averaged.
    """
    usage = Usage()
    for sample in samples:
        usage = usage + sample.usage
    valid = [sample for sample in samples if sample.status != "unscored"]
    if not valid:
        first = samples[0]
        reasons = sorted({sample.reason for sample in samples})
        return replace(first, detail="; ".join(reasons)[:300] if len(reasons) > 1 else first.detail,
                       usage=usage, samples=len(samples))
    counts = {status: sum(1 for sample in valid if sample.status == status) for status in ("scored", "code", "refusal")}
    status = max(counts, key=lambda name: (counts[name], name == "scored"))
    if status != "scored":
        return Judgment(status=status, usage=usage, samples=len(valid),
                        text=" | ".join(sample.text or "" for sample in samples))
    scores = [sample.score for sample in valid if sample.status == "scored"]
    return Judgment(
        status="scored",
        score=sum(scores) / len(scores),
        usage=usage,
        samples=len(scores),
        text=" | ".join(sample.text or "" for sample in samples),
    )
