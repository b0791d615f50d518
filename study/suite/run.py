"""Plan, run, resume and report a suite in one suite directory."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from study.errors import StudyError
from study.store import RunStore, atomic_write_text
from study.suite.config import SuiteConfig, load_suite
from study.suite.planner import Cell, cell_config, expand
from study.suite.state import SuiteIndex

log = logging.getLogger(__name__)


@dataclass
class SuitePlan:
    """Cells of a suite and the stages their experiments need."""

    suite: SuiteConfig
    cells: list[Cell]
    configs: dict[str, object]
    stages: dict[str, dict] = field(default_factory=dict)
    """Stage name -> plan entry (kind, label, cached, work), shared stages counted once."""
    cell_stages: dict[str, list[str]] = field(default_factory=dict)


def plan_suite(suite: SuiteConfig) -> SuitePlan:
    """Expand the grid and build every cell's experiment config (validated, nothing run)."""
    cells = expand(suite)
    configs = {}
    for cell in cells:
        try:
            configs[cell.id] = cell_config(suite, cell)
        except ValueError as error:
            raise StudyError(f"suite cell '{cell.label()}' is not a valid experiment: {error}. "
                             "Change the base experiment or the factor levels") from None
    return SuitePlan(suite, cells, configs)


def plan_stages(plan: SuitePlan, suite_dir: Path) -> SuitePlan:
    """Dry-run every cell's Runner against the suite directory to list stages to run and cached."""
    from study.pipeline import Runner
    from study.suite.shuffle import shuffled_row_set

    store = RunStore(suite_dir)
    for cell in plan.cells:
        config = plan.configs[cell.id]
        runner = Runner(config, store, dry_run=True)
        if cell.arm == "shuffled":
            runner.row_transform = lambda rows, seed=config.data.seed: shuffled_row_set(rows, seed)
        runner.run()
        plan.cell_stages[cell.id] = list(runner.plan)
        for name, entry in runner.plan.items():
            plan.stages.setdefault(name, {**entry, "kind": name.split("-", 1)[0]})
    return plan


def write_cell_specs(plan: SuitePlan, index: SuiteIndex) -> None:
    for cell in plan.cells:
        index.write_spec(cell.id, {"cell": cell.as_dict(), "config": plan.configs[cell.id].model_dump(mode="json")})
    index.register([(cell.id, cell.label()) for cell in plan.cells])


def prepare_models(plan: SuitePlan) -> None:
    """Convert packaged GGUF models once here, so concurrent cells do not convert the same model."""
    from study.models import PACKAGED_MODELS, resolve_model

    specs = {plan.suite.base.model}
    for config in plan.configs.values():
        specs.update(student.model for student in config.students if student.model)
    for spec in sorted(specs):
        if spec in PACKAGED_MODELS:
            resolve_model(spec)


@dataclass
class SuiteOutcome:
    suite_dir: Path
    cells: int
    skipped: int
    failures: dict[str, str]
    wall_seconds: float


def run_suite(suite_path: Path, suite_dir: Path | None = None, executor: str = "local",
              max_workers: int | None = None, retries: int | None = None) -> SuiteOutcome:
    """Run the cells that are not done yet and write the suite results; finished cells are skipped."""
    from study.progress import progress_bar
    from study.suite.executors import drive, make_executor
    from study.suite.results import collect_cells, write_results, write_tidy_tables

    started = time.time()
    suite = load_suite(suite_path)
    suite_dir = Path(suite_dir or Path("runs") / suite.name)
    plan = plan_suite(suite)
    suite_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(suite_dir / "suite.yaml", yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False))
    RunStore(suite_dir)
    index = SuiteIndex(suite_dir)
    write_cell_specs(plan, index)
    statuses = index.statuses()
    pending = [cell.id for cell in plan.cells if statuses[cell.id]["status"] != "done"]
    index.reset_attempts(pending)
    log.info("suite %s: %d cells, %d done before, %d to run with the %s executor in %s",
             suite.name, len(plan.cells), len(plan.cells) - len(pending), len(pending), executor, suite_dir)

    failures: dict[str, str] = {}
    if pending:
        prepare_models(plan)
        runner = make_executor(executor, suite_dir, suite, max_workers)
        attempts = suite.retries if retries is None else retries
        with progress_bar(f"suite {suite.name}", len(pending), "cells") as advance:
            failures = drive(runner, pending, index, attempts, advance)

    statuses = index.statuses()
    frame = collect_cells(RunStore(suite_dir), plan.cells, statuses, suite.traits())
    write_results(frame, suite_dir / "results")
    write_tidy_tables(RunStore(suite_dir), statuses, suite.traits())
    return SuiteOutcome(suite_dir, len(plan.cells), len(plan.cells) - len(pending), failures, time.time() - started)


def cell_counts(plan: SuitePlan, statuses: dict[str, dict]) -> Counter:
    """Count cells by state: pending, running, done, cached (done with every stage reused) and failed."""
    counts: Counter = Counter()
    for cell in plan.cells:
        row = statuses.get(cell.id)
        state = row["status"] if row else "pending"
        if state == "done" and row["cached"]:
            state = "cached"
        counts[state] += 1
    return counts
