"""Compare the wall time of N seeds trained as one batch with N single-seed runs.

Usage: python benchmarks/auxlogits_speed.py [--seeds 5] [--threads 1]
Runs a shortened shipped config (teacher 5 epochs, students 1 epoch on
10000 noise images), about 10 s on one core.

NOTE: on CPU the matmuls are compute-bound, so a batch of N seeds costs
about as much as N single-seed runs (one shared 2-core machine, 1 thread:
6.5 s batched against 4.2 s for five separate runs). Batching saves the
per-step Python overhead and lets seeds run in parallel only on hardware
with spare compute, such as a GPU or idle cores.
"""

from __future__ import annotations

import argparse
import time

from study.auxlogits.config import AuxLogitsConfig
from study.auxlogits.experiment import configure_threads, run_experiment


def shortened_config(seeds: int, first_seed: int, threads: int) -> AuxLogitsConfig:
    return AuxLogitsConfig.model_validate({
        "seeds": seeds,
        "first_seed": first_seed,
        "threads": threads,
        "teacher": {"epochs": 5},
        "student": {"epochs": 1, "noise_inputs": 10000, "init_kinds": ["same", "permuted"]},
    })


def timed_run(config: AuxLogitsConfig) -> float:
    started = time.perf_counter()
    run_experiment(config)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    arguments = parser.parse_args()
    configure_threads(arguments.threads)

    batched = timed_run(shortened_config(arguments.seeds, 0, arguments.threads))
    one_at_a_time = sum(
        timed_run(shortened_config(1, seed, arguments.threads)) for seed in range(arguments.seeds)
    )
    single = one_at_a_time / arguments.seeds
    print(f"{arguments.seeds} seeds batched: {batched:.1f} s")
    print(f"{arguments.seeds} seeds one at a time: {one_at_a_time:.1f} s ({single:.1f} s per seed)")
    print(f"batched run / single-seed run: {batched / single:.2f}")


if __name__ == "__main__":
    main()
