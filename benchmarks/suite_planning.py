"""Time suite planning at 1,000 cells and a rerun of a fully cached suite.

1. Planning: the paper-suite base with factor levels that expand to more
   than 1,000 cells, of which the first 1,000 are planned. The timed part
   expands the grid, validates every cell's ExperimentConfig and dry-runs
   every cell's Runner against an empty suite directory, as `study suite
   --dry-run` does. Imports are done before the clock starts. Target: 2 s.
2. Cached rerun: a suite of 8 cells on the tests' tiny number-writing model
   (built here, offline, in about 15 s) is run once with `study suite`; then the timed runs
   are (a) `study suite` again, which skips the done cells, and (b) the same
   after deleting suite.sqlite, so every cell runs through the local executor
   and finds every stage cached. Both are timed as whole CLI processes.
   Target: under 10 s.

Ratios are measured time / target (below 1 meets the target).

    python benchmarks/suite_planning.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PLANNING_TARGET_S = 2.0
CACHED_TARGET_S = 10.0


def planning_seconds(folder: Path) -> tuple[int, float]:
    from study.suite.config import SuiteConfig, load_suite
    from study.suite.run import plan_stages, plan_suite

    paper = load_suite(REPO / "configs" / "paper-suite.yaml").model_dump(mode="json")
    # These levels expand to more than 1,000 cells; the first 1,000 are planned.
    paper["factors"].update({"arm": ["base", "finetune", "context", "control", "control_context"],
                             "n": [100, 1000], "temperature": [1.0]})
    started = time.perf_counter()
    suite = SuiteConfig.model_validate(paper)
    plan = plan_suite(suite)
    plan.cells = plan.cells[:1000]
    plan_stages(plan, folder / "planned")
    return len(plan.cells), time.perf_counter() - started


def tiny_suite(model: Path) -> dict:
    decoding = {"temperature": 0.7, "prefill": "seeds", "max_new_tokens": 30, "batch_size": 8}
    return {
        "name": "benchmark-cached",
        "base": {
            "name": "benchmark-cached", "model": str(model), "seeds": [0],
            "teachers": [{"name": "t", "kind": "system_prompt", "trait": "owl", "decoding": decoding}],
            "data": {"prompts": 32, "seed": 0},
            "finetune": {"epochs": 1, "batch_size": 4, "bf16": "off",
                         "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
            "evaluation": {"question_limit": 2, "samples": 2},
            "evaluate_teachers": False,
        },
        "factors": {"traits": ["owl", "dog"], "arm": ["finetune", "context"], "n": [4], "seeds": [0, 1]},
    }


def timed_cli(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "study.cli", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"study {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return seconds


def cached_seconds(folder: Path) -> tuple[float, float, float]:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny import build_tiny_numbers_model

    model = build_tiny_numbers_model(folder / "model")
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(tiny_suite(model)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "STUDY_CACHE_DIR": str(folder / "cache")}
    suite_dir = folder / "suite"
    args = ["suite", str(path), "--out", str(suite_dir), "--max-workers", "2"]
    first = timed_cli(args, env)
    skipped = timed_cli(args, env)
    for name in ("suite.sqlite", "suite.sqlite-wal", "suite.sqlite-shm"):
        (suite_dir / name).unlink(missing_ok=True)
    rerun = timed_cli(args, env)
    return first, skipped, rerun


def main() -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        cells, planning = planning_seconds(folder)
        print(f"planning {cells} cells: {planning:.2f} s, ratio {planning / PLANNING_TARGET_S:.2f} "
              f"(target {PLANNING_TARGET_S:.0f} s)")
        first, skipped, rerun = cached_seconds(folder)
        print(f"tiny suite, first run (8 cells, not timed against a target): {first:.1f} s")
        print(f"cached rerun, done cells skipped: {skipped:.1f} s, ratio {skipped / CACHED_TARGET_S:.2f} "
              f"(target {CACHED_TARGET_S:.0f} s)")
        print(f"cached rerun, every cell through the executor: {rerun:.1f} s, "
              f"ratio {rerun / CACHED_TARGET_S:.2f} (target {CACHED_TARGET_S:.0f} s)")


if __name__ == "__main__":
    main()
