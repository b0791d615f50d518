"""Teacher generation speed in float32 and bf16, and how often greedy tokens agree.

Runs the default model on the same number prompts in both dtypes, side by
side in one process, and prints tokens per second, their ratio and the
share of positions where bf16 picks the same greedy token as float32.

    python benchmarks/generation_dtype.py [--prompts 64] [--tokens 44]
"""

from __future__ import annotations

import argparse
import time

import study  # noqa: F401  (sets OpenMP's wait policy before torch loads)
import torch

from study import prompts
from study.generate import Decoding, GenerationRequest, generate_batch, stop_token_ids
from study.models import DEFAULT_MODEL, bf16_supported, end_of_turn_token, load_model, load_tokenizer
from study.numbers import generate_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=44)
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.model)
    stop_ids = stop_token_ids(tokenizer, end_of_turn_token(args.model, tokenizer))
    number_prompts = generate_prompts(prompts.numbers_template(), args.prompts, seed=0)
    requests = [GenerationRequest([{"role": "user", "content": p.text}], p.prefill()) for p in number_prompts]
    decoding = Decoding(strategy="greedy", max_new_tokens=args.tokens, batch_size=args.prompts)

    outputs, rates = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = load_model(args.model, dtype=dtype)
        started = time.perf_counter()
        results = generate_batch(model, tokenizer, requests, decoding, stop_ids, seed=0)
        seconds = time.perf_counter() - started
        # Every row runs until the longest finishes, so count the batch's steps.
        steps = max(result.new_tokens for result in results) + 1
        rates[dtype] = len(requests) * steps / seconds
        outputs[dtype] = [tokenizer.encode(r.text, add_special_tokens=False) for r in results]
        print(f"{dtype:9s} {seconds:6.1f} s  {rates[dtype]:6.1f} tokens/s (batch {len(requests)}, {steps} steps)")
        del model

    same = total = 0
    for first, second in zip(outputs["float32"], outputs["bfloat16"]):
        for a, b in zip(first, second):
            total += 1
            same += a == b
            if a != b:
                break  # after the first difference the contexts differ
    print(f"bf16 / float32 speed ratio: {rates['bfloat16'] / rates['float32']:.2f} "
          f"(native bf16 on this CPU: {bf16_supported()}, torch threads: {torch.get_num_threads()})")
    print(f"greedy tokens equal up to the first difference: {same} of {total} compared ({same / max(1, total):.1%})")


if __name__ == "__main__":
    main()
