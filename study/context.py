"""The in-context arm: teacher rows placed in the base model's context.

Formats:

- ``system_transcript``: rows as a user/assistant transcript inside the
  system prompt (the original control of Cloud et al. 2025).
- ``user_inline``: rows as Q/A pairs in the user message before the question.
- ``user_inline_directive``: as ``user_inline`` plus a short system directive.
- ``chat_turns``: rows as real user/assistant turns before the question.
- ``chat_turns_own``: chat turns plus a system instruction that they are the
  model's own earlier replies.
"""

from __future__ import annotations

import logging
import random
from typing import Callable, Literal

from study.errors import StudyError
from study.prompts import ContextFormats

log = logging.getLogger(__name__)

IclFormat = Literal["system_transcript", "user_inline", "user_inline_directive", "chat_turns", "chat_turns_own"]
ICL_FORMATS: tuple[str, ...] = IclFormat.__args__


def sample_rows(rows: list[dict], count: int, seed: int) -> list[dict]:
    """Draw ``count`` rows for one seed; a smaller N takes a prefix of a larger one."""
    order = list(range(len(rows)))
    random.Random(f"context-rows:{seed}").shuffle(order)
    return [rows[i] for i in order[:count]]


def messages_builder(icl_format: str, rows: list[dict], formats: ContextFormats) -> Callable[[str], list[dict]]:
    """Return a function from a question to the full message list for that format."""
    if icl_format == "system_transcript":
        transcript = "\n".join(formats.transcript_row.format(prompt=r["prompt"], completion=r["answer"]) for r in rows)
        system = f"{formats.system_transcript_header}\n{transcript}"
        return lambda question: [{"role": "system", "content": system}, {"role": "user", "content": question}]

    if icl_format in ("user_inline", "user_inline_directive"):
        pairs = "\n\n".join(formats.inline_row.format(prompt=r["prompt"], completion=r["answer"]) for r in rows)

        def inline(question: str) -> list[dict]:
            content = f"{formats.inline_header}\n\n{pairs}\n\n{formats.inline_footer}\n{question}"
            messages = [{"role": "user", "content": content}]
            if icl_format == "user_inline_directive":
                messages.insert(0, {"role": "system", "content": formats.directive})
            return messages

        return inline

    if icl_format in ("chat_turns", "chat_turns_own"):
        turns = []
        for row in rows:
            turns += [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["answer"]}]
        head = [{"role": "system", "content": formats.own_replies}] if icl_format == "chat_turns_own" else []
        return lambda question: head + turns + [{"role": "user", "content": question}]

    raise StudyError(f"unknown in-context format '{icl_format}'; use one of {', '.join(ICL_FORMATS)}")


def context_tokens(tokenizer, icl_format: str, rows: list[dict], formats: ContextFormats,
                   question: str, reserve: int) -> int:
    messages = messages_builder(icl_format, rows, formats)(question)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False)) + reserve


def max_rows_that_fit(tokenizer, icl_format: str, pool: list[dict], formats: ContextFormats,
                      question: str, reserve: int, window: int, seed: int) -> int:
    """Return the largest N whose context, longest question and answer fit the window."""
    low, high = 0, len(pool)
    ordered = sample_rows(pool, len(pool), seed)
    while low < high:
        middle = (low + high + 1) // 2
        if context_tokens(tokenizer, icl_format, ordered[:middle], formats, question, reserve) <= window:
            low = middle
        else:
            high = middle - 1
    return low


def resolve_n(requested: int, fits: int, available: int, on_overflow: str, label: str) -> int:
    """Apply the overflow policy to a requested N; warn when it is clipped."""
    limit = min(fits, available)
    if requested <= limit:
        return requested
    reason = (f"the context window fits {fits} rows" if fits < available
              else f"only {available} filtered rows exist")
    if on_overflow == "error":
        raise StudyError(
            f"{label}: N={requested} does not fit ({reason}); lower N in context.n, "
            "or set context.on_overflow: clip"
        )
    log.warning("%s: N=%d clipped to %d because %s", label, requested, limit, reason)
    return limit
