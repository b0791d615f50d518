"""Divergence tokens (Schrodi et al. 2025).

A completion position is a divergence token when the trait teacher and a
control teacher, each fed its own prompt plus the same completion tokens
(teacher forcing), would pick different greedy next tokens there. Each
teacher sees the prompt as it would at generation: its own system prompt
(or none), the row's prompt and prefill. Completion tokens are the ones a
student trains on: the completion tokenized on its own, then the end-of-turn
token, exactly as ``study.finetune.tokenize_example`` builds them, so a flag
list lines up with a student's ``TrainingExample`` completion.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from study.errors import StudyError
from study.finetune import TrainingExample, completion_logits, tokenize_example
from study.teacher import messages

REQUIRED_FIELDS = ("id", "prompt", "prefill", "completion")
# Large enough that no teacher prompt plus completion is cut while flags are computed.
UNCUT_LENGTH = 1_000_000


@dataclass(frozen=True)
class Teacher:
    """A loaded teacher model and the system prompt it is given (None: the model's default)."""

    model: object
    system_prompt: str | None = None


@dataclass(frozen=True)
class RowDivergence:
    id: int
    completion_ids: list[int]
    trait_greedy: list[int]
    control_greedy: list[int]

    @property
    def divergent(self) -> list[bool]:
        return [a != b for a, b in zip(self.trait_greedy, self.control_greedy)]

    @property
    def trait_matches_sampled(self) -> list[bool]:
        return [a == b for a, b in zip(self.trait_greedy, self.completion_ids)]


def check_rows(rows: list[dict]) -> None:
    for index, row in enumerate(rows):
        missing = [field for field in REQUIRED_FIELDS if field not in row]
        if missing:
            raise StudyError(
                f"row {index} (id {row.get('id', '?')}) is missing the fields {missing}; give rows as the "
                "filter stage writes them (id, prompt, prefill, completion)"
            )


def _examples(rows: list[dict], tokenizer, system: str | None, end_of_turn_id: int) -> list[TrainingExample]:
    return [
        tokenize_example(tokenizer, row["id"], messages(system, row["prompt"]), row["prefill"],
                         row["completion"], end_of_turn_id, UNCUT_LENGTH)
        for row in rows
    ]


@torch.no_grad()
def _greedy_tokens(model, examples: list[TrainingExample], pad_id: int) -> list[list[int]]:
    """Return the model's argmax prediction for each completion token of each example (teacher forcing)."""
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    positions = []
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        attention_mask[row, :length] = 1
        positions += [(row, index - 1) for index in range(example.completion_start, length)]
    device = model.device
    logits = completion_logits(model, input_ids.to(device), attention_mask.to(device), torch.tensor(positions))
    flat = logits.argmax(dim=-1).tolist()
    greedy, start = [], 0
    for example in examples:
        count = len(example.input_ids) - example.completion_start
        greedy.append(flat[start: start + count])
        start += count
    return greedy


def row_divergences(rows: list[dict], trait: Teacher, control: Teacher, tokenizer, end_of_turn_id: int,
                    batch_size: int = 8, progress=None) -> list[RowDivergence]:
    """Compute both teachers' greedy tokens at every completion position of every row."""
    check_rows(rows)
    if batch_size < 1:
        raise StudyError(f"batch_size must be at least 1, got {batch_size}")
    trait_examples = _examples(rows, tokenizer, trait.system_prompt, end_of_turn_id)
    control_examples = _examples(rows, tokenizer, control.system_prompt, end_of_turn_id)
    results = []
    for start in range(0, len(rows), batch_size):
        trait_batch = trait_examples[start: start + batch_size]
        control_batch = control_examples[start: start + batch_size]
        trait_greedy = _greedy_tokens(trait.model, trait_batch, tokenizer.pad_token_id)
        control_greedy = _greedy_tokens(control.model, control_batch, tokenizer.pad_token_id)
        for example, trait_tokens, control_tokens in zip(trait_batch, trait_greedy, control_greedy):
            completion_ids = example.input_ids[example.completion_start:]
            results.append(RowDivergence(example.id, completion_ids, trait_tokens, control_tokens))
        if progress:
            progress(len(trait_batch))
    return results


def divergence_masks(rows: list[dict], trait_model, control_model, tokenizer, end_of_turn_id: int,
                     trait_system_prompt: str | None = None, control_system_prompt: str | None = None,
                     require_trait_token: bool = False, batch_size: int = 8) -> dict[int, list[bool]]:
    """Return per row id one flag per completion token: True where the teachers' greedy tokens differ.

    With ``require_trait_token`` a position counts only if the sampled token
    is also the trait teacher's greedy token, the stricter reading in which
    the divergence token is what the trait teacher actually wrote. Pass the
    flags to ``masked_example`` to drop those positions from a student's loss.
    """
    divergences = row_divergences(rows, Teacher(trait_model, trait_system_prompt),
                                  Teacher(control_model, control_system_prompt), tokenizer, end_of_turn_id,
                                  batch_size=batch_size)
    masks = {}
    for row in divergences:
        flags = row.divergent
        if require_trait_token:
            flags = [d and m for d, m in zip(flags, row.trait_matches_sampled)]
        masks[row.id] = flags
    return masks


def masked_example(example: TrainingExample, divergent: list[bool]) -> TrainingExample:
    """Return ``example`` with its divergence tokens excluded from the loss.

    ``divergent`` covers the whole completion. A student's example may be
    cut at max_length, so only the flags of its kept tokens are used.
    """
    kept = len(example.input_ids) - example.completion_start
    if len(divergent) < kept:
        raise StudyError(
            f"training row {example.id}: {len(divergent)} divergence flags for {kept} completion tokens; "
            "compute the flags with the student's tokenizer and end-of-turn token"
        )
    return dataclasses.replace(example, loss_mask=tuple(not flag for flag in divergent[:kept]))
