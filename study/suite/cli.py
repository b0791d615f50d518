"""CLI commands for suites: study suite and study suite-status."""

from __future__ import annotations

import enum
import os
import socket
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from study.progress import console, setup_logging

MAX_CELLS_SHOWN = 60
# Plans and status tables are the commands' output, so they go to stdout; logs and progress use stderr.
output = Console()


class ExecutorName(str, enum.Enum):
    local = "local"
    slurm = "slurm"
    ray = "ray"


def print_plan(plan, suite_dir: Path) -> None:
    from collections import Counter

    table = Table(title=f"Cells of suite {plan.suite.name} ({suite_dir})")
    for column in ("cell", "what", "stages", "to run"):
        table.add_column(column, overflow="fold")
    for cell in plan.cells[:MAX_CELLS_SHOWN]:
        names = plan.cell_stages.get(cell.id, [])
        pending = sum(not plan.stages[name]["cached"] for name in names)
        table.add_row(cell.id, cell.label(), str(len(names)), str(pending))
    output.print(table)
    if len(plan.cells) > MAX_CELLS_SHOWN:
        output.print(f"... and {len(plan.cells) - MAX_CELLS_SHOWN} more cells")

    by_kind = Table(title="Stages, each shared stage counted once")
    for column in ("kind", "to run", "cached", "work (first stage to run)"):
        by_kind.add_column(column, overflow="fold")
    to_run = Counter(entry["kind"] for entry in plan.stages.values() if not entry["cached"])
    cached = Counter(entry["kind"] for entry in plan.stages.values() if entry["cached"])
    for kind in dict.fromkeys(entry["kind"] for entry in plan.stages.values()):
        example = next((e["work"] for e in plan.stages.values() if e["kind"] == kind and not e["cached"]), "")
        by_kind.add_row(kind, str(to_run[kind]), str(cached[kind]), example)
    output.print(by_kind)
    pending = sum(to_run.values())
    output.print(f"{len(plan.cells)} cells, {len(plan.stages)} stages: {pending} to run, "
                  f"{len(plan.stages) - pending} cached. Stages after an unfinished filter stage are planned "
                  "with the rows known so far, so later stage counts are estimates.")


def _process_alive(host: str | None, pid: int | None) -> bool | None:
    """Return whether a cell's process still runs, or None when it ran on another host."""
    if host != socket.gethostname() or not pid:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def print_status(suite_dir: Path) -> None:
    from study.errors import StudyError
    from study.suite.config import load_suite
    from study.suite.run import cell_counts, plan_suite
    from study.suite.state import SuiteIndex

    if not (suite_dir / "suite.sqlite").is_file() or not (suite_dir / "suite.yaml").is_file():
        raise StudyError(f"{suite_dir} is not a suite directory (no suite.sqlite or suite.yaml); "
                         "give the folder that 'study suite' wrote")
    plan = plan_suite(load_suite(suite_dir / "suite.yaml"))
    index = SuiteIndex(suite_dir)
    statuses = index.statuses()
    table = Table(title=f"Cells of {suite_dir}")
    for column in ("cell", "what", "status", "attempts", "seconds", "error", "log"):
        table.add_column(column, overflow="fold")
    for cell in plan.cells:
        row = statuses.get(cell.id) or {"status": "pending", "attempts": 0}
        state = row["status"]
        if state == "running" and _process_alive(row.get("host"), row.get("pid")) is False:
            state = "interrupted"
        elif state == "done" and row.get("cached"):
            state = "cached"
        seconds = f"{row['wall_seconds']:.1f}" if row.get("wall_seconds") else ""
        log_path = index.log_path(cell.id)
        table.add_row(cell.id, cell.label(), state, str(row.get("attempts") or 0), seconds,
                      row.get("error") or "", str(log_path) if log_path.exists() else "")
    output.print(table)
    counts = cell_counts(plan, statuses)
    output.print(", ".join(f"{state} {counts[state]}" for state in
                            ("done", "cached", "running", "failed", "pending")) + f" of {len(plan.cells)} cells")


def register(app: typer.Typer) -> None:
    @app.command()
    def suite(
        suite_file: Path = typer.Argument(..., help="Suite YAML file, or the name of a shipped suite."),
        out: Optional[Path] = typer.Option(None, "--out", help="Suite directory (default: runs/<suite name>)."),
        executor: ExecutorName = typer.Option(ExecutorName.local, "--executor",
                                              help="Where cells run: local process pool, slurm (submitit) or ray."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the cells and stages without running anything."),
        max_workers: Optional[int] = typer.Option(None, "--max-workers", min=1,
                                                  help="Cells run at once (default: the suite's max_workers, "
                                                       "else the CPU cores for local)."),
        retries: Optional[int] = typer.Option(None, "--retries", min=0,
                                              help="Further attempts per failed cell (default: the suite's retries)."),
    ):
        """Run an ablation suite (a grid of experiments in one suite directory), or resume it."""
        from study.errors import StudyError
        from study.resources import resolve_config
        from study.suite.config import load_suite
        from study.suite.run import plan_stages, plan_suite, run_suite

        setup_logging()
        path = resolve_config(suite_file)
        if dry_run:
            loaded = load_suite(path)
            suite_dir = out or Path("runs") / loaded.name
            print_plan(plan_stages(plan_suite(loaded), suite_dir), suite_dir)
            return
        outcome = run_suite(path, out, executor.value, max_workers, retries)
        console.print(f"Suite {outcome.suite_dir}: {outcome.cells} cells, {outcome.skipped} already done, "
                      f"{len(outcome.failures)} failed; {outcome.wall_seconds:.0f} s. "
                      f"Results: {outcome.suite_dir / 'results'} (cells.parquet, summary.md)")
        if outcome.failures:
            listed = "; ".join(f"{cell}: {error}" for cell, error in list(outcome.failures.items())[:3])
            more = f"; and {len(outcome.failures) - 3} more" if len(outcome.failures) > 3 else ""
            raise StudyError(f"{len(outcome.failures)} cells failed ({listed}{more}). See the logs under "
                             f"{outcome.suite_dir / 'cells'}, fix the cause, and rerun the same command to resume")

    @app.command("suite-status")
    def suite_status(suite_dir: Path = typer.Argument(..., help="Suite directory.")):
        """Show which cells of a suite are done, cached, running, failed or pending."""
        print_status(suite_dir)
