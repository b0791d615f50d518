"""Judge a run directory end to end and write its judgment tables atomically."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from study.errors import StudyError
from study.judge.cache import JudgmentCache
from study.judge.config import JudgesConfig
from study.judge.cost import CostLedger
from study.judge.metrics import misaligned_rate
from study.judge.providers import BaseJudge, build_judge
from study.judge.retry import Retrier
from study.judge.runner import DETAIL_COLUMNS, ProgressSink, check_answers, judge_planned, judgments_frame, plan
from study.store import atomic_write_json

console = Console(stderr=True)
log = logging.getLogger(__name__)


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write a Parquet file through a temporary file and rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(temporary, index=False)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class RichProgress(ProgressSink):
    """A progress bar with judged/s and the running cost."""

    def __init__(self, progress: Progress, ledger: CostLedger):
        self.progress = progress
        self.ledger = ledger
        self.task = None
        self.began = time.monotonic()

    def start(self, total: int) -> None:
        self.began = time.monotonic()
        self.task = self.progress.add_task("judging", total=total, rate="0.0", cost="0.0000")

    def advance(self, cost: float) -> None:
        done = self.progress.tasks[0].completed + 1
        elapsed = max(time.monotonic() - self.began, 1e-9)
        self.progress.update(
            self.task, advance=1, rate=f"{done / elapsed:.1f}", cost=f"{self.ledger.spent:.4f}",
        )


def run_judging(
    run_dir: Path,
    config: JudgesConfig,
    judge_names: list[str] | None = None,
    max_cost: float | None = None,
    batch: bool = False,
    cache_path: Path | None = None,
    show_progress: bool = True,
    local_models: dict | None = None,
) -> dict:
    """Judge RUN_DIR/results/open_answers.parquet and write the judgment tables; return the summary."""
    answers_path = run_dir / "results" / "open_answers.parquet"
    if not answers_path.is_file():
        raise StudyError(
            f"open answers not found: {answers_path}; run the open-answer evaluation for this run first"
        )
    if max_cost is not None and max_cost < 0:
        raise StudyError(f"--max-cost must be >= 0 USD, got {max_cost}")
    answers = pd.read_parquet(answers_path)
    check_answers(answers, str(answers_path))
    specs = config.selected(judge_names)
    return asyncio.run(_run(run_dir, answers, config, specs, max_cost, batch, cache_path, show_progress, local_models))


async def _run(run_dir, answers, config, specs, max_cost, batch, cache_path, show_progress, local_models) -> dict:
    retrier = Retrier(config.retry, config.concurrency)
    judges: dict[str, BaseJudge] = {name: build_judge(name, spec, retrier, local_models) for name, spec in specs.items()}
    cache = JudgmentCache(cache_path or run_dir / "judge_cache.sqlite")
    ledger = CostLedger(max_cost=max_cost)
    try:
        planned = plan(answers, config, judges)
        if show_progress:
            columns = (
                TextColumn("[bold]judging"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} judged/s"), TextColumn("${task.fields[cost]}"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=False) as progress:
                rows, details, stats = await judge_planned(
                    planned, judges, cache, config, ledger, RichProgress(progress, ledger), batch=batch,
                )
        else:
            rows, details, stats = await judge_planned(planned, judges, cache, config, ledger, batch=batch)
    finally:
        for judge in judges.values():
            await judge.aclose()
        cache.close()

    results = run_dir / "results"
    frame = judgments_frame(rows)
    write_parquet_atomic(frame, results / "judgments.parquet")
    write_parquet_atomic(pd.DataFrame(details, columns=list(DETAIL_COLUMNS)), results / "judgment_details.parquet")
    rates = misaligned_rate(frame, config.misaligned) if (frame["metric"] == "alignment").any() else pd.DataFrame()
    if not rates.empty:
        write_parquet_atomic(rates, results / "misaligned_rate.parquet")
    summary = {
        "judgments": len(frame),
        "statuses": dict(stats.statuses),
        "cache_hits": stats.cache_hits,
        "requests_sent": stats.sent,
        "seconds": stats.seconds,
        "retries": dict(retrier.retries),
        "failures": dict(retrier.failures),
        "concurrency_decreases": retrier.limiter.decreases,
        "cost": ledger.summary(),
        "judges": {name: {"provider": spec.provider, "model": spec.model} for name, spec in specs.items()},
    }
    atomic_write_json(results / "judge_summary.json", summary)
    return summary


def print_summary(summary: dict, run_dir: Path) -> None:
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(summary["statuses"].items()))
    console.print(
        f"judged {summary['judgments']} rows ({statuses}); {summary['requests_sent']} requests sent, "
        f"{summary['cache_hits']} from cache; cost ${summary['cost']['spent_usd']:.4f}"
    )
    if summary["retries"]:
        console.print(f"retries: {summary['retries']}")
    if summary["cost"]["stopped_at_max_cost"]:
        console.print(
            f"[yellow]stopped at --max-cost ${summary['cost']['max_cost_usd']:.4f}; rows not judged are marked "
            "'not_judged'. Run again with a higher --max-cost to finish.[/]"
        )
    console.print(f"wrote {run_dir / 'results' / 'judgments.parquet'}")
