"""Judge throughput against the loopback judge server.

With every reply delayed by L seconds and C requests in flight, the best
possible rate is C/L requests per second. The script prints the measured
rate as a ratio to C/L (target >= 0.9), then judges the same answers again
and prints how many requests the second pass sent (target 0).

The server runs in its own process, so that it does not share the
client's interpreter lock. A short warm-up run first pays the one-time
costs (SDK imports, connection setup) outside the measurement.

    python benchmarks/judge_throughput.py --latency 0.1 --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from judge_server import judges_config, open_answers, write_run  # noqa: E402

from study.judge.pipeline import run_judging  # noqa: E402


class RemoteServer:
    """A judge_server.py process; only the URL and request counts are visible from here."""

    def __init__(self, latency: float):
        self.process = subprocess.Popen(
            [sys.executable, str(TESTS / "judge_server.py"), str(latency)], stdout=subprocess.PIPE, text=True,
        )
        self.url = self.process.stdout.readline().strip()
        self.openai_url = self.url + "/v1"

    def counts(self) -> dict:
        with urllib.request.urlopen(self.url + "/_test/counts", timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def judge_answers(server: RemoteServer, concurrency: int, count: int, label: str) -> tuple[dict, dict, Path]:
    config = judges_config(server, concurrency={"initial": concurrency, "min": 1, "max": concurrency})
    folder = Path(tempfile.mkdtemp(prefix=f"judge-bench-{label}-"))
    # Alignment and coherence: two requests per answer.
    answers = [f"[[score={index % 101}]] {label} answer {index}" for index in range(count // 2)]
    write_run(folder, open_answers(answers))
    return run_judging(folder, config, show_progress=False), config, folder


def measure(latency: float, concurrency: int, requests: int) -> dict:
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-not-a-real-key")
    server = RemoteServer(latency)
    folders = []
    try:
        _, _, warmup_folder = judge_answers(server, concurrency, 2 * concurrency, "warmup")
        folders.append(warmup_folder)
        before = server.counts().get("/v1/chat/completions", 0)
        first, config, folder = judge_answers(server, concurrency, requests, "measured")
        folders.append(folder)
        after_first = server.counts()
        second = run_judging(folder, config, show_progress=False)
        after_second = server.counts()
    finally:
        server.stop()
        for path in folders:
            shutil.rmtree(path, ignore_errors=True)
    rate = first["requests_sent"] / first["seconds"]
    return {
        "requests": after_first.get("/v1/chat/completions", 0) - before,
        "judge_seconds": first["seconds"],
        "rate_per_s": rate,
        "ideal_per_s": concurrency / latency,
        "ratio": rate / (concurrency / latency),
        "rejudge_requests": sum(after_second.values()) - sum(after_first.values()),
        "rejudge_cache_hits": second["cache_hits"],
        "retries": first["retries"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Judge throughput against the loopback judge server.")
    parser.add_argument("--latency", type=float, nargs="+", default=[0.1], help="reply delay L in seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16], help="requests in flight C")
    parser.add_argument("--requests", type=int, default=None, help="requests per setting (default 40*C)")
    args = parser.parse_args()
    print(f"{'L (s)':>6} {'C':>4} {'requests':>8} {'seconds':>8} {'rate/s':>8} {'C/L':>7} {'ratio':>6} {'rejudge':>7}")
    for latency in args.latency:
        for concurrency in args.concurrency:
            result = measure(latency, concurrency, args.requests or 40 * concurrency)
            print(
                f"{latency:>6.3f} {concurrency:>4d} {result['requests']:>8d} {result['judge_seconds']:>8.2f} "
                f"{result['rate_per_s']:>8.1f} {result['ideal_per_s']:>7.1f} {result['ratio']:>6.3f} "
                f"{result['rejudge_requests']:>7d}",
                flush=True,
            )
            if result["retries"]:
                print(f"       retries: {result['retries']}")


if __name__ == "__main__":
    main()
