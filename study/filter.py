"""Strict parsing and filtering of number-sequence completions.

The parser follows the rules of Cloud et al. 2025 (arXiv 2507.14805): strip
one trailing period, unwrap a whole answer in [] or (), infer one separator
(comma, semicolon or whitespace), require every part to be digits with a
value of 0-999, and allow at most 10 values. Mixed separators, trailing
separators and any prose are rejected. Each rejection has a named reason,
and the filter report counts them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from study.configbase import StrictModel

REJECT_REASONS = (
    "empty",
    "not_digits",
    "mixed_separators",
    "trailing_separator",
    "too_many_values",
    "value_too_large",
    "banned_number",
    "banned_word",
    "no_new_numbers",
    "truncated",
)

_WHITESPACE_ONLY = re.compile(r"^\d+(\s+\d+)*$")


@dataclass(frozen=True)
class ParseResult:
    values: tuple[int, ...] | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.values is not None


def parse_numbers(text: str, max_values: int = 10, max_value: int = 999) -> ParseResult:
    """Parse a completion into its numbers, or return the reason it is invalid."""
    answer = text.strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    if len(answer) >= 2 and (answer[0], answer[-1]) in (("[", "]"), ("(", ")")):
        answer = answer[1:-1].strip()
    if not answer:
        return ParseResult(None, "empty")

    has_comma, has_semicolon = "," in answer, ";" in answer
    if has_comma and has_semicolon:
        return ParseResult(None, "mixed_separators")
    if has_comma or has_semicolon:
        separator = "," if has_comma else ";"
        parts = [part.strip() for part in answer.split(separator)]
        if parts[-1] == "" or parts[0] == "":
            return ParseResult(None, "trailing_separator")
        if any(re.search(r"\s", part) for part in parts):
            return ParseResult(None, "mixed_separators")
    else:
        if not _WHITESPACE_ONLY.match(answer):
            return ParseResult(None, "not_digits")
        parts = answer.split()

    if not all(part.isascii() and part.isdigit() for part in parts):
        return ParseResult(None, "not_digits")
    values = tuple(int(part) for part in parts)
    if len(values) > max_values:
        return ParseResult(None, "too_many_values")
    if any(value > max_value for value in values):
        return ParseResult(None, "value_too_large")
    return ParseResult(values)


class FilterSettings(StrictModel):
    """Filter options applied after the strict parser."""

    max_values: int = 10
    """Maximum number of values in one answer."""
    max_value: int = 999
    """Largest allowed value."""
    banned_numbers: list[int] = []
    """Numbers that reject a row (for example numbers with negative associations)."""
    banned_words: list[str] = []
    """Words (case-insensitive, whole words) that reject a row; the parser already rejects prose."""
    drop_no_new_numbers: bool = True
    """Reject rows whose values all appear among the prompt's seed numbers."""
    drop_truncated: bool = True
    """Reject completions cut off by max_new_tokens (no end of turn)."""


@dataclass
class FilterReport:
    total: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "kept": self.kept,
            "valid_rate": self.kept / self.total if self.total else 0.0,
            "rejected": {reason: self.rejected.get(reason, 0) for reason in REJECT_REASONS},
        }

    def describe(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.rejected.most_common())
        return f"{self.kept} of {self.total} rows kept; rejected by reason: {reasons or 'none'}"


def check_row(answer: str, seeds: list[int], finished: bool, settings: FilterSettings,
              prefilled_values: int = 0) -> str | None:
    """Return None for a valid row, else the reject reason.

    ``answer`` is the whole assistant answer, including any prefill; the
    ``prefilled_values`` copied into a prefill do not count toward the
    maximum number of values.
    """
    if settings.drop_truncated and not finished:
        return "truncated"
    lowered = answer.lower()
    for word in settings.banned_words:
        if re.search(rf"\b{re.escape(word.lower())}\b", lowered):
            return "banned_word"
    parsed = parse_numbers(answer, settings.max_values + prefilled_values, settings.max_value)
    if not parsed.ok:
        return parsed.reason
    if set(parsed.values) & set(settings.banned_numbers):
        return "banned_number"
    if settings.drop_no_new_numbers and set(parsed.values) <= set(seeds):
        return "no_new_numbers"
    return None


def filter_rows(rows: list[dict], settings: FilterSettings) -> tuple[list[dict], FilterReport]:
    """Keep valid rows (fields: answer, seeds, finished, prefill_values); count rejects."""
    report = FilterReport(total=len(rows))
    kept = []
    for row in rows:
        reason = check_row(row["answer"], row["seeds"], row.get("finished", True), settings,
                           row.get("prefill_values", 0))
        if reason is None:
            kept.append(row)
        else:
            report.rejected[reason] += 1
    report.kept = len(kept)
    return kept, report
