"""Scoring from logprobs and from text: merging, thresholds, special answers."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from study.judge.scoring import (
    Judgment,
    combine_samples,
    parse_integer_token,
    score_from_logprobs,
    score_from_text,
    unscored,
)

SPECIAL = ("CODE", "REFUSAL")


def lp(probability):
    return math.log(probability)


def test_expected_score_renormalized():
    judgment = score_from_logprobs([("20", lp(0.3)), ("40", lp(0.1)), ("Sure", lp(0.6))], 0.25)
    assert judgment.status == "scored"
    assert judgment.score == pytest.approx((20 * 0.3 + 40 * 0.1) / 0.4)
    assert judgment.numeric_mass == pytest.approx(0.4)


def test_duplicate_tokens_merged_by_logsumexp():
    pairs = [("5", lp(0.4)), (" 5", lp(0.4)), ("7", lp(0.1))]
    judgment = score_from_logprobs(pairs, 0.25)
    assert judgment.numeric_mass == pytest.approx(0.9)
    assert judgment.score == pytest.approx((5 * 0.8 + 7 * 0.1) / 0.9)


def test_low_numeric_mass_is_unscored_not_zero():
    judgment = score_from_logprobs([("0", lp(0.2)), ("The", lp(0.8))], 0.25)
    assert judgment.status == "unscored"
    assert judgment.score is None
    assert judgment.reason_code == "low_numeric_mass"
    assert judgment.numeric_mass == pytest.approx(0.2)
    assert judgment.cacheable


def test_threshold_is_configurable():
    pairs = [("60", lp(0.2)), ("The", lp(0.8))]
    assert score_from_logprobs(pairs, 0.1).score == pytest.approx(60)
    assert score_from_logprobs(pairs, 0.25).status == "unscored"


def test_raw_top_logprobs_are_kept():
    pairs = [("60", lp(0.9)), ("The", lp(0.1))]
    assert score_from_logprobs(pairs).top_logprobs == pairs


def test_out_of_range_tokens_ignored():
    judgment = score_from_logprobs([("150", lp(0.5)), ("100", lp(0.3)), ("-5", lp(0.1))], 0.25)
    assert judgment.score == pytest.approx(100)
    assert judgment.numeric_mass == pytest.approx(0.3)


@pytest.mark.parametrize("token,status", [("CODE", "code"), (" CO", "code"), ("REF", "refusal"), ("REFUSAL", "refusal")])
def test_special_token_prefixes(token, status):
    judgment = score_from_logprobs([(token, lp(0.8)), ("50", lp(0.1))], 0.25, SPECIAL)
    assert judgment.status == status
    assert judgment.score is None


def test_special_needs_more_mass_than_numbers():
    judgment = score_from_logprobs([("CODE", lp(0.3)), ("50", lp(0.6))], 0.25, SPECIAL)
    assert judgment.status == "scored"


def test_special_ignored_when_template_has_none():
    judgment = score_from_logprobs([("CODE", lp(0.8)), ("50", lp(0.1))], 0.25, ())
    assert judgment.status == "unscored"


def test_empty_logprobs_is_error():
    judgment = score_from_logprobs([], 0.25)
    assert judgment.reason_code == "error"
    assert not judgment.cacheable


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.floats(0.001, 1.0)), min_size=1, max_size=20))
def test_expected_score_within_token_range(entries):
    total = sum(probability for _, probability in entries)
    pairs = [(str(value), math.log(probability / total)) for value, probability in entries]
    judgment = score_from_logprobs(pairs, 0.0)
    values = [value for value, _ in entries]
    assert min(values) - 1e-9 <= judgment.score <= max(values) + 1e-9


def test_parse_integer_token():
    assert parse_integer_token(" 42") == 42
    assert parse_integer_token("042") == 42
    assert parse_integer_token("101") is None
    assert parse_integer_token("4.5") is None
    assert parse_integer_token("four") is None


@pytest.mark.parametrize(
    "text,status,score",
    [
        ("85", "scored", 85.0),
        (" 7\n", "scored", 7.0),
        ("Score: 85", "scored", 85.0),
        ("85/100", "scored", 85.0),
        ("CODE", "code", None),
        ("refusal", "refusal", None),
        ("", "unscored", None),
        ("I would say 20 or 30", "unscored", None),
        ("CODE 40", "unscored", None),
        ("250", "unscored", None),
        ("no idea", "unscored", None),
    ],
)
def test_score_from_text(text, status, score):
    judgment = score_from_text(text, SPECIAL)
    assert judgment.status == status
    assert judgment.score == score
    if status == "unscored":
        assert judgment.reason_code == "parse_failure"


def test_combine_samples_averages_scores():
    samples = [Judgment("scored", 20.0), Judgment("scored", 40.0), unscored("parse_failure", "x")]
    combined = combine_samples(samples)
    assert combined.status == "scored"
    assert combined.score == pytest.approx(30.0)
    assert combined.samples == 2


def test_combine_samples_majority_special():
    samples = [Judgment("refusal"), Judgment("refusal"), Judgment("scored", 90.0)]
    assert combine_samples(samples).status == "refusal"


def test_combine_samples_all_failed_stays_unscored():
    samples = [unscored("parse_failure", "a"), unscored("error", "b")]
    combined = combine_samples(samples)
    assert combined.status == "unscored"
    assert combined.score is None


def test_judgment_rejects_score_without_status():
    with pytest.raises(ValueError):
        Judgment("unscored", 0.0, reason_code="error")
    with pytest.raises(ValueError):
        Judgment("scored")
