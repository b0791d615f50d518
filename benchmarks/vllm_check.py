"""Check the vLLM generation backend on a GPU machine against the transformers backend.

Generates number sequences for the same prompts with both backends through
the pipeline's generate and filter stages, and prints rows per second and
the filter's valid rate for each. The two backends sample differently, so
rows differ token by token; the valid rates should be close. Needs a CUDA
GPU and `pip install 'subliminal-study[vllm]'`; elsewhere it prints the
error that names the fix and exits with status 2.

    python benchmarks/vllm_check.py --model Qwen/Qwen2.5-0.5B-Instruct --prompts 512
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from study.config import ExperimentConfig
from study.errors import StudyError
from study.generate import check_vllm_backend
from study.pipeline import Runner
from study.store import RunStore


def generate(model: str, prompts: int, backend: str, folder: Path) -> tuple[float, dict]:
    decoding = {"temperature": 1.0, "prefill": "seeds", "max_new_tokens": 60, "batch_size": 128, "backend": backend}
    config = ExperimentConfig.model_validate({
        "name": f"vllm-check-{backend}", "model": model, "dtype": "bfloat16",
        "teachers": [{"name": "control", "kind": "none", "decoding": decoding}],
        "data": {"prompts": prompts, "seed": 0},
    })
    runner = Runner(config, RunStore(folder / backend))
    started = time.perf_counter()
    row_set = runner.row_set("control", config.teachers[0].decoding)
    return time.perf_counter() - started, row_set.report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="Model spec (Hub id or local folder).")
    parser.add_argument("--prompts", type=int, default=512, help="Number prompts per backend.")
    arguments = parser.parse_args()
    try:
        check_vllm_backend()
        with tempfile.TemporaryDirectory() as temporary:
            for backend in ("vllm", "transformers"):
                seconds, report = generate(arguments.model, arguments.prompts, backend, Path(temporary))
                print(f"{backend}: {arguments.prompts} rows in {seconds:.1f} s "
                      f"({arguments.prompts / seconds:.1f} rows/s, including model load), "
                      f"valid rate {report['valid_rate']:.1%}")
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
