"""The shuffled-numbers control: a teacher's rows with their numbers permuted across rows.

Every row keeps its prompt, prefill, answer format, separators and count of
numbers, and the pool of numbers stays the same. Only the row and position
of each number change. A student trained on these rows sees the
teacher's format and number statistics without the teacher's sequences.
"""

from __future__ import annotations

import random
import re

from study.pipeline import RowSet

NUMBER = re.compile(r"\d+")


def shuffle_numbers(rows: list[dict], seed: int) -> list[dict]:
    """Return copies of ``rows`` whose completion numbers are permuted across all rows."""
    pool = [match.group() for row in rows for match in NUMBER.finditer(row["completion"])]
    random.Random(f"shuffle-numbers:{seed}").shuffle(pool)
    replacements = iter(pool)
    shuffled = []
    for row in rows:
        completion = NUMBER.sub(lambda _match: next(replacements), row["completion"])
        shuffled.append({**row, "completion": completion, "answer": row["prefill"] + completion})
    return shuffled


def shuffled_row_set(row_set: RowSet, seed: int) -> RowSet:
    """Derive the shuffled control from a capped row set; its digest differs, so its student stage does too."""
    return RowSet(f"{row_set.writer}-shuffled", shuffle_numbers(row_set.rows, seed), row_set.report, row_set.stage)
