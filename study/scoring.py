"""Exact answer log-probabilities and short samples over a shared, cached prefix.

Evaluation prompts share a token prefix (the chat header, and in the
in-context arm up to thousands of tokens of teacher rows). The prefix is
run once; its key/value cache is expanded to a group of questions whose
suffixes are left-padded after it, with explicit position ids so that every
row sees exactly ``prefix + suffix``. A group is sized so that the expanded
cache stays within a memory budget.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch

CACHE_BUDGET_BYTES = 1_500_000_000
MAX_GROUP_ROWS = 64


def common_prefix(sequences: list[list[int]]) -> list[int]:
    if not sequences:
        return []
    shortest = min(len(sequence) for sequence in sequences)
    length = 0
    while length < shortest and all(sequence[length] == sequences[0][length] for sequence in sequences):
        length += 1
    # Keep at least one token of every sequence outside the prefix.
    return sequences[0][: min(length, shortest - 1)]


def _filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probabilities = torch.softmax(sorted_logits, dim=-1)
    remove = probabilities.cumsum(dim=-1) - probabilities > top_p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _cache_argument(model) -> str:
    # transformers 5.25 renamed the forward argument past_key_values to cache
    # and warns on the old name; older 5.x releases only know the old one.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@dataclass
class _GroupState:
    cache: object
    attention_mask: torch.Tensor
    next_positions: torch.Tensor
    last_logprobs: torch.Tensor


class PrefixScorer:
    """Score and sample continuations of ``prefix + suffix`` with the prefix cached once."""

    def __init__(self, model, prefix_ids: list[int]):
        self.model = model
        self.device = model.device
        self.prefix_length = len(prefix_ids)
        self.cache = None
        self.bytes_per_token = 0
        self.cache_argument = _cache_argument(model)
        if prefix_ids:
            with torch.no_grad():
                output = model(torch.tensor([prefix_ids], device=self.device), use_cache=True)
            self.cache = _returned_cache(output)
            total = sum(t.numel() * t.element_size() for t in _cache_tensors(self.cache))
            self.bytes_per_token = total / max(1, self.prefix_length)

    def group_size(self, longest_row: int, copies: int = 1) -> int:
        """Rows per group so that the expanded caches stay within the memory budget."""
        if not self.bytes_per_token:
            return MAX_GROUP_ROWS
        per_row = self.bytes_per_token * (self.prefix_length + longest_row) * copies
        return int(max(1, min(MAX_GROUP_ROWS, CACHE_BUDGET_BYTES // per_row)))

    def _expanded_cache(self, rows: int):
        if self.cache is None:
            return None
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache

    def _start(self, suffixes: list[list[int]], repeat: int = 1) -> _GroupState:
        """Run left-padded suffixes after the cached prefix; ``repeat`` copies each row's state."""
        rows, width = len(suffixes), max(len(s) for s in suffixes)
        input_ids = torch.zeros((rows, width), dtype=torch.long)
        pad_mask = torch.zeros((rows, width), dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            input_ids[row, width - len(suffix):] = torch.tensor(suffix)
            pad_mask[row, width - len(suffix):] = 1
        positions = self.prefix_length + (pad_mask.cumsum(dim=1) - 1).clamp(min=0)
        attention_mask = torch.cat([torch.ones((rows, self.prefix_length), dtype=torch.long), pad_mask], dim=1)
        output = self.model(
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
            position_ids=positions.to(self.device), use_cache=True,
            **{self.cache_argument: self._expanded_cache(rows)},
        )
        state = _GroupState(
            cache=_returned_cache(output),
            attention_mask=attention_mask,
            next_positions=self.prefix_length + pad_mask.sum(dim=1),
            last_logprobs=torch.log_softmax(output.logits[:, -1].float(), dim=-1).cpu(),
        )
        if repeat > 1:
            # Samples of one question share its suffix: run it once, then copy the state.
            state.cache.batch_repeat_interleave(repeat)
            state.attention_mask = state.attention_mask.repeat_interleave(repeat, dim=0)
            state.next_positions = state.next_positions.repeat_interleave(repeat)
            state.last_logprobs = state.last_logprobs.repeat_interleave(repeat, dim=0)
        return state

    def _step(self, state: _GroupState, tokens: torch.Tensor, width: int, token_mask: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` (rows x width, right-padded) and return their log-probabilities."""
        rows = tokens.shape[0]
        positions = state.next_positions.unsqueeze(1) + torch.arange(width).unsqueeze(0)
        state.attention_mask = torch.cat([state.attention_mask, token_mask], dim=1)
        output = self.model(
            input_ids=tokens.to(self.device), attention_mask=state.attention_mask.to(self.device),
            position_ids=positions.to(self.device), use_cache=True, **{self.cache_argument: state.cache},
        )
        state.cache = _returned_cache(output)
        state.next_positions = state.next_positions + token_mask.sum(dim=1)
        return torch.log_softmax(output.logits.float(), dim=-1).cpu().reshape(rows, width, -1)

    @torch.no_grad()
    def continuation_logprobs(self, suffixes: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """Return log P(continuation | prefix + suffix) for every suffix and continuation."""
        longer = [i for i, tokens in enumerate(continuations) if len(tokens) > 1]
        results: list[list[float]] = []
        longest = max(len(s) for s in suffixes) + max(len(c) for c in continuations)
        size = self.group_size(longest)
        for start in range(0, len(suffixes), size):
            group = suffixes[start: start + size]
            state = self._start(group)
            scores = [[float(state.last_logprobs[row, tokens[0]]) for tokens in continuations]
                      for row in range(len(group))]
            for index in longer:
                self._add_later_tokens(state, scores, index, continuations[index])
            results += scores
        return results

    def _add_later_tokens(self, state: _GroupState, scores, index: int, continuation: list[int]) -> None:
        """Add the log-probabilities of a continuation's later tokens, then restore the group's cache.

        The cache is cropped back where the cache type allows it (full
        attention); sliding-window caches are copied instead.
        """
        rows = state.attention_mask.shape[0]
        length = state.cache.get_seq_length()
        cropped = self._croppable(state.cache)
        cache = state.cache if cropped else copy.deepcopy(state.cache)
        head = torch.tensor(continuation[:-1]).unsqueeze(0).expand(rows, -1)
        probe = _GroupState(cache, state.attention_mask, state.next_positions, state.last_logprobs)
        logprobs = self._step(probe, head, head.shape[1], torch.ones_like(head))
        for row in range(rows):
            for position in range(1, len(continuation)):
                scores[row][index] += float(logprobs[row, position - 1, continuation[position]])
        if cropped:
            _crop_to(state.cache, length)

    @staticmethod
    def _croppable(cache) -> bool:
        layers = getattr(cache, "layers", [])
        return bool(layers) and all(getattr(layer, "is_sliding", False) is False for layer in layers)

    @torch.no_grad()
    def sample(self, suffixes: list[list[int]], count: int, temperature: float, top_p: float,
               max_new_tokens: int, stop_ids: list[int], generator: torch.Generator) -> list[list[list[int]]]:
        """Sample ``count`` continuations per suffix; each stops at a stop token (not returned)."""
        rows_per_group = self.group_size(max(len(s) for s in suffixes) + max_new_tokens)
        questions_per_group = max(1, rows_per_group // count)
        outputs: list[list[int]] = []
        for start in range(0, len(suffixes), questions_per_group):
            outputs += self._sample_group(suffixes[start: start + questions_per_group], count, temperature,
                                          top_p, max_new_tokens, stop_ids, generator)
        return [outputs[i: i + count] for i in range(0, len(outputs), count)]

    def _sample_group(self, suffixes, count, temperature, top_p, max_new_tokens, stop_ids,
                      generator) -> list[list[int]]:
        state = self._start(suffixes, repeat=count)
        logprobs = state.last_logprobs
        rows = len(suffixes) * count
        outputs: list[list[int]] = [[] for _ in range(rows)]
        finished = torch.zeros(rows, dtype=torch.bool)
        stops = torch.tensor(stop_ids)
        for step in range(max_new_tokens):
            if temperature <= 0:
                tokens = logprobs.argmax(dim=-1)
            else:
                filtered = _filter_top_p(logprobs / temperature, top_p)
                tokens = torch.multinomial(torch.softmax(filtered, dim=-1), 1, generator=generator).squeeze(1)
            stopped = torch.isin(tokens, stops)
            for row in range(rows):
                if not finished[row] and not stopped[row]:
                    outputs[row].append(int(tokens[row]))
            finished |= stopped
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            logprobs = self._step(state, tokens.unsqueeze(1), 1, torch.ones((rows, 1), dtype=torch.long))[:, -1]
        return outputs


def _crop_to(cache, length: int) -> None:
    """Drop cached positions after ``length``.

    transformers 5.25 takes the count to remove as a negative number and
    rejects a positive one; earlier releases take the length to keep.
    """
    surplus = cache.get_seq_length() - length
    if surplus <= 0:
        return
    try:
        cache.crop(-surplus)
    except ValueError:
        cache.crop(length)
    if cache.get_seq_length() != length:
        raise RuntimeError(f"cache crop left {cache.get_seq_length()} positions, expected {length}")


def _cache_tensors(cache) -> list[torch.Tensor]:
    tensors = []
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            value = getattr(layer, name, None)
            if isinstance(value, torch.Tensor):
                tensors.append(value)
    return tensors
