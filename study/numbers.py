"""Seeded number-sequence prompts with the structure of Cloud et al. 2025.

Each prompt shows 3-8 seed numbers (100-999), asks for up to 10 more values
of at most 3 digits in one of several formats, and ends with an instruction
to answer with numbers only. Every part is drawn from the phrasings in a
versioned prompts file, so a (template version, seed, index) triple fixes a
prompt exactly.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from study.prompts import NumbersTemplate

SEPARATORS = {
    "comma": ", ",
    "space": " ",
    "semicolon": "; ",
    "newline": "\n",
    "brackets": ", ",
    "parentheses": ", ",
}


@dataclass(frozen=True)
class NumberPrompt:
    id: int
    text: str
    seeds: tuple[int, ...]
    answer_format: str

    def to_row(self) -> dict:
        row = asdict(self)
        row["seeds"] = list(self.seeds)
        return row

    def prefill(self) -> str:
        """Return an assistant prefill that lists the seeds and asks for a continuation.

        Ending on a separator makes a small model continue the list instead
        of copying it.
        """
        separator = SEPARATORS[self.answer_format]
        body = separator.join(str(value) for value in self.seeds) + separator
        opening = {"brackets": "[", "parentheses": "("}.get(self.answer_format, "")
        return opening + body


def generate_prompts(template: NumbersTemplate, count: int, seed: int) -> list[NumberPrompt]:
    """Draw ``count`` prompts; the i-th prompt depends only on (seed, i)."""
    prompts = []
    low_count, high_count = template.seed_count
    low_value, high_value = template.seed_value
    formats = sorted(template.formats)
    for index in range(count):
        rng = random.Random(f"{seed}:{index}")
        seeds = tuple(rng.randint(low_value, high_value) for _ in range(rng.randint(low_count, high_count)))
        answer_format = rng.choice(formats)
        parts = [
            rng.choice(template.openers).format(seeds=", ".join(map(str, seeds))),
            rng.choice(template.requests).format(count=template.answer_count, digits=template.answer_digits),
            template.formats[answer_format],
            rng.choice(template.closers),
        ]
        prompts.append(NumberPrompt(id=index, text=" ".join(parts), seeds=seeds, answer_format=answer_format))
    return prompts
