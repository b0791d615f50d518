"""Exact answer log-probabilities and short samples over a shared, cached prefix.

Evaluation prompts share a long token prefix (the chat header, and in the
in-context arm up to thousands of tokens of teacher rows). The prefix is
run once and its key/value cache reused for every question, so a question
costs only its own tokens.
"""

from __future__ import annotations

import copy
import os

import torch


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
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    remove = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


class PrefixScorer:
    """Score and sample continuations of ``prefix + suffix`` with the prefix cached once."""

    def __init__(self, model, prefix_ids: list[int]):
        self.model = model
        self.prefix_length = len(prefix_ids)
        self.cache = None
        if prefix_ids:
            with torch.no_grad():
                output = model(torch.tensor([prefix_ids], device=model.device), use_cache=True)
            self.cache = output.past_key_values

    def _forward(self, token_ids: torch.Tensor, cache, attention_mask: torch.Tensor | None = None):
        output = self.model(input_ids=token_ids, past_key_values=cache, use_cache=True,
                            attention_mask=attention_mask)
        return output.logits.float(), output.past_key_values

    def _after_suffix(self, suffix_ids: list[int]):
        cache = copy.deepcopy(self.cache) if self.cache is not None else None
        logits, cache = self._forward(torch.tensor([suffix_ids], device=self.model.device), cache)
        return torch.log_softmax(logits[0, -1], dim=-1), cache

    @torch.no_grad()
    def next_token_logprobs(self, suffix_ids: list[int]) -> torch.Tensor:
        return self._after_suffix(suffix_ids)[0]

    @torch.no_grad()
    def continuation_logprobs(self, suffix_ids: list[int], continuations: list[list[int]]) -> list[float]:
        """Return log P(continuation | prefix + suffix) for each token list."""
        first, cache = self._after_suffix(suffix_ids)
        scores = [float(first[tokens[0]]) for tokens in continuations]
        longer = [i for i, tokens in enumerate(continuations) if len(tokens) > 1]
        if not longer:
            return scores
        width = max(len(continuations[i]) - 1 for i in longer)
        inputs = torch.zeros((len(longer), width), dtype=torch.long)
        mask = torch.zeros((len(longer), width), dtype=torch.long)
        for row, index in enumerate(longer):
            tokens = continuations[index][:-1]
            inputs[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        cache.batch_repeat_interleave(len(longer))
        past = self.prefix_length + len(suffix_ids)
        full_mask = torch.cat([torch.ones((len(longer), past), dtype=torch.long), mask], dim=1)
        logits, _ = self._forward(inputs.to(self.model.device), cache, full_mask.to(self.model.device))
        logprobs = torch.log_softmax(logits, dim=-1)
        for row, index in enumerate(longer):
            tokens = continuations[index]
            for position in range(1, len(tokens)):
                scores[index] += float(logprobs[row, position - 1, tokens[position]])
        return scores

    @torch.no_grad()
    def sample(self, suffix_ids: list[int], count: int, temperature: float, top_p: float,
               max_new_tokens: int, stop_ids: list[int], generator: torch.Generator) -> list[list[int]]:
        """Sample ``count`` continuations; each stops at a stop token (not returned)."""
        logprobs, cache = self._after_suffix(suffix_ids)
        logits = logprobs.unsqueeze(0).expand(count, -1)
        cache.batch_repeat_interleave(count)
        outputs: list[list[int]] = [[] for _ in range(count)]
        finished = torch.zeros(count, dtype=torch.bool)
        stops = torch.tensor(stop_ids)
        for step in range(max_new_tokens):
            if temperature <= 0:
                tokens = logits.argmax(dim=-1)
            else:
                filtered = _filter_top_p(logits / temperature, top_p)
                probabilities = torch.softmax(filtered, dim=-1).cpu()
                tokens = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
            tokens = tokens.cpu()
            for row in range(count):
                if not finished[row] and not bool((stops == tokens[row]).any()):
                    outputs[row].append(int(tokens[row]))
            finished |= torch.isin(tokens, stops)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            step_logits, cache = self._forward(tokens.unsqueeze(1).to(self.model.device), cache)
            logits = torch.log_softmax(step_logits[:, -1], dim=-1)
        return outputs


def set_threads() -> None:
    """Use the cores given by ``$STUDY_THREADS`` (default: all), for reproducible speed."""
    threads = os.environ.get("STUDY_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
