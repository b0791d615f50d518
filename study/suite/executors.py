"""Executors that run cells: a local process pool, Slurm through submitit, and Ray.

Each executor submits ``study.suite.cells.run_cell`` for one cell and hands
back a handle with ``done()`` and ``result()``. ``drive`` keeps at most
``max_workers`` cells in flight and retries failed cells, and a failed cell
does not stop the others.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Protocol

from study.errors import StudyError
from study.suite.cells import run_cell
from study.suite.config import SuiteConfig
from study.suite.state import SuiteIndex

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm", "ray")
POLL_SECONDS = 0.5


class Handle(Protocol):
    def done(self) -> bool: ...

    def result(self) -> dict: ...


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class LocalExecutor:
    """A pool of spawned worker processes, by default one per available core."""

    name = "local"

    def __init__(self, suite_dir: Path, suite: SuiteConfig, max_workers: int | None):
        self.suite_dir = str(suite_dir)
        self.threads = suite.threads_per_cell
        self.max_workers = max_workers or suite.max_workers or available_cores()
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing

        # spawn, not fork: the driver may already hold torch's thread pools, which fork does not copy safely.
        return ProcessPoolExecutor(self.max_workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, cell_id: str) -> Handle:
        if self._pool is None:
            self._pool = self._new_pool()
        try:
            return self._pool.submit(run_cell, self.suite_dir, cell_id, self.threads)
        except BrokenProcessPool:
            # A worker that died (killed, out of memory) breaks the whole pool; start a new one.
            log.warning("the local process pool broke; starting a new one")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(run_cell, self.suite_dir, cell_id, self.threads)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class SlurmExecutor:
    """One submitit job per cell: sbatch on a Slurm cluster, or submitit's LocalExecutor with cluster: local."""

    name = "slurm"

    def __init__(self, suite_dir: Path, suite: SuiteConfig, max_workers: int | None):
        try:
            import submitit
        except ImportError:
            raise StudyError(
                "the slurm executor needs submitit, which is not installed; "
                "install it with: pip install 'subliminal-study[slurm]'"
            ) from None
        settings = suite.slurm
        self.suite_dir = str(suite_dir)
        self.threads = suite.threads_per_cell
        # submitit's LocalExecutor starts every job at once, so a local cluster is throttled to the cores.
        default_workers = available_cores() if settings.cluster == "local" else 10_000
        self.max_workers = max_workers or suite.max_workers or default_workers
        try:
            self.executor = submitit.AutoExecutor(folder=str(Path(suite_dir) / "submitit" / "%j"),
                                                  cluster=settings.cluster)
        except RuntimeError as error:
            raise StudyError(
                f"the slurm executor could not start: {error}. Run on a Slurm login node (sbatch and srun on "
                "PATH), or set slurm.cluster: local in the suite file to run the jobs on this machine"
            ) from None
        parameters = {
            "name": f"suite-{suite.name}",
            "timeout_min": settings.timeout_min,
            "cpus_per_task": settings.cpus_per_task,
            "gpus_per_node": settings.gpus_per_node,
            "mem_gb": settings.mem_gb,
        }
        if settings.cluster == "slurm":
            if settings.partition:
                parameters["slurm_partition"] = settings.partition
            if settings.additional_parameters:
                parameters["slurm_additional_parameters"] = dict(settings.additional_parameters)
        self.executor.update_parameters(**parameters)

    def submit(self, cell_id: str) -> Handle:
        return self.executor.submit(run_cell, self.suite_dir, cell_id, self.threads)

    def shutdown(self) -> None:
        return None


class _RayHandle:
    def __init__(self, ray, reference):
        self.ray = ray
        self.reference = reference

    def done(self) -> bool:
        ready, _ = self.ray.wait([self.reference], timeout=0)
        return bool(ready)

    def result(self) -> dict:
        return self.ray.get(self.reference)


class RayExecutor:
    """One Ray task per cell, on a running cluster or a local Ray instance."""

    name = "ray"

    def __init__(self, suite_dir: Path, suite: SuiteConfig, max_workers: int | None):
        try:
            import ray
        except ImportError:
            raise StudyError(
                "the ray executor needs ray, which is not installed; install it with: pip install 'subliminal-study[ray]'"
            ) from None
        settings = suite.ray
        if not ray.is_initialized():
            try:
                ray.init(address=settings.address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError) as error:
                raise StudyError(
                    f"could not connect to Ray at address {settings.address!r}: {error}. Start the cluster "
                    "(ray start --head) or set ray.address in the suite file"
                ) from None
        self.ray = ray
        self.suite_dir = str(suite_dir)
        self.threads = suite.threads_per_cell
        self.max_workers = max_workers or suite.max_workers or 10_000
        # max_retries=0: a cell writes files, so a retry is the driver's decision and is recorded as one.
        self.remote = ray.remote(max_retries=0, num_cpus=settings.num_cpus, num_gpus=settings.num_gpus)(run_cell)

    def submit(self, cell_id: str) -> Handle:
        return _RayHandle(self.ray, self.remote.remote(self.suite_dir, cell_id, self.threads))

    def shutdown(self) -> None:
        return None


def make_executor(name: str, suite_dir: Path, suite: SuiteConfig, max_workers: int | None):
    executors = {"local": LocalExecutor, "slurm": SlurmExecutor, "ray": RayExecutor}
    if name not in executors:
        raise StudyError(f"unknown executor '{name}'; choose one of {', '.join(EXECUTORS)}")
    return executors[name](suite_dir, suite, max_workers)


def describe_failure(error: BaseException) -> str:
    """Return the last line of a worker's error, which names the cell's own exception."""
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return last if last and len(lines) > 1 else f"{error.__class__.__name__}: {text}"


def drive(executor, cell_ids: list[str], index: SuiteIndex, retries: int,
          advance: Callable[..., None] | None = None) -> dict[str, str]:
    """Run the cells, retrying each failed one up to ``retries`` times; return the cells that still failed."""
    queue = deque(cell_ids)
    attempts: Counter[str] = Counter()
    running: dict[str, Handle] = {}
    failures: dict[str, str] = {}
    finished_count = 0
    try:
        while queue or running:
            while queue and len(running) < executor.max_workers:
                cell_id = queue.popleft()
                attempts[cell_id] += 1
                running[cell_id] = executor.submit(cell_id)
            finished = [cell_id for cell_id, handle in running.items() if handle.done()]
            if not finished:
                time.sleep(POLL_SECONDS)
                continue
            for cell_id in finished:
                handle = running.pop(cell_id)
                try:
                    handle.result()
                except Exception as error:  # the cell's own error, wrapped by the executor
                    message = describe_failure(error)
                    if index.statuses().get(cell_id, {}).get("status") != "failed":
                        # The worker died before the cell could record its failure.
                        index.mark_failed(cell_id, message)
                    if attempts[cell_id] <= retries:
                        log.warning("cell %s failed (attempt %d of %d), retrying: %s",
                                    cell_id, attempts[cell_id], retries + 1, message)
                        queue.append(cell_id)
                        continue
                    log.error("cell %s failed after %d attempts: %s", cell_id, attempts[cell_id], message)
                    failures[cell_id] = message
                finished_count += 1
                if advance:
                    advance(1, failed=len(failures))
    finally:
        executor.shutdown()
    return failures
