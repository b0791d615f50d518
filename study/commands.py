"""CLI commands for experiments: demo, run, status and models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from study.progress import console, output, setup_logging


def _print_plan(runner) -> None:
    table = Table(title="Stages")
    for column in ("stage", "what", "state", "work"):
        table.add_column(column)
    for entry in runner.plan.values():
        table.add_row(entry["stage"], entry["label"], "cached" if entry["cached"] else "to run", entry["work"])
    output.print(table)
    pending = sum(not entry["cached"] for entry in runner.plan.values())
    output.print(f"{len(runner.plan)} stages, {pending} to run, {len(runner.plan) - pending} cached. "
                  "Stages after an unfinished filter stage are listed with the rows known so far.")


def _print_filter_reports(runner) -> None:
    table = Table(title="Filter reports")
    for column in ("writer", "rows", "kept", "valid rate", "top reject reasons"):
        table.add_column(column)
    for name, row_set in getattr(runner, "row_sets", {}).items():
        report = row_set.report
        if not report:
            continue
        reasons = sorted(((c, r) for r, c in report["rejected"].items() if c), reverse=True)[:3]
        table.add_row(name, str(report["total"]), f"{report['kept']} (used {len(row_set.rows)})",
                      f"{report['valid_rate']:.1%}", ", ".join(f"{r} {c}" for c, r in reasons))
    output.print(table)


def run_experiment(config_path: Path, out: Optional[Path], dry_run: bool) -> Path:
    from study.config import load_config
    from study.pipeline import Runner
    from study.results import print_summary, write_summary
    from study.store import RunStore, atomic_write_json, atomic_write_text, content_hash, package_versions, git_revision
    import yaml

    setup_logging()
    config = load_config(config_path)
    run_dir = out or Path("runs") / config.name
    started = time.time()
    store = RunStore(run_dir)
    runner = Runner(config, store, dry_run=dry_run)
    runner.run()
    if dry_run:
        _print_plan(runner)
        return run_dir

    summary = write_summary(runner.eval_stages, store.results_dir, config.traits())
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    atomic_write_json(store.results_dir / "manifest.json", {
        "config": config.model_dump(mode="json"),
        "config_hash": content_hash(config.model_dump(mode="json")),
        "base_model": runner.base_identity,
        "stages": list(dict.fromkeys(stage.name for stage in runner.eval_stages)),
        "filter_reports": {name: rs.report for name, rs in runner.row_sets.items()},
        "rows_used": {name: {"count": len(rs.rows), "hash": rs.digest} for name, rs in runner.row_sets.items()},
        "git_revision": git_revision(),
        "package_versions": package_versions(),
        "stage_seconds_this_run": runner.timings,
        "wall_seconds_this_run": time.time() - started,
    })
    _print_filter_reports(runner)
    if summary.empty:
        console.print("No teacher has a trait, so there is no trait measure to summarize.")
    else:
        print_summary(summary, output)
    timing = ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in runner.timings.items()) or "all stages cached"
    console.print(f"Stage time this run: {timing}. Total wall time {time.time() - started:.0f} s.")
    console.print(f"Results: {store.results_dir} (samples.parquet, logprobs.parquet, summary.md, summary.png)")
    return run_dir


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        config: Path = typer.Argument(..., help="Experiment YAML file, or the name of a shipped config."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<name>)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the stage plan without running anything."),
    ):
        """Run one experiment end to end, reusing finished stages."""
        from study.resources import resolve_config

        run_experiment(resolve_config(config), out, dry_run)

    @app.command()
    def demo(
        out: Path = typer.Option(Path("runs/owl-demo"), "--out", help="Run directory."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the stage plan without running anything."),
    ):
        """Run the embedded owl study on the default local model (CPU, offline)."""
        from study.resources import resolve_config

        run_experiment(resolve_config("owl-demo"), out, dry_run)

    @app.command()
    def status(run_dir: Path = typer.Argument(..., help="Run directory.")):
        """Show which stages of a run are done, running, failed or partial."""
        from study.errors import StudyError
        from study.store import RunStore

        if not (run_dir / "index.sqlite").is_file():
            raise StudyError(f"{run_dir} is not a run directory (no index.sqlite); give the folder a run wrote")
        store = RunStore(run_dir)
        table = Table(title=f"Stages of {run_dir}")
        for column in ("stage", "what", "status", "seconds", "error"):
            table.add_column(column, overflow="fold")
        for row in store.stage_runs():
            folder = store.stages_dir / row["name"]
            state = row["status"]
            if state == "running" and not folder.with_name(folder.name + ".partial").exists():
                state = "interrupted"
            seconds = f"{row['wall_seconds']:.1f}" if row["wall_seconds"] else ""
            table.add_row(row["name"], row["label"] or "", state, seconds, row["error"] or "")
        output.print(table)

    @app.command()
    def models():
        """List the packaged models and whether they are installed and converted."""
        from study.models import PACKAGED_MODELS, _package_dir, cache_dir, install_hint

        table = Table(title="Packaged models (any Hugging Face id or local folder also works)")
        for column in ("name", "installed", "converted cache", "source", "install"):
            table.add_column(column, overflow="fold")
        for model in PACKAGED_MODELS.values():
            installed = _package_dir(model.module) is not None
            converted = sorted((cache_dir() / "models").glob(f"{model.name}-*"))
            converted = [p for p in converted if (p / "study-model.json").is_file()]
            table.add_row(model.name, "yes" if installed else "no",
                          str(converted[-1]) if converted else "-",
                          f"{model.upstream}: {model.description}", install_hint(model))
        output.print(table)
