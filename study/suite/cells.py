"""The function every executor runs for one cell, in a worker process or on another machine.

It lives in the installed package because submitit jobs and Ray workers
import it by name, and it takes and returns plain types so that every
executor can pickle its arguments and result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``path`` while the cell runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with open(path, "a", encoding="utf-8") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_cell(suite_dir: str, cell_id: str, threads: int = 1) -> dict:
    """Run one cell's experiment in the shared suite directory and return its outcome.

    Raises the cell's error after recording it, so the executor receives the
    failure and may retry. The stage locks make a retry or a concurrent cell
    reuse whatever stages finished.
    """
    import torch

    from study.config import ExperimentConfig
    from study.pipeline import Runner
    from study.progress import setup_logging
    from study.store import RunStore
    from study.suite.shuffle import shuffled_row_set
    from study.suite.state import SuiteIndex

    # Concurrent cells share the cores; more threads per cell only adds contention.
    torch.set_num_threads(threads)
    index = SuiteIndex(Path(suite_dir))
    index.mark_running(cell_id)
    started = time.time()
    with _output_to(index.log_path(cell_id)):
        setup_logging()
        spec = index.read_spec(cell_id)
        log.info("cell %s (%s) starting on pid %d", cell_id, spec["cell"]["label"], os.getpid())
        try:
            config = ExperimentConfig.model_validate(spec["config"])
            runner = Runner(config, RunStore(Path(suite_dir)))
            if spec["cell"]["arm"] == "shuffled":
                runner.row_transform = lambda rows: shuffled_row_set(rows, config.data.seed)
            runner.run()
        except BaseException as error:
            log.error("cell %s failed: %s", cell_id, error)
            traceback.print_exc()
            index.mark_failed(cell_id, f"{error.__class__.__name__}: {error}")
            raise
        # Stages that were incomplete when this cell reached them; a concurrent cell may have finished some.
        stages_run = sum(not entry["cached"] for entry in runner.plan.values())
        eval_stages = list(dict.fromkeys(stage.name for stage in runner.eval_stages))
        wall = time.time() - started
        index.mark_done(cell_id, stages_run, eval_stages, wall)
        log.info("cell %s done in %.1f s (%d stages were not cached)", cell_id, wall, stages_run)
    return {"cell_id": cell_id, "eval_stages": eval_stages, "stages_run": stages_run, "wall_seconds": wall}
