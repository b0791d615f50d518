"""Batch mode: the OpenAI Batch API and Anthropic Message Batches.

A submitted batch's id and its request map are stored in the judge
database before waiting, so a command that is killed or times out picks
the batch up again on the next run instead of paying for it twice.
"""

from __future__ import annotations

import asyncio
import json
import anthropic
import openai
import logging
import time
from dataclasses import asdict

from study.judge.cache import CacheKey, JudgmentCache
from study.judge.config import BatchSettings, Price
from study.judge.cost import BudgetExceeded, CostLedger, estimate_input_tokens, price_of
from study.judge.providers import (
    AnthropicJudge,
    APIJudge,
    InvalidReply,
    JudgeRequest,
    OpenAIJudge,
    anthropic_judgment,
    openai_judgment,
)
from study.judge.scoring import ERROR, NOT_JUDGED, Judgment, Usage, unscored

log = logging.getLogger(__name__)

API_ERRORS = (openai.OpenAIError, anthropic.AnthropicError, asyncio.TimeoutError)
OPENAI_TERMINAL = {"completed", "failed", "expired", "cancelled"}
# Request limits per batch documented by the providers (OpenAI 50,000; Anthropic 100,000).
MAX_REQUESTS = {"openai": 50_000, "anthropic": 100_000}


class BatchClient:
    """Submit, poll and collect one provider's batches through the retry layer."""

    def __init__(self, judge: APIJudge):
        self.judge = judge

    async def submit(self, requests: list[JudgeRequest]) -> tuple[str, str | None]:
        raise NotImplementedError

    async def poll(self, batch_id: str) -> tuple[bool, str]:
        """Return (finished, provider status)."""
        raise NotImplementedError

    async def collect(self, batch_id: str) -> dict[str, tuple[dict | None, str]]:
        """Return custom_id -> (reply body, or None with an error text)."""
        raise NotImplementedError


class OpenAIBatchClient(BatchClient):
    judge: OpenAIJudge

    async def submit(self, requests: list[JudgeRequest]) -> tuple[str, str | None]:
        lines = [
            json.dumps({
                "custom_id": request.key.digest,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": self.judge.request_body(request.prompt),
            })
            for request in requests
        ]
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        client = self.judge.client
        retrier = self.judge.retrier
        uploaded = await retrier.call(
            lambda: client.files.create(file=("judge-batch.jsonl", payload, "application/jsonl"), purpose="batch"),
            f"{self.judge.name}/batch-upload",
        )
        batch = await retrier.call(
            lambda: client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
            ),
            f"{self.judge.name}/batch-create",
        )
        return batch.id, uploaded.id

    async def poll(self, batch_id: str) -> tuple[bool, str]:
        batch = await self.judge.retrier.call(
            lambda: self.judge.client.batches.retrieve(batch_id), f"{self.judge.name}/batch-poll {batch_id}",
        )
        return batch.status in OPENAI_TERMINAL, batch.status

    async def collect(self, batch_id: str) -> dict[str, tuple[dict | None, str]]:
        client = self.judge.client
        retrier = self.judge.retrier
        batch = await retrier.call(lambda: client.batches.retrieve(batch_id), f"{self.judge.name}/batch-poll {batch_id}")
        results: dict[str, tuple[dict | None, str]] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await retrier.call(lambda: client.files.content(file_id), f"{self.judge.name}/batch-download {file_id}")
            for line in content.text.splitlines():
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    log.error("batch %s: skipped a malformed result line", batch_id)
                    continue
                custom_id = entry.get("custom_id")
                response = entry.get("response") or {}
                status = response.get("status_code")
                if status == 200 and isinstance(response.get("body"), dict):
                    results[custom_id] = (response["body"], response.get("request_id") or "")
                else:
                    error = entry.get("error") or (response.get("body") or {}).get("error")
                    results[custom_id] = (None, f"batch line failed (HTTP {status}): {str(error)[:160]}")
        return results


class AnthropicBatchClient(BatchClient):
    judge: AnthropicJudge

    async def submit(self, requests: list[JudgeRequest]) -> tuple[str, str | None]:
        items = [
            {"custom_id": request.key.digest, "params": self.judge.request_body(request.prompt)}
            for request in requests
        ]
        batch = await self.judge.retrier.call(
            lambda: self.judge.client.messages.batches.create(requests=items),
            f"{self.judge.name}/batch-create",
        )
        return batch.id, None

    async def poll(self, batch_id: str) -> tuple[bool, str]:
        batch = await self.judge.retrier.call(
            lambda: self.judge.client.messages.batches.retrieve(batch_id),
            f"{self.judge.name}/batch-poll {batch_id}",
        )
        return batch.processing_status == "ended", batch.processing_status

    async def collect(self, batch_id: str) -> dict[str, tuple[dict | None, str]]:
        async def fetch() -> list:
            decoder = await self.judge.client.messages.batches.results(batch_id)
            return [entry async for entry in decoder]

        entries = await self.judge.retrier.call(fetch, f"{self.judge.name}/batch-results {batch_id}")
        results: dict[str, tuple[dict | None, str]] = {}
        for entry in entries:
            result = entry.result
            if result.type == "succeeded":
                results[entry.custom_id] = (result.message.model_dump(mode="json"), "")
            else:
                detail = getattr(result, "error", None)
                results[entry.custom_id] = (None, f"batch request {result.type}: {str(detail)[:160]}")
        return results


def batch_client(judge: APIJudge) -> BatchClient:
    if isinstance(judge, OpenAIJudge):
        return OpenAIBatchClient(judge)
    if isinstance(judge, AnthropicJudge):
        return AnthropicBatchClient(judge)
    raise TypeError(f"judge {judge.name} has no batch API")


def _key_from_dict(data: dict) -> CacheKey:
    return CacheKey(**data)


def _score_body(judge: APIJudge, body: dict, special: tuple[str, ...]) -> Judgment:
    if isinstance(judge, OpenAIJudge):
        return openai_judgment(body, judge.spec, special)
    return anthropic_judgment(body, special)


async def run_batches(
    judge: APIJudge,
    requests: dict[str, JudgeRequest],
    cache: JudgmentCache,
    ledger: CostLedger,
    price: Price | None,
    settings: BatchSettings,
    on_result=None,
) -> dict[str, Judgment]:
    """Judge ``requests`` (by cache digest) through the provider's batch API.

    Batches left open by an earlier run are collected first; requests they
    do not cover go into new batches, as far as the budget allows. Returns
    a judgment for every request: a verdict, an error, or ``not_judged``
    for work still pending when ``settings.wait_s`` ran out.
    """
    client = batch_client(judge)
    results: dict[str, Judgment] = {}
    open_batches = cache.open_batches(judge.provider, judge.name, judge.base_url)
    covered = {custom_id for batch in open_batches for custom_id in batch["requests"]}
    if open_batches:
        log.info("%s: resuming %d open batch(es): %s", judge.name, len(open_batches),
                 ", ".join(batch["batch_id"] for batch in open_batches))

    fresh = [request for digest, request in requests.items() if digest not in covered]
    reserved = 0.0
    limit = MAX_REQUESTS[judge.provider]
    for start in range(0, len(fresh), limit):
        chunk = fresh[start:start + limit]
        affordable = []
        for request in chunk:
            usage = Usage(estimate_input_tokens(request.prompt.messages()), judge.spec.max_tokens)
            estimate = price_of(price, usage, batch=True)
            try:
                ledger.reserve(estimate)
            except BudgetExceeded:
                break
            reserved += estimate
            affordable.append(request)
        if not affordable:
            break
        try:
            batch_id, file_id = await client.submit(affordable)
        except API_ERRORS as error:
            # The retry layer logged the failure; these requests are sent again on the next run.
            for request in affordable:
                results[request.key.digest] = unscored(ERROR, f"batch submission failed: {str(error)[:160]}")
            break
        request_map = {
            request.key.digest: {"key": asdict(request.key), "special": list(request.special), "label": request.label}
            for request in affordable
        }
        cache.add_batch(batch_id, judge.provider, judge.name, judge.base_url, request_map, file_id)
        log.info("%s: submitted batch %s with %d requests", judge.name, batch_id, len(affordable))
        open_batches.append({"batch_id": batch_id, "input_file_id": file_id, "requests": request_map})
        if len(affordable) < len(chunk):
            break

    deadline = time.monotonic() + settings.wait_s
    pending = list(open_batches)
    while pending:
        still_open = []
        for batch in pending:
            try:
                finished, status = await client.poll(batch["batch_id"])
                if finished:
                    results.update(await _collect(judge, client, batch, status, cache, ledger, price, on_result))
                    continue
            except API_ERRORS as error:
                log.error("%s: batch %s could not be polled or collected; it stays open for the next run: %s",
                          judge.name, batch["batch_id"], str(error)[:160])
                for custom_id in batch["requests"]:
                    results[custom_id] = unscored(NOT_JUDGED, f"batch {batch['batch_id']} not collected: {str(error)[:120]}")
                continue
            still_open.append(batch)
        pending = still_open
        if not pending or time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(settings.poll_interval_s, max(0.0, deadline - time.monotonic())))

    for batch in pending:
        log.warning("%s: batch %s is still running; run the command again to collect it",
                    judge.name, batch["batch_id"])
        for custom_id in batch["requests"]:
            results.setdefault(custom_id, unscored(NOT_JUDGED, f"batch {batch['batch_id']} still running"))
    # Collected replies have settled their real cost, so the submission estimates go.
    ledger.release(reserved)
    return results


async def _collect(judge, client, batch, status, cache, ledger, price, on_result) -> dict[str, Judgment]:
    batch_id = batch["batch_id"]
    try:
        lines = await client.collect(batch_id)
    except InvalidReply as error:
        lines = {}
        log.error("%s: batch %s results are unreadable: %s", judge.name, batch_id, error)
    results: dict[str, Judgment] = {}
    for custom_id, info in batch["requests"].items():
        body, note = lines.get(custom_id, (None, f"batch {batch_id} ended ({status}) without this request"))
        if body is None:
            log.error("%s: %s: %s", judge.name, info["label"], note)
            results[custom_id] = unscored(ERROR, note)
            continue
        judgment = _score_body(judge, body, tuple(info["special"]))
        judgment = judgment.with_usage(judgment.usage, note or None)
        cost = price_of(price, judgment.usage, batch=True)
        ledger.settle(0.0, cost, judgment.usage)
        cache.record_cost(judge.name, judge.spec.model, judgment.usage, cost, batch=True)
        cache.put(_key_from_dict(info["key"]), judgment)
        results[custom_id] = judgment
        if on_result is not None:
            on_result(cost)
    cache.finish_batch(batch_id, status)
    log.info("%s: collected batch %s (%s, %d result lines)", judge.name, batch_id, status, len(lines))
    return results
