"""The ``study aux-logits`` command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from study.errors import StudyError

DEFAULT_CONFIG = "aux-logits"


def _load_config(config_path: str, seeds: int | None, mnist_dir: Path | None):
    from study.auxlogits.config import AuxLogitsConfig
    from study.configbase import load_yaml_model, validate_mapping
    from study.resources import resolve_config

    config = load_yaml_model(AuxLogitsConfig, resolve_config(config_path))
    overrides = config.model_dump()
    if seeds is not None:
        if seeds < 1:
            raise StudyError(f"--seeds must be at least 1, got {seeds}")
        overrides["seeds"] = seeds
    if mnist_dir is not None:
        overrides["dataset"] = {**overrides["dataset"], "name": "mnist-idx", "path": mnist_dir}
    return validate_mapping(AuxLogitsConfig, overrides, f"{config_path} with command-line overrides")


def _print_summary(console: Console, summary, wall_seconds: float, paths: dict) -> None:
    table = Table(title="Test accuracy over seeds (95% t-interval)")
    table.add_column("condition")
    table.add_column("seeds", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("95% interval", justify="right")
    for row in summary.itertuples():
        interval = "n/a (1 seed)" if row.seeds < 2 else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        table.add_row(row.condition, str(row.seeds), f"{row.mean:.3f}", interval)
    console.print(table)
    console.print(f"wall time {wall_seconds:.1f} s")
    for name in ("metrics", "png", "pdf", "manifest"):
        console.print(f"{name}: {paths[name]}")


def aux_logits(
    config: str = typer.Argument(DEFAULT_CONFIG, help="YAML config path or the name of a shipped config."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory; defaults to runs/aux-logits-<UTC time>."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Number of seeds to train at once (overrides the config)."),
    mnist_dir: Optional[Path] = typer.Option(
        None, "--mnist-dir", help="Folder with the MNIST IDX files; switches the dataset to mnist-idx."
    ),
) -> None:
    """Train a digit classifier and students distilled only on its auxiliary logits of noise (Cloud et al. 2025)."""
    from study.auxlogits.experiment import configure_threads, run_experiment
    from study.auxlogits.results import summarize, write_run

    console = Console()
    settings = _load_config(config, seeds, mnist_dir)
    run_dir = out or Path("runs") / time.strftime("aux-logits-%Y%m%d-%H%M%S", time.gmtime())
    threads = configure_threads(settings.threads)
    console.print(f"aux-logits: {settings.seeds} seeds, {settings.dataset.name}, {threads} torch threads -> {run_dir}")

    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
    ) as progress:
        tasks: dict[str, tuple[int, float]] = {}

        def report(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = (progress.add_task(step, total=total, rate=""), time.perf_counter())
            task, step_started = tasks[step]
            rate = done / max(time.perf_counter() - step_started, 1e-9)
            progress.update(task, completed=done, rate=f"{rate:.2f} epochs/s")

        result = run_experiment(settings, progress=report)
    wall_seconds = time.perf_counter() - started

    paths = write_run(result, run_dir, threads)
    import pandas as pd

    _print_summary(console, summarize(pd.read_parquet(paths["metrics"]).query("arm == 'aux-logits'")), wall_seconds, paths)


def register(app: typer.Typer) -> None:
    app.command("aux-logits")(aux_logits)
