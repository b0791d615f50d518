"""Time regenerating every analysis figure, table and macro from about 200,000 stored result rows.

Run: ``python benchmarks/analysis_regenerate.py``. Writing the synthetic run
is not timed; loading, statistics, figures, tables and macros are. While the
timed part runs, importing torch, transformers, openai or anthropic and
opening a network connection raise, so a pass shows that no model or API
was called.
"""

from __future__ import annotations

import importlib.abc
import socket
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 10.0
BLOCKED_PACKAGES = ("torch", "transformers", "openai", "anthropic", "vllm")


class BlockedImport(importlib.abc.MetaPathFinder):
    """Raise on any import of a model or API client package."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED_PACKAGES:
            raise ImportError(f"{fullname} imported during analysis regeneration; analysis must not load models or API clients")
        return None


def _refuse_connection(*args, **kwargs):
    raise OSError("network connection attempted during analysis regeneration")


def main() -> None:
    from analysis.synthetic import SyntheticSpec, make_results, write_run

    already = [name for name in BLOCKED_PACKAGES if name in sys.modules]
    assert not already, f"{already} imported before the benchmark started"

    spec = SyntheticSpec(
        traits=("owl", "eagle", "dolphin", "wolf"),
        n_rows_levels=(64, 256, 1024, 4096, 16384),
        seeds=(0, 1, 2, 3, 4),
        n_questions=10,
        n_samples=28,
    )
    tables = make_results(spec)
    counts = {name: len(frame) for name, frame in tables.items()}
    total = sum(counts.values())

    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        write_run(run_dir, tables)
        del tables

        sys.meta_path.insert(0, BlockedImport())
        original_connect = socket.socket.connect
        socket.socket.connect = _refuse_connection
        try:
            start = time.perf_counter()
            from analysis.report import analyze_run

            report = analyze_run(run_dir, Path(folder) / "analysis")
            elapsed = time.perf_counter() - start
        finally:
            socket.socket.connect = original_connect
            sys.meta_path.pop(0)

        loaded = [name for name in BLOCKED_PACKAGES if name in sys.modules]
        assert not loaded, f"model or API packages imported: {loaded}"
        n_figures = len(report.figures)
        n_tables = len(report.tables)

    listed = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    print(f"rows: {total:,} ({listed})")
    print(f"outputs: {n_figures} figure files, {n_tables} table files, 1 macro file")
    print(f"model or API packages imported: none; network connections: none")
    print(f"regenerate: {elapsed:.2f} s (target {TARGET_SECONDS:.0f} s, ratio {elapsed / TARGET_SECONDS:.2f})")


if __name__ == "__main__":
    main()
