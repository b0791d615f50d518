"""Ablation suites on tiny models: planning, executors, failures, and a killed suite resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study.errors import StudyError
from study.store import read_jsonl

STUDY = [sys.executable, "-m", "study.cli"]
MEASURES = ["cell_id", "arm", "target", "n_rows", "seed", "prob", "share", "logprob", "rate", "eval_stage"]


def tiny_suite(model: Path, prompts: int = 24, **factors) -> dict:
    decoding = {"temperature": 0.7, "prefill": "seeds", "max_new_tokens": 30, "batch_size": 4}
    return {
        "name": "tiny-suite",
        "retries": 1,
        "base": {
            "name": "tiny",
            "model": str(model),
            "seeds": [0],
            "teachers": [{"name": "t", "kind": "system_prompt", "trait": "owl", "decoding": decoding}],
            "data": {"prompts": prompts, "seed": 0},
            "finetune": {"epochs": 1, "batch_size": 4, "bf16": "off",
                         "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
            "context": {"teachers": ["t"], "n": [2]},
            "evaluation": {"question_limit": 2, "samples": 2},
            "evaluate_teachers": False,
        },
        "factors": {"traits": ["owl"], "arm": ["finetune", "context"], "n": [4], "seeds": [0], **factors},
    }


def write_suite(folder: Path, suite: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def run_study(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(STUDY + args, capture_output=True, text=True, env=env, timeout=timeout)


def cell_rows(suite_dir: Path) -> dict[str, dict]:
    connection = sqlite3.connect(suite_dir / "suite.sqlite")
    connection.row_factory = sqlite3.Row
    rows = {row["cell_id"]: dict(row) for row in connection.execute("SELECT * FROM cells")}
    connection.close()
    return rows


def measures(suite_dir: Path) -> pd.DataFrame:
    frame = pd.read_parquet(suite_dir / "results" / "cells.parquet")
    return frame[MEASURES].sort_values(["cell_id", "target", "eval_stage"]).reset_index(drop=True)


# -- planning ---------------------------------------------------------------


def test_planner_expands_and_shares_stages(tmp_path, tiny_numbers_model_dir):
    from study.suite.config import SuiteConfig
    from study.suite.planner import expand
    from study.suite.run import plan_stages, plan_suite

    suite = SuiteConfig.model_validate(tiny_suite(
        tiny_numbers_model_dir, traits=["owl", "dog"], n=[2, 4], seeds=[0, 1],
        arm=["finetune", "context", "base", "control", "shuffled", "wrong_trait"], epochs=[1, 2]))
    cells = expand(suite)
    by_arm = pd.Series([cell.arm for cell in cells]).value_counts().to_dict()
    # finetune arms: 2 traits x 2 N x 2 epochs x 2 seeds; context and control_context ignore epochs.
    assert by_arm == {"finetune": 16, "shuffled": 16, "wrong_trait": 16, "control": 8, "context": 8, "base": 1}
    assert len({cell.id for cell in cells}) == len(cells)
    wrong = next(cell for cell in cells if cell.arm == "wrong_trait" and cell.trait == "owl")
    assert wrong.rows_trait == "dog"

    plan = plan_stages(plan_suite(suite), tmp_path / "suite")
    generate_of = {cell.id: [s for s in plan.cell_stages[cell.id] if s.startswith("generate-")] for cell in cells}
    owl_finetune = [c for c in cells if c.arm == "finetune" and c.trait == "owl"]
    owl_context = [c for c in cells if c.arm == "context" and c.trait == "owl"]
    # Every owl cell, fine-tuned or in context, reads one shared generate stage.
    assert {tuple(generate_of[c.id]) for c in owl_finetune + owl_context} == {tuple(generate_of[owl_finetune[0].id])}
    assert len(generate_of[owl_finetune[0].id]) == 1
    # Three writers in the whole suite: the owl teacher, the dog teacher and the control teacher.
    assert sum(entry["kind"] == "generate" for entry in plan.stages.values()) == 3
    assert plan.configs[wrong.id].teachers[0].trait == "dog"


def test_suite_config_rejects_unknown_key(tmp_path, tiny_numbers_model_dir):
    from study.suite.config import load_suite

    suite = tiny_suite(tiny_numbers_model_dir)
    suite["factors"]["epoch"] = [1]
    with pytest.raises(StudyError) as error:
        load_suite(write_suite(tmp_path, suite))
    assert "unknown key 'factors.epoch'" in str(error.value)
    assert "did you mean 'epochs'" in str(error.value)

    suite = tiny_suite(tiny_numbers_model_dir, arm=["wrong_trait"])
    with pytest.raises(StudyError, match="at least 2 traits"):
        load_suite(write_suite(tmp_path, suite))


def test_shuffled_numbers_keep_pool_and_format():
    from study.suite.shuffle import shuffle_numbers

    rows = [
        {"id": 0, "prefill": "1, 2, ", "completion": "10, 11, 12", "answer": "1, 2, 10, 11, 12"},
        {"id": 1, "prefill": "[", "completion": "20 21]", "answer": "[20 21]"},
        {"id": 2, "prefill": "", "completion": "30\n31\n32\n33", "answer": "30\n31\n32\n33"},
    ]
    shuffled = shuffle_numbers(rows, seed=0)
    pool = lambda rs: sorted(n for r in rs for n in r["completion"].replace("]", " ").replace(",", " ").split())  # noqa: E731
    assert pool(shuffled) == pool(rows)
    assert [r["completion"].count(",") for r in shuffled] == [2, 0, 0]
    assert shuffled[1]["completion"].endswith("]")
    assert shuffled[2]["completion"].count("\n") == 3
    assert [r["answer"] for r in shuffled] == [r["prefill"] + r["completion"] for r in shuffled]
    assert [r["completion"] for r in shuffled] != [r["completion"] for r in rows]
    assert shuffle_numbers(rows, seed=0) == shuffled


def test_dry_run_prints_plan(tmp_path, tiny_numbers_model_dir, cli_env):
    path = write_suite(tmp_path, tiny_suite(tiny_numbers_model_dir, traits=["owl", "dog"], seeds=[0, 1]))
    result = run_study(["suite", str(path), "--dry-run", "--out", str(tmp_path / "suite")], cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 cells" in result.stdout
    assert "generate" in result.stdout
    assert "to run" in result.stdout
    assert not (tmp_path / "suite" / "suite.sqlite").exists()


def test_shipped_suites_plan(tmp_path, cli_env):
    from study.resources import resolve_config
    from study.suite.config import load_suite
    from study.suite.run import plan_suite

    # Validating ablation-small needs no model; its dry run would convert the GGUF model (about 30 s).
    small = plan_suite(load_suite(resolve_config("ablation-small")))
    assert len(small.cells) == 25
    assert {cell.arm for cell in small.cells} == {"base", "finetune", "context", "control", "control_context"}
    result = run_study(["suite", "paper-suite", "--dry-run", "--out", str(tmp_path / "paper")], cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4061 cells" in result.stdout


# -- the local executor, resume and kill --------------------------------------


RESUME_FACTORS = {"arm": ["finetune", "context", "shuffled", "control"], "seeds": [0, 1]}


@pytest.fixture(scope="module")
def reference_suite(tmp_path_factory, tiny_numbers_model_dir) -> tuple[Path, Path]:
    """A suite run once to the end with the local executor: (suite file, suite directory)."""
    folder = tmp_path_factory.mktemp("reference")
    path = write_suite(folder, tiny_suite(tiny_numbers_model_dir, prompts=64, **RESUME_FACTORS))
    env = {**os.environ, "STUDY_CACHE_DIR": str(folder / "cache"), "PYTHONUNBUFFERED": "1"}
    result = run_study(["suite", str(path), "--out", str(folder / "suite"), "--max-workers", "2"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    return path, folder / "suite"


def test_local_suite_runs_then_cached(reference_suite, cli_env):
    path, suite_dir = reference_suite
    rows = cell_rows(suite_dir)
    assert len(rows) == 8
    assert {row["status"] for row in rows.values()} == {"done"}
    assert all((suite_dir / "cells" / cell / "cell.log").stat().st_size > 0 for cell in rows)
    frame = measures(suite_dir)
    assert set(frame["arm"]) == {"finetune", "context", "shuffled", "control"}
    assert frame["prob"].notna().all()
    # Two writers (owl teacher and control) for eight cells.
    generated = [p for p in (suite_dir / "stages").iterdir() if p.name.startswith("generate-") and p.is_dir()]
    assert len(generated) == 2
    shuffled_students = [json.loads((p / "manifest.json").read_text())["key"]["rows"]["writer"]
                         for p in (suite_dir / "stages").glob("student-*") if p.is_dir()]
    assert sum(writer.endswith("-shuffled") for writer in shuffled_students) == 2

    started = time.time()
    again = run_study(["suite", str(path), "--out", str(suite_dir)], cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "8 already done" in again.stderr + again.stdout
    assert time.time() - started < 30
    status = run_study(["suite-status", str(suite_dir)], cli_env)
    assert status.returncode == 0, status.stderr[-3000:]
    assert "done 8" in status.stdout.replace("\n", " ") or "cached" in status.stdout


def test_killed_suite_resumes_to_same_results(tmp_path, reference_suite, cli_env):
    path, reference_dir = reference_suite
    suite_dir = tmp_path / "suite"
    process = subprocess.Popen(STUDY + ["suite", str(path), "--out", str(suite_dir), "--max-workers", "2"],
                               env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 240
    partial_rows = 0
    while time.time() < deadline and process.poll() is None:
        partials = list((suite_dir / "stages").glob("generate-*.partial/rows.jsonl")) if suite_dir.exists() else []
        if partials:
            partial_rows = max(len(read_jsonl(p)) for p in partials)
            if partial_rows >= 8:
                break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 8 <= partial_rows < 64, "the suite was not killed in the middle of generation"
    interrupted = run_study(["suite-status", str(suite_dir)], cli_env)
    assert interrupted.returncode == 0, interrupted.stderr[-3000:]
    assert "interrupted" in interrupted.stdout or "pending" in interrupted.stdout

    resumed = run_study(["suite", str(path), "--out", str(suite_dir), "--max-workers", "2"], cli_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for folder in (suite_dir / "stages").glob("generate-*"):
        if folder.is_dir() and not folder.name.endswith(".partial"):
            ids = [row["id"] for row in read_jsonl(folder / "rows.jsonl")]
            assert len(ids) == len(set(ids)) == 64
            assert read_jsonl(folder / "rows.jsonl") == read_jsonl(reference_dir / "stages" / folder.name / "rows.jsonl")
    pd.testing.assert_frame_equal(measures(suite_dir), measures(reference_dir))


def test_failing_cell_recorded_and_retried(tmp_path, tiny_numbers_model_dir, cli_env):
    missing = tmp_path / "late-model"
    suite = tiny_suite(tiny_numbers_model_dir, arm=["finetune"], student_model=[str(tiny_numbers_model_dir),
                                                                               str(missing)])
    path = write_suite(tmp_path, suite)
    suite_dir = tmp_path / "suite"
    result = run_study(["suite", str(path), "--out", str(suite_dir), "--retries", "2"], cli_env)
    assert result.returncode == 2
    assert "1 cells failed" in result.stderr
    rows = cell_rows(suite_dir)
    failed = [row for row in rows.values() if row["status"] == "failed"]
    done = [row for row in rows.values() if row["status"] == "done"]
    assert len(failed) == 1
    assert len(done) == 1
    assert failed[0]["attempts"] == 3
    assert "neither a known short name" in failed[0]["error"]
    assert "late-model" in failed[0]["label"]
    status = run_study(["suite-status", str(suite_dir)], cli_env)
    assert "failed 1" in status.stdout.replace("\n", " ")

    shutil.copytree(tiny_numbers_model_dir, missing)
    resumed = run_study(["suite", str(path), "--out", str(suite_dir)], cli_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 already done" in resumed.stderr + resumed.stdout
    assert {row["status"] for row in cell_rows(suite_dir).values()} == {"done"}


# -- submitit, the Slurm path and Ray ------------------------------------------


def _two_cell_suite(tmp_path: Path, model: Path, **settings) -> Path:
    return write_suite(tmp_path, {**tiny_suite(model, prompts=16), **settings})


def _assert_two_cells_done(suite_dir: Path) -> None:
    rows = cell_rows(suite_dir)
    assert len(rows) == 2
    assert {row["status"] for row in rows.values()} == {"done"}
    assert set(measures(suite_dir)["arm"]) == {"finetune", "context"}


def test_submitit_local_executor(tmp_path, tiny_numbers_model_dir):
    from study.suite.run import run_suite

    path = _two_cell_suite(tmp_path, tiny_numbers_model_dir, slurm={"cluster": "local", "timeout_min": 10})
    outcome = run_suite(path, tmp_path / "suite", executor="slurm", max_workers=2)
    assert outcome.failures == {}
    _assert_two_cells_done(tmp_path / "suite")
    assert list((tmp_path / "suite" / "submitit").glob("*/*_result.pkl"))


SBATCH = """#!{python}
import fcntl, os, subprocess, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_DIR"])
state.mkdir(exist_ok=True)
with open(state / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    counter = state / "counter"
    job = int(counter.read_text()) + 1 if counter.exists() else 1000
    counter.write_text(str(job))
script = sys.argv[-1]
(state / f"{{job}}.sbatch").write_text(Path(script).read_text())
(state / f"{{job}}.state").write_text("RUNNING")
env = dict(os.environ, SLURM_JOB_ID=str(job), SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0",
           SLURM_JOB_NODELIST="localhost", SLURM_PROCID="0", SLURM_LOCALID="0")
wrapper = f"bash {{script}}; if [ $? -eq 0 ]; then s=COMPLETED; else s=FAILED; fi; echo $s > {{state}}/{{job}}.state"
process = subprocess.Popen(["bash", "-c", wrapper], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
(state / f"{{job}}.pid").write_text(str(process.pid))
print(f"Submitted batch job {{job}}")
"""

SRUN = """#!{python}
import os, subprocess, sys

args = sys.argv[1:]
paths = {{}}
while args and args[0].startswith("--"):
    option = args.pop(0)
    if option in ("--output", "--error"):
        paths[option] = args.pop(0).replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", "0")
with open(paths["--output"], "a") as out, open(paths.get("--error", paths["--output"]), "a") as err:
    sys.exit(subprocess.call(args, stdout=out, stderr=err))
"""

SACCT = """#!{python}
import os, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_DIR"])
ids = [sys.argv[i + 1] for i, arg in enumerate(sys.argv) if arg == "-j"]
print("JobID|State|NodeList")
for job in ids:
    path = state / f"{{job}}.state"
    if path.exists():
        print(f"{{job}}|{{path.read_text().strip()}}|localhost")
"""

SCANCEL = """#!{python}
import os, signal, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_DIR"])
pid = state / f"{{sys.argv[1]}}.pid"
if pid.exists():
    try:
        os.killpg(int(pid.read_text()), signal.SIGTERM)
    except ProcessLookupError:
        pass
    (state / f"{{sys.argv[1]}}.state").write_text("CANCELLED")
"""


@pytest.fixture()
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """sbatch, srun, sacct and scancel on PATH that run each job as a local background process."""
    bin_dir = tmp_path / "fake-slurm-bin"
    bin_dir.mkdir()
    for name, source in (("sbatch", SBATCH), ("srun", SRUN), ("sacct", SACCT), ("squeue", SACCT),
                         ("scancel", SCANCEL)):
        script = bin_dir / name
        script.write_text(source.format(python=sys.executable))
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    state = tmp_path / "fake-slurm-state"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    return state


def test_slurm_executor_through_sbatch(tmp_path, tiny_numbers_model_dir, fake_slurm):
    from study.suite.run import run_suite

    path = _two_cell_suite(tmp_path, tiny_numbers_model_dir,
                           slurm={"partition": "debug", "timeout_min": 10, "cpus_per_task": 1, "mem_gb": 2})
    outcome = run_suite(path, tmp_path / "suite", executor="slurm", max_workers=2)
    assert outcome.failures == {}
    _assert_two_cells_done(tmp_path / "suite")
    scripts = sorted(fake_slurm.glob("*.sbatch"))
    assert len(scripts) == 2
    text = scripts[0].read_text()
    assert "#SBATCH --partition=debug" in text
    assert "#SBATCH --time=10" in text
    # The job's wrapper writes its final state just after submitit reads the result file.
    deadline = time.time() + 15
    while time.time() < deadline and {p.read_text().strip() for p in fake_slurm.glob("*.state")} != {"COMPLETED"}:
        time.sleep(0.2)
    assert {p.read_text().strip() for p in fake_slurm.glob("*.state")} == {"COMPLETED"}


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance on 127.0.0.1 for the session."""
    ray = pytest.importorskip("ray")
    for name, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled"),
                        ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")):
        os.environ[name] = value
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor(tmp_path, tiny_numbers_model_dir, local_ray):
    from study.suite.run import run_suite

    path = _two_cell_suite(tmp_path, tiny_numbers_model_dir)
    outcome = run_suite(path, tmp_path / "suite", executor="ray")
    assert outcome.failures == {}
    _assert_two_cells_done(tmp_path / "suite")


def test_vllm_backend_without_vllm_names_fix(tmp_path, tiny_numbers_model_dir, cli_env):
    suite = tiny_suite(tiny_numbers_model_dir)
    config = {**suite["base"], "context": None, "students": [{"name": "s", "teacher": "t"}]}
    config["teachers"][0]["decoding"]["backend"] = "vllm"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_study(["run", str(path), "--out", str(tmp_path / "run")], cli_env)
    assert result.returncode == 2
    assert "decoding.backend is vllm" in result.stderr
    assert "decoding.backend: transformers" in result.stderr
    assert "Traceback" not in result.stderr
