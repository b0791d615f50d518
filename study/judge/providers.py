"""Judge providers: OpenAI (logprobs or text), Anthropic (text) and a local model.

Each provider turns a rendered prompt into a ``Judgment``. Replies are read
as raw JSON and checked field by field, so a malformed or non-JSON reply
becomes an unscored error instead of an exception or a wrong number.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import anthropic
import openai

from study.errors import StudyError
from study.judge.cache import CacheKey
from study.judge.config import API_KEY_ENV, BASE_URL_ENV, JudgeSpec
from study.judge.retry import Retrier
from study.judge.scoring import (
    ERROR,
    PROVIDER_REFUSAL,
    Judgment,
    Usage,
    score_from_logprobs,
    score_from_text,
    unscored,
)
from study.judge.templates import RenderedPrompt

log = logging.getLogger(__name__)

DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}


@dataclass(frozen=True)
class JudgeRequest:
    """One request to a judge: the prompt, its cache key and a label for logs."""

    key: CacheKey
    prompt: RenderedPrompt
    special: tuple[str, ...]
    label: str


class InvalidReply(Exception):
    """A reply that arrived but is not the JSON object the wire format promises."""


def require_api_key(provider: str) -> str:
    variable = API_KEY_ENV[provider]
    value = os.environ.get(variable, "").strip()
    if not value:
        raise StudyError(
            f"{variable} is not set; export {variable}=<your key> to use the {provider} judge "
            "(keys are read only from the environment)"
        )
    return value


def resolve_base_url(spec: JudgeSpec) -> str:
    """Return the base URL: the config's, else the SDK's environment variable, else the SDK default."""
    if spec.provider == "local":
        return "local"
    url = spec.base_url or os.environ.get(BASE_URL_ENV[spec.provider]) or DEFAULT_BASE_URLS[spec.provider]
    return url.rstrip("/")


def _decode_object(text: str | bytes) -> dict:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidReply(f"reply is not JSON ({error.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise InvalidReply(f"reply is JSON {type(data).__name__}, not an object")
    return data


def _int_field(mapping: Any, name: str) -> int:
    value = mapping.get(name) if isinstance(mapping, dict) else None
    return value if isinstance(value, int) else 0


def openai_judgment(body: dict, spec: JudgeSpec, special: tuple[str, ...]) -> Judgment:
    """Score a chat completion (as a JSON object) with the judge's scoring method."""
    usage = Usage(_int_field(body.get("usage"), "prompt_tokens"), _int_field(body.get("usage"), "completion_tokens"))
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return unscored(ERROR, "reply has no choices", usage=usage)
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    if message.get("refusal") or choice.get("finish_reason") == "content_filter":
        return unscored(PROVIDER_REFUSAL, str(message.get("refusal") or "content filter")[:200], usage=usage)

    if spec.scoring == "text":
        content = message.get("content")
        if not isinstance(content, str):
            return unscored(ERROR, "reply has no text content", usage=usage)
        return _with_usage(score_from_text(content, special), usage)

    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content:
        return unscored(ERROR, "reply has no logprobs (logprobs null or empty)", usage=usage)
    first = content[0] if isinstance(content[0], dict) else {}
    top = first.get("top_logprobs")
    if not isinstance(top, list) or not top:
        return unscored(ERROR, "reply has no top logprobs for the first token", usage=usage)
    pairs = []
    for entry in top:
        token = entry.get("token") if isinstance(entry, dict) else None
        logprob = entry.get("logprob") if isinstance(entry, dict) else None
        if not isinstance(token, str) or not isinstance(logprob, (int, float)) or math.isnan(logprob):
            return unscored(ERROR, f"malformed top logprob entry {str(entry)[:80]}", usage=usage)
        pairs.append((token, float(logprob)))
    judgment = score_from_logprobs(pairs, spec.min_numeric_mass, special)
    return _with_usage(judgment, usage)


def anthropic_judgment(body: dict, special: tuple[str, ...]) -> Judgment:
    """Score an Anthropic message (as a JSON object) by parsing its text."""
    usage_field = body.get("usage")
    usage = Usage(_int_field(usage_field, "input_tokens"), _int_field(usage_field, "output_tokens"))
    if body.get("type") == "error":
        return unscored(ERROR, str(body.get("error"))[:200], usage=usage)
    if body.get("stop_reason") == "refusal":
        return unscored(PROVIDER_REFUSAL, "stop_reason refusal", usage=usage)
    blocks = body.get("content")
    if not isinstance(blocks, list):
        return unscored(ERROR, "reply has no content blocks", usage=usage)
    text = "".join(
        block.get("text", "") for block in blocks
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
    )
    return _with_usage(score_from_text(text, special), usage)


def _with_usage(judgment: Judgment, usage: Usage) -> Judgment:
    return judgment.with_usage(usage, judgment.request_id)


class BaseJudge:
    """A configured judge. ``judge`` returns API failures as unscored errors instead of raising them."""

    provider = ""
    supports_batch = False

    def __init__(self, name: str, spec: JudgeSpec):
        self.name = name
        self.spec = spec
        self.base_url = resolve_base_url(spec)

    async def judge(self, request: JudgeRequest) -> Judgment:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class APIJudge(BaseJudge):
    """Shared error handling for the hosted judges."""

    def __init__(self, name: str, spec: JudgeSpec, retrier: Retrier):
        super().__init__(name, spec)
        self.retrier = retrier

    async def _send(self, request: JudgeRequest) -> tuple[dict, str | None]:
        raise NotImplementedError

    def _score(self, body: dict, request: JudgeRequest) -> Judgment:
        raise NotImplementedError

    async def judge(self, request: JudgeRequest) -> Judgment:
        try:
            body, request_id = await self._send(request)
        except InvalidReply as error:
            log.error("%s: invalid reply: %s", request.label, error)
            return unscored(ERROR, f"invalid reply: {error}")
        except (openai.OpenAIError, anthropic.AnthropicError, asyncio.TimeoutError) as error:
            # The retry layer has logged the failure with its request id.
            status = getattr(error, "status_code", None)
            kind = f"HTTP {status}" if status else type(error).__name__
            return unscored(ERROR, f"{kind}: {str(error)[:160]}", request_id=getattr(error, "request_id", None))
        judgment = self._score(body, request)
        if judgment.reason_code == ERROR:
            log.error("%s: unusable reply (request id %s): %s", request.label, request_id or "none", judgment.detail)
        return judgment.with_usage(judgment.usage, request_id)


class OpenAIJudge(APIJudge):
    provider = "openai"
    supports_batch = True

    def __init__(self, name: str, spec: JudgeSpec, retrier: Retrier):
        super().__init__(name, spec, retrier)
        self.client = openai.AsyncOpenAI(
            api_key=require_api_key("openai"),
            base_url=self.base_url,
            max_retries=0,
            timeout=spec.timeout_s,
        )

    def request_body(self, prompt: RenderedPrompt) -> dict:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": prompt.messages(),
            "max_tokens": self.spec.max_tokens,
            "temperature": self.spec.temperature,
        }
        if self.spec.scoring == "logprobs":
            body["logprobs"] = True
            body["top_logprobs"] = self.spec.top_logprobs
        return body

    async def _send(self, request: JudgeRequest) -> tuple[dict, str | None]:
        body = self.request_body(request.prompt)

        async def send_once():
            return await self.client.chat.completions.with_raw_response.create(**body)

        raw = await self.retrier.call(send_once, request.label)
        return _decode_object(raw.text), raw.request_id

    def _score(self, body: dict, request: JudgeRequest) -> Judgment:
        return openai_judgment(body, self.spec, request.special)

    async def aclose(self) -> None:
        await self.client.close()


class AnthropicJudge(APIJudge):
    provider = "anthropic"
    supports_batch = True

    def __init__(self, name: str, spec: JudgeSpec, retrier: Retrier):
        super().__init__(name, spec, retrier)
        self.client = anthropic.AsyncAnthropic(
            api_key=require_api_key("anthropic"),
            base_url=self.base_url,
            max_retries=0,
            timeout=spec.timeout_s,
        )

    def request_body(self, prompt: RenderedPrompt) -> dict:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "max_tokens": self.spec.max_tokens,
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
        }
        if self.spec.temperature is not None:
            body["temperature"] = self.spec.temperature
        return body

    async def _send(self, request: JudgeRequest) -> tuple[dict, str | None]:
        body = self.request_body(request.prompt)
        # anthropic 2.17's create() has no temperature argument, so a configured one goes into the body.
        extra = {"temperature": body.pop("temperature")} if "temperature" in body else None

        async def send_once():
            return await self.client.messages.with_raw_response.create(**body, extra_body=extra)

        raw = await self.retrier.call(send_once, request.label)
        return _decode_object(await raw.read()), raw.request_id

    def _score(self, body: dict, request: JudgeRequest) -> Judgment:
        return anthropic_judgment(body, request.special)

    async def aclose(self) -> None:
        await self.client.close()


class LocalJudge(BaseJudge):
    """A Hugging Face causal LM as judge, for offline runs (cost 0).

    Logprob scoring reads the next-token distribution after the chat prompt;
    text scoring decodes greedily. Requests run one at a time in a worker
    thread, so the event loop stays free for progress updates.
    """

    provider = "local"

    def __init__(self, name: str, spec: JudgeSpec, model=None, tokenizer=None):
        super().__init__(name, spec)
        if model is None or tokenizer is None:
            model, tokenizer = load_local_model(spec.model)
        self.model = model
        self.tokenizer = tokenizer
        self._lock = asyncio.Lock()

    async def judge(self, request: JudgeRequest) -> Judgment:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._judge_sync, request)
            except (RuntimeError, ValueError) as error:
                log.error("%s: local judge failed: %s", request.label, error)
                return unscored(ERROR, f"local judge failed: {str(error)[:160]}")

    def _judge_sync(self, request: JudgeRequest) -> Judgment:
        import torch

        prompt_ids = self.tokenizer.apply_chat_template(
            request.prompt.messages(), add_generation_prompt=True, return_tensors="pt", return_dict=True,
        )["input_ids"].to(self.model.device)
        input_tokens = int(prompt_ids.shape[-1])
        with torch.no_grad():
            if self.spec.scoring == "logprobs":
                logits = self.model(input_ids=prompt_ids).logits[0, -1].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                values, ids = torch.topk(logprobs, k=min(self.spec.top_logprobs, logprobs.shape[-1]))
                pairs = [(self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids)]
                judgment = score_from_logprobs(pairs, self.spec.min_numeric_mass, request.special)
                return judgment.with_usage(Usage(input_tokens, 1), None)
            output = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=self.spec.max_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = output[0, input_tokens:]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return score_from_text(text, request.special).with_usage(Usage(input_tokens, int(new_tokens.shape[-1])), None)


def load_local_model(spec: str):
    """Load ``(model, tokenizer)`` for a local judge with study.models (short name, hub id or folder)."""
    from study.models import load_model, load_tokenizer

    return load_model(spec), load_tokenizer(spec)


def build_judge(name: str, spec: JudgeSpec, retrier: Retrier, local_models: dict | None = None) -> BaseJudge:
    """Build the judge for a config entry; ``local_models`` maps a name to a loaded (model, tokenizer)."""
    if spec.provider == "openai":
        return OpenAIJudge(name, spec, retrier)
    if spec.provider == "anthropic":
        return AnthropicJudge(name, spec, retrier)
    pair = (local_models or {}).get(name) or (local_models or {}).get(spec.model)
    if pair is not None:
        return LocalJudge(name, spec, model=pair[0], tokenizer=pair[1])
    return LocalJudge(name, spec)
