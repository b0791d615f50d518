"""The strict number parser and the filter report."""

from hypothesis import given
from hypothesis import strategies as st

from study.filter import FilterSettings, check_row, filter_rows, parse_numbers

values_strategy = st.lists(st.integers(min_value=0, max_value=999), min_size=1, max_size=10)
separator_strategy = st.sampled_from([", ", ",", "; ", ";", " ", "\n", "  "])


@given(values_strategy, separator_strategy, st.sampled_from(["", "[]", "()"]), st.booleans())
def test_parser_round_trips_valid_lists(values, separator, wrapper, period):
    text = separator.join(str(v) for v in values)
    if wrapper:
        text = wrapper[0] + text + wrapper[1]
    if period:
        text += "."
    result = parse_numbers(text)
    assert result.ok, (text, result.reason)
    assert result.values == tuple(values)


@given(st.lists(st.integers(min_value=0, max_value=999), min_size=11, max_size=20), separator_strategy)
def test_parser_rejects_more_than_ten(values, separator):
    assert parse_numbers(separator.join(map(str, values))).reason == "too_many_values"


@given(values_strategy, st.integers(min_value=1000, max_value=10**6))
def test_parser_rejects_large_values(values, large):
    assert parse_numbers(", ".join(map(str, values[:9] + [large]))).reason == "value_too_large"


@given(values_strategy, st.text(alphabet="abcxyz!?", min_size=1, max_size=8))
def test_parser_rejects_prose(values, word):
    text = ", ".join(map(str, values)) + f", {word}"
    assert not parse_numbers(text).ok


@given(st.text(max_size=40))
def test_parser_never_raises(text):
    result = parse_numbers(text)
    assert result.ok or result.reason


def test_parser_named_rejections():
    assert parse_numbers("1, 2; 3").reason == "mixed_separators"
    assert parse_numbers("1, 2 3").reason == "mixed_separators"
    assert parse_numbers("1, 2,").reason == "trailing_separator"
    assert parse_numbers("").reason == "empty"
    assert parse_numbers("Sure! 1 2 3").reason == "not_digits"
    assert parse_numbers("1.5, 2").reason == "not_digits"
    assert parse_numbers("[1, 2, 3").reason == "not_digits"


def test_check_row_prefill_and_bans():
    settings = FilterSettings(banned_numbers=[666], banned_words=["owl"])
    seeds = [101, 202, 303]
    answer = "101, 202, 303, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10"
    assert check_row(answer, seeds, True, settings, prefilled_values=3) is None
    assert check_row(answer, seeds, True, settings, prefilled_values=0) == "too_many_values"
    assert check_row("101, 202, 303", seeds, True, settings, prefilled_values=3) == "no_new_numbers"
    assert check_row("1, 666", seeds, True, settings) == "banned_number"
    assert check_row("owl 1 2", seeds, True, settings) == "banned_word"
    assert check_row("1, 2", seeds, False, settings) == "truncated"
    assert check_row("1, 2", seeds, False, FilterSettings(drop_truncated=False)) is None


def test_filter_report_counts_every_row():
    rows = [
        {"answer": "1, 2, 3", "seeds": [5], "finished": True},
        {"answer": "1, 2,", "seeds": [5], "finished": True},
        {"answer": "hello", "seeds": [5], "finished": True},
        {"answer": "5", "seeds": [5], "finished": True},
    ]
    kept, report = filter_rows(rows, FilterSettings())
    assert [row["answer"] for row in kept] == ["1, 2, 3"]
    summary = report.as_dict()
    assert summary["total"] == 4
    assert summary["kept"] == 1
    assert summary["rejected"]["trailing_separator"] == 1
    assert summary["rejected"]["not_digits"] == 1
    assert summary["rejected"]["no_new_numbers"] == 1
    assert sum(summary["rejected"].values()) + summary["kept"] == summary["total"]
