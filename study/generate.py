"""Batched text generation with left padding and an optional assistant prefill."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

from study.configbase import StrictModel
from study.errors import StudyError


class Decoding(StrictModel):
    """Decoding settings of a teacher or an evaluation."""

    strategy: Literal["sample", "greedy"] = "sample"
    """Sample from the distribution, or take the most likely token (greedy)."""
    temperature: float = 1.0
    """Sampling temperature; ignored for greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 keeps the whole distribution."""
    max_new_tokens: int = 60
    """Maximum tokens generated per completion."""
    batch_size: int = 32
    """Completions generated together."""
    prefill: Literal["none", "seeds"] = "none"
    """Assistant prefill: 'seeds' starts the answer with the prompt's seed numbers and a separator."""
    backend: Literal["transformers", "vllm"] = "transformers"
    """Generation engine: transformers (any machine) or vLLM (a CUDA GPU and the vllm extra)."""

    def stage_key(self) -> dict:
        """Return the settings that decide the rows; the default backend is left out so older stage hashes hold."""
        return self.model_dump(exclude={"backend"} if self.backend == "transformers" else set())


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict]
    prefill: str = ""


@dataclass(frozen=True)
class Generation:
    text: str
    finished: bool
    new_tokens: int


def render_prompt(tokenizer, messages: list[dict], prefill: str = "") -> str:
    """Render a chat up to the assistant turn, followed by the prefill."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + prefill


def stop_token_ids(tokenizer, end_of_turn: str) -> list[int]:
    ids = {tokenizer.convert_tokens_to_ids(end_of_turn), tokenizer.eos_token_id}
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


@torch.no_grad()
def generate_batch(model, tokenizer, requests: list[GenerationRequest], decoding: Decoding,
                   stop_ids: list[int], seed: int) -> list[Generation]:
    """Generate one completion per request; the result depends only on (requests, seed)."""
    texts = [render_prompt(tokenizer, request.messages, request.prefill) for request in requests]
    tokenizer.padding_side = "left"
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    generator_seed = torch.Generator().manual_seed(seed)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
    sampling = decoding.strategy == "sample"
    output = model.generate(
        **encoded,
        do_sample=sampling,
        temperature=decoding.temperature if sampling else None,
        top_p=decoding.top_p if sampling else None,
        top_k=None,
        max_new_tokens=decoding.max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[:, encoded["input_ids"].shape[1]:]
    results = []
    for row in new_tokens.tolist():
        finished = False
        kept = []
        for token in row:
            if token in stop_ids:
                finished = True
                break
            kept.append(token)
        text = tokenizer.decode(kept, skip_special_tokens=True)
        results.append(Generation(text=text, finished=finished, new_tokens=len(kept)))
    return results


def generate_all(model, tokenizer, requests: list[GenerationRequest], decoding: Decoding,
                 stop_ids: list[int], seed: int, done: set[int] | None = None,
                 on_batch: Callable[[list[int], list[Generation]], None] | None = None) -> None:
    """Generate in fixed batches, skipping batches whose indices are all in ``done``.

    Batch ``b`` always holds the same requests and is seeded with (seed, b),
    so a resumed run writes the same rows an uninterrupted run would.
    """
    done = done or set()
    size = decoding.batch_size
    for start in range(0, len(requests), size):
        indices = list(range(start, min(start + size, len(requests))))
        if all(index in done for index in indices):
            continue
        batch_seed = seed * 1_000_003 + start // size
        results = generate_batch(model, tokenizer, [requests[i] for i in indices], decoding, stop_ids, batch_seed)
        if on_batch:
            on_batch(indices, results)


def check_vllm_backend() -> None:
    """Raise a StudyError naming the fix unless vLLM is installed and a CUDA GPU is visible."""
    if importlib.util.find_spec("vllm") is None:
        raise StudyError(
            "decoding.backend is vllm, but the vllm package is not installed; install it on a machine with a "
            "CUDA GPU with: pip install 'subliminal-study[vllm]', or set decoding.backend: transformers"
        )
    if not torch.cuda.is_available():
        raise StudyError(
            "decoding.backend is vllm, which needs a CUDA GPU, and torch sees none on this machine; "
            "run on a GPU machine or set decoding.backend: transformers"
        )


def generate_all_vllm(model_path: str | Path, tokenizer, requests: list[GenerationRequest], decoding: Decoding,
                      stop_ids: list[int], seed: int, done: set[int] | None = None,
                      on_batch: Callable[[list[int], list[Generation]], None] | None = None,
                      dtype: str = "auto", adapter: Path | None = None) -> None:
    """Generate with vLLM in the same fixed, seeded batches as ``generate_all``, so a killed stage resumes.

    Rows match the transformers backend in format but not token for token,
    because the two engines sample differently. So the backend is part of
    the generate stage's hash.
    """
    check_vllm_backend()
    from vllm import LLM, SamplingParams

    lora = None
    engine_options = {"model": str(model_path), "dtype": dtype, "seed": seed}
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        rank = json.loads((Path(adapter) / "adapter_config.json").read_text())["r"]
        engine_options.update({"enable_lora": True, "max_lora_rank": max(8, rank)})
        lora = LoRARequest("teacher", 1, str(adapter))
    engine = LLM(**engine_options)
    done = done or set()
    size = decoding.batch_size
    sampling = decoding.strategy == "sample"
    for start in range(0, len(requests), size):
        indices = list(range(start, min(start + size, len(requests))))
        if all(index in done for index in indices):
            continue
        batch_seed = seed * 1_000_003 + start // size
        params = SamplingParams(
            n=1, temperature=decoding.temperature if sampling else 0.0, top_p=decoding.top_p if sampling else 1.0,
            max_tokens=decoding.max_new_tokens, stop_token_ids=stop_ids, seed=batch_seed,
        )
        prompts = [render_prompt(tokenizer, requests[i].messages, requests[i].prefill) for i in indices]
        outputs = engine.generate(prompts, params, lora_request=lora, use_tqdm=False)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            kept = [token for token in completion.token_ids if token not in stop_ids]
            results.append(Generation(text=tokenizer.decode(kept, skip_special_tokens=True),
                                      finished=completion.finish_reason == "stop", new_tokens=len(kept)))
        if on_batch:
            on_batch(indices, results)
