"""Judge a table of open answers: plan requests, use the cache, send the rest.

Every (answer, judge, metric) pair gets exactly one output row. Cached
verdicts are reused without a request; identical prompts are sent once; a
request the budget cannot cover is reported as ``not_judged``, never
dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from study.errors import StudyError
from study.judge.batch import run_batches
from study.judge.cache import CacheKey, JudgmentCache
from study.judge.config import JudgesConfig
from study.judge.cost import BudgetExceeded, CostLedger, estimate_input_tokens, price_of
from study.judge.providers import APIJudge, BaseJudge, JudgeRequest
from study.judge.scoring import NOT_JUDGED, Judgment, Usage, combine_samples, unscored
from study.judge.templates import JudgeTemplate, load_template, render
from study.schema import CONDITION_COLUMNS, JUDGMENT_COLUMNS, OPEN_ANSWER_COLUMNS

log = logging.getLogger(__name__)

DETAIL_COLUMNS = (
    "run_id", "cell", "question_id", "sample_index", "judge", "metric",
    "samples", "top_logprobs", "reply_text", "request_id", "input_tokens", "output_tokens",
)


@dataclass
class PlannedJudgment:
    """One output row: an answer, a judge and a metric, with one request per sample."""

    row: dict
    judge: str
    metric: str
    template: JudgeTemplate
    requests: list[JudgeRequest]


@dataclass
class RunStats:
    planned: int = 0
    cache_hits: int = 0
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0


class ProgressSink:
    """A receiver of one call per finished request; the CLI shows it as a rich progress bar."""

    def start(self, total: int) -> None:
        return None

    def advance(self, cost: float) -> None:
        return None


def check_answers(answers: pd.DataFrame, source: str) -> None:
    missing = [column for column in OPEN_ANSWER_COLUMNS if column not in answers.columns]
    if missing:
        raise StudyError(
            f"{source} lacks columns {missing}; it must have the open-answer columns "
            "of study.schema.OPEN_ANSWER_COLUMNS (written by the open-answer evaluation)"
        )


def plan(answers: pd.DataFrame, config: JudgesConfig, judges: dict[str, BaseJudge]) -> list[PlannedJudgment]:
    """List the judgments to make, rendering each prompt once per template."""
    templates = {metric: load_template(name) for metric, name in config.templates.items()}
    planned = []
    for row in answers.to_dict("records"):
        target = str(row.get("target") or "")
        requested_metrics = config.metrics_for(str(row["eval_set"]), target)
        for judge_name, judge in judges.items():
            for metric in judge.spec.metrics:
                if metric not in requested_metrics or (metric == "trait" and not target):
                    continue
                template = templates.get(metric)
                if template is None:
                    raise StudyError(f"no judge template for metric {metric!r}; add it under 'templates' in the judges config")
                prompt = render(template, str(row["question"]), str(row["answer"]), trait=target)
                requests = []
                for sample in range(judge.spec.samples):
                    key = CacheKey(
                        provider=judge.provider, model=judge.spec.model, base_url=judge.base_url,
                        template_id=template.id, template_version=template.version,
                        prompt_hash=prompt.prompt_hash, sampling=judge.spec.sampling(),
                        scoring=judge.spec.scoring, sample_index=sample,
                    )
                    label = (f"{judge_name}/{metric}/{row['question_id']}/{str(row['cell'])[:8]}"
                             f"/s{row['sample_index']}#{sample} [{key.digest[:8]}]")
                    requests.append(JudgeRequest(key=key, prompt=prompt, special=tuple(template.special), label=label))
                planned.append(PlannedJudgment(row=row, judge=judge_name, metric=metric, template=template, requests=requests))
    return planned


async def _send_all(
    judge: BaseJudge, requests: dict[str, JudgeRequest], cache: JudgmentCache, ledger: CostLedger,
    config: JudgesConfig, progress: ProgressSink, stats: RunStats,
) -> dict[str, Judgment]:
    """Send requests through a pool of workers, settling costs and caching verdicts."""
    price = config.prices.get(judge.spec.model)
    if isinstance(judge, APIJudge) and price is None:
        log.warning("no price for model %s in the judges config; its cost counts as 0", judge.spec.model)
    queue: asyncio.Queue[tuple[str, JudgeRequest]] = asyncio.Queue()
    for item in requests.items():
        queue.put_nowait(item)
    results: dict[str, Judgment] = {}

    async def worker() -> None:
        while True:
            try:
                digest, request = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            usage_estimate = Usage(estimate_input_tokens(request.prompt.messages()), judge.spec.max_tokens)
            estimate = price_of(price, usage_estimate)
            try:
                ledger.reserve(estimate)
            except BudgetExceeded:
                results[digest] = unscored(NOT_JUDGED, "max cost reached before this request")
                progress.advance(0.0)
                continue
            judgment = await judge.judge(request)
            cost = price_of(price, judgment.usage)
            if judgment.usage.input_tokens or judgment.usage.output_tokens:
                ledger.settle(estimate, cost, judgment.usage)
                cache.record_cost(judge.name, judge.spec.model, judgment.usage, cost, batch=False)
            else:
                ledger.release(estimate)
            stats.sent += 1
            cache.put(request.key, judgment)
            results[digest] = judgment
            progress.advance(cost)

    workers = config.concurrency.max if isinstance(judge, APIJudge) else 1
    await asyncio.gather(*(worker() for _ in range(min(workers, max(1, len(requests))))))
    return results


async def judge_planned(
    planned: list[PlannedJudgment], judges: dict[str, BaseJudge], cache: JudgmentCache,
    config: JudgesConfig, ledger: CostLedger, progress: ProgressSink | None = None, batch: bool = False,
) -> tuple[list[dict], list[dict], RunStats]:
    """Judge every planned row; return judgment rows, detail rows and run statistics."""
    progress = progress or ProgressSink()
    stats = RunStats(planned=len(planned))
    began = time.monotonic()

    verdicts: dict[str, Judgment] = {}
    missing: dict[str, dict[str, JudgeRequest]] = {name: {} for name in judges}
    for item in planned:
        for request in item.requests:
            digest = request.key.digest
            if digest in verdicts or digest in missing[item.judge]:
                continue
            cached = cache.get(request.key)
            if cached is not None:
                verdicts[digest] = cached
                stats.cache_hits += 1
            else:
                missing[item.judge][digest] = request

    progress.start(sum(len(requests) for requests in missing.values()))
    for name, requests in missing.items():
        if not requests:
            continue
        judge = judges[name]
        if batch and getattr(judge, "supports_batch", False):
            fresh = await run_batches(
                judge, requests, cache, ledger, config.prices.get(judge.spec.model), config.batch,
                on_result=progress.advance,
            )
            stats.sent += sum(1 for judgment in fresh.values() if judgment.reason_code != NOT_JUDGED)
        else:
            if batch:
                log.warning("judge %s (%s) has no batch API; sending its requests one by one", name, judge.provider)
            fresh = await _send_all(judge, requests, cache, ledger, config, progress, stats)
        verdicts.update(fresh)

    rows, details = [], []
    for item in planned:
        samples = [verdicts.get(request.key.digest) or unscored(NOT_JUDGED, "no verdict") for request in item.requests]
        judgment = samples[0] if len(samples) == 1 else combine_samples(samples)
        stats.statuses[judgment.status] += 1
        rows.append(_judgment_row(item, judgment))
        details.append(_detail_row(item, judgment))
    stats.seconds = time.monotonic() - began
    return rows, details, stats


def _judgment_row(item: PlannedJudgment, judgment: Judgment) -> dict:
    row = {column: item.row[column] for column in CONDITION_COLUMNS}
    row.update(
        question_id=item.row["question_id"],
        sample_index=item.row["sample_index"],
        judge=item.judge,
        metric=item.metric,
        status=judgment.status,
        score=judgment.score,
        reason=judgment.reason,
        numeric_mass=judgment.numeric_mass,
        template_id=item.template.id,
        template_version=item.template.version,
    )
    return {column: row[column] for column in JUDGMENT_COLUMNS}


def _detail_row(item: PlannedJudgment, judgment: Judgment) -> dict:
    return {
        "run_id": item.row["run_id"],
        "cell": item.row["cell"],
        "question_id": item.row["question_id"],
        "sample_index": item.row["sample_index"],
        "judge": item.judge,
        "metric": item.metric,
        "samples": judgment.samples,
        "top_logprobs": json.dumps(judgment.top_logprobs) if judgment.top_logprobs is not None else None,
        "reply_text": judgment.text,
        "request_id": judgment.request_id,
        "input_tokens": judgment.usage.input_tokens,
        "output_tokens": judgment.usage.output_tokens,
    }


def judgments_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(JUDGMENT_COLUMNS))
    frame["score"] = frame["score"].astype("float64")
    frame["numeric_mass"] = frame["numeric_mass"].astype("float64")
    return frame
