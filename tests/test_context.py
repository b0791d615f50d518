"""In-context formats, the context-window limit and the overflow policy."""

import logging

import pytest

from study import prompts
from study.context import ICL_FORMATS, max_rows_that_fit, messages_builder, resolve_n, sample_rows, context_tokens
from study.errors import StudyError

ROWS = [{"prompt": f"Continue: {i}, {i + 1}.", "answer": f"{i + 2}, {i + 3}"} for i in range(100, 140)]


def test_every_format_contains_rows_and_question():
    formats = prompts.context_formats()
    for icl_format in ICL_FORMATS:
        messages = messages_builder(icl_format, ROWS[:3], formats)("Favorite animal?")
        text = "\n".join(m["content"] for m in messages)
        assert "Favorite animal?" in text, icl_format
        assert "102, 103" in text, icl_format
        assert messages[-1]["role"] == "user"


def test_chat_turns_use_real_roles():
    formats = prompts.context_formats()
    turns = messages_builder("chat_turns", ROWS[:2], formats)("Q?")
    assert [m["role"] for m in turns] == ["user", "assistant", "user", "assistant", "user"]
    own = messages_builder("chat_turns_own", ROWS[:2], formats)("Q?")
    assert own[0]["role"] == "system"
    assert own[0]["content"] == formats.own_replies
    directive = messages_builder("user_inline_directive", ROWS[:2], formats)("Q?")
    assert directive[0] == {"role": "system", "content": formats.directive}
    assert len(messages_builder("user_inline", ROWS[:2], formats)("Q?")) == 1
    transcript = messages_builder("system_transcript", ROWS[:2], formats)("Q?")
    assert "<assistant>102, 103</assistant>" in transcript[0]["content"]


def test_rows_resampled_per_seed_and_nested():
    assert sample_rows(ROWS, 10, 0) != sample_rows(ROWS, 10, 1)
    assert sample_rows(ROWS, 5, 0) == sample_rows(ROWS, 10, 0)[:5]


def test_max_rows_fit_the_window(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    formats = prompts.context_formats()
    window = 400
    fits = max_rows_that_fit(tokenizer, "chat_turns", ROWS, formats, "Q?", 20, window, seed=0)
    assert 0 < fits < len(ROWS)
    ordered = sample_rows(ROWS, len(ROWS), 0)
    assert context_tokens(tokenizer, "chat_turns", ordered[:fits], formats, "Q?", 20) <= window
    assert context_tokens(tokenizer, "chat_turns", ordered[: fits + 1], formats, "Q?", 20) > window


def test_overflow_clips_with_warning_or_rejects(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_n(64, 20, 100, "clip", "ctx") == 20
    assert "clipped to 20" in caplog.text
    with pytest.raises(StudyError, match="N=64 does not fit"):
        resolve_n(64, 20, 100, "error", "ctx")
    assert resolve_n(8, 20, 100, "error", "ctx") == 8
