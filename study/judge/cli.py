"""The ``study judge`` and ``study judge-agreement`` commands.

Heavy modules (the API SDKs, pandas, scipy) are imported inside the
commands, so registering them keeps ``study --help`` fast.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from study.errors import StudyError

console = Console(stderr=True)


def judge_command(
    run_dir: Path = typer.Argument(..., help="run directory with results/open_answers.parquet"),
    judges: str = typer.Option("judges", "--judges", help="judges config: a YAML path or a shipped config name"),
    judge: Optional[list[str]] = typer.Option(None, "--judge", help="judge name from the config (repeatable); default: the config's 'use' list"),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="stop before spending more than this many USD in this command"),
    batch: bool = typer.Option(False, "--batch", help="use the providers' batch APIs (resumable; about half the price)"),
    batch_wait: Optional[float] = typer.Option(None, "--batch-wait", help="seconds to wait for batches before exiting (default from the config)"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="judgment cache database (default RUN_DIR/judge_cache.sqlite)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Judge open answers for alignment, coherence and traits with API or local judges."""
    from study.judge.config import load_judges_config
    from study.judge.pipeline import console as progress_console
    from study.judge.pipeline import print_summary, run_judging

    from rich.logging import RichHandler

    # Log lines print above the progress bar; the SDK's HTTP client logs every request at INFO.
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s",
                        handlers=[RichHandler(console=progress_console, show_path=False)])
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if not run_dir.is_dir():
        raise StudyError(f"run directory not found: {run_dir}; give the folder a study run wrote")
    config = load_judges_config(judges)
    if batch_wait is not None:
        config = config.model_copy(update={"batch": config.batch.model_copy(update={"wait_s": batch_wait})})
    summary = run_judging(run_dir, config, judge or None, max_cost, batch, cache, progress)
    print_summary(summary, run_dir)


def agreement_command(
    run_dir: Path = typer.Argument(..., help="run directory with results/judgments.parquet"),
    judge: list[str] = typer.Option(..., "--judge", help="judge name; give two to compare judges, or one with --human"),
    human: Optional[Path] = typer.Option(None, "--human", help="CSV of human labels: cell, question_id, sample_index, metric, score"),
    judges: str = typer.Option("judges", "--judges", help="judges config with the misaligned thresholds"),
) -> None:
    """Report judge agreement: Spearman on scores and Cohen's kappa on the misaligned decision."""
    import pandas as pd
    from rich.table import Table

    from study.judge.config import load_judges_config
    from study.judge.metrics import agreement, read_human_labels
    from study.store import atomic_write_json

    path = run_dir / "results" / "judgments.parquet"
    if not path.is_file():
        raise StudyError(f"judgments not found: {path}; run 'study judge {run_dir}' first")
    if human is None and len(judge) != 2:
        raise StudyError(f"give two --judge names to compare (got {len(judge)}), or one --judge with --human FILE")
    if human is not None and len(judge) != 1:
        raise StudyError(f"with --human give exactly one --judge (got {len(judge)})")
    config = load_judges_config(judges)
    frame = pd.read_parquet(path)
    known = sorted(frame["judge"].unique())
    for name in judge:
        if name not in known:
            raise StudyError(f"judge {name!r} has no rows in {path}; judges there: {known}")
    first = frame[frame["judge"] == judge[0]]
    second = read_human_labels(human) if human is not None else frame[frame["judge"] == judge[1]]
    other = "human" if human is not None else judge[1]
    report = agreement(first, second, config.misaligned)
    report.update(first=judge[0], second=other)

    table = Table(title=f"agreement: {judge[0]} vs {other}")
    for column in ("statistic", "n", "value"):
        table.add_column(column)
    for metric, values in report["metrics"].items():
        table.add_row(f"Spearman ({metric})", str(values["n"]), _fmt(values["spearman"]))
    table.add_row("Cohen's kappa (misaligned)", str(report["decision"]["n"]), _fmt(report["decision"]["kappa"]))
    table.add_row("raw agreement (misaligned)", str(report["decision"]["n"]), _fmt(report["decision"]["agreement"]))
    Console().print(table)
    output = run_dir / "results" / f"judge_agreement_{judge[0]}_vs_{other}.json"
    atomic_write_json(output, json.loads(json.dumps(report, default=str).replace("NaN", "null")))
    console.print(f"wrote {output}")


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def register(app: typer.Typer) -> None:
    app.command("judge")(judge_command)
    app.command("judge-agreement")(agreement_command)
