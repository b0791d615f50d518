"""`study run` end to end on tiny models: every stage, caching, resume and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study.store import read_jsonl

STUDY = [sys.executable, "-m", "study.cli"]


def tiny_config(model: Path, other: Path | None = None, prompts: int = 48) -> dict:
    decoding = {"temperature": 0.7, "prefill": "seeds", "max_new_tokens": 30, "batch_size": 8}
    config = {
        "name": "tiny",
        "model": str(model),
        "seeds": [0, 1],
        "teachers": [
            {"name": "owl-lora", "kind": "finetuned", "trait": "owl", "trait_examples": 16,
             "finetune": {"epochs": 1, "batch_size": 8, "bf16": "off"}, "decoding": decoding},
            {"name": "dog-prompt", "kind": "system_prompt", "trait": "dog", "decoding": decoding},
            {"name": "control", "kind": "none", "decoding": decoding},
        ],
        "data": {"prompts": prompts, "seed": 0},
        "shared_rows": {"writer": "base", "decoding": decoding},
        "finetune": {"epochs": 1, "batch_size": 4, "bf16": "off",
                     "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "students": [
            {"name": "sft-owl", "teacher": "owl-lora", "loss": "sft"},
            {"name": "sft-control", "teacher": "control", "loss": "sft"},
            {"name": "distill-owl", "teacher": "owl-lora", "loss": "distill", "rows": "shared"},
            {"name": "distill-dog", "teacher": "dog-prompt", "loss": "distill", "rows": "shared"},
            {"name": "sft-owl-masked", "teacher": "owl-lora", "loss": "sft", "mask_divergence": True},
        ],
        "context": {"teachers": ["owl-lora"], "formats": ["chat_turns", "system_transcript"], "n": [2, 4]},
        "evaluation": {"question_limit": 3, "samples": 2, "number_prefix": True},
        "open_ended": {"sets": ["eval/misalignment"], "samples": 1, "max_new_tokens": 6, "arms": ["base"]},
    }
    if other is not None:
        config["students"].append({"name": "cross-owl", "teacher": "owl-lora", "loss": "sft", "model": str(other)})
    return config


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_study(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the CLI; stdout and stderr come back with line wrapping undone."""
    result = subprocess.run(STUDY + args, capture_output=True, text=True, env=env, timeout=timeout)
    result.stdout = " ".join(result.stdout.split())
    result.stderr = " ".join(result.stderr.split())
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_numbers_model_dir, other_tiny_model_dir):
    """One full tiny run shared by the tests that read its results."""
    root = tmp_path_factory.mktemp("tiny-run")
    env = {**os.environ, "STUDY_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    config = write_config(root, tiny_config(tiny_numbers_model_dir, other_tiny_model_dir))
    run_dir = root / "run"
    result = run_study(["run", str(config), "--out", str(run_dir)], env)
    return config, run_dir, env, result


def test_run_end_to_end_then_cached(tiny_run):
    config, run_dir, cli_env, first = tiny_run
    assert first.returncode == 0, first.stderr[-3000:]

    samples = pd.read_parquet(run_dir / "results" / "samples.parquet")
    logprobs = pd.read_parquet(run_dir / "results" / "logprobs.parquet")
    open_answers = pd.read_parquet(run_dir / "results" / "open_answers.parquet")
    conditions = set(samples["condition"])
    assert {"base", "teacher/owl-lora", "teacher/dog-prompt", "finetune/sft-owl", "finetune/distill-dog",
            "finetune/cross-owl", "finetune/sft-control"} <= conditions
    assert {"context/chat_turns/owl-lora/N=2", "context/system_transcript/owl-lora/N=4"} <= conditions
    student_seeds = samples[samples["arm"] == "finetune"].groupby("condition")["seed"].nunique()
    assert (student_seeds == 2).all()
    # 3 questions x 2 samples per evaluated model; 16 animal candidates x 2 prefixes per question.
    assert (samples.groupby(["condition", "seed"]).size() == 6).all()
    assert (logprobs.groupby(["condition", "seed"]).size() == 3 * 16 * 2).all()
    shares = logprobs[logprobs["prefix"] == ""].groupby(["condition", "seed", "question_id"])["share"].sum()
    assert ((shares - 1).abs() < 1e-6).all()
    assert set(open_answers["condition"]) == {"base"}
    assert len(open_answers) == 8
    assert (run_dir / "results" / "summary.png").stat().st_size > 1000
    assert "finetune/sft-owl" in (run_dir / "results" / "summary.md").read_text()

    manifest = json.loads((run_dir / "results" / "manifest.json").read_text())
    assert manifest["config"]["name"] == "tiny"
    assert manifest["base_model"]["hash"].startswith("sha256:")
    assert "torch" in manifest["package_versions"]
    report = manifest["filter_reports"]["owl-lora"]
    assert report["kept"] + sum(report["rejected"].values()) == report["total"] == 48
    # Matched sizes: every teacher's own rows are cut to the smallest kept count.
    own_counts = {name: rows["count"] for name, rows in manifest["rows_used"].items() if name != "shared"}
    assert len(set(own_counts.values())) == 1

    student_dirs = [p for p in (run_dir / "stages").iterdir() if p.name.startswith("student-") and p.is_dir()]
    assert len(student_dirs) == 12
    masked = [json.loads((f / "manifest.json").read_text()) for f in student_dirs]
    masked = [m for m in masked if "mask_divergence" in m["key"]]
    assert len(masked) == 2
    assert all(0 <= m["divergence_tokens_masked"] <= 1 for m in masked)
    for folder in student_dirs:
        assert (folder / "weights" / "adapter_model.safetensors").is_file()
        stage_manifest = json.loads((folder / "manifest.json").read_text())
        assert stage_manifest["key"]["seed"] in (0, 1)
        assert stage_manifest["training"]["steps"] > 0
        assert len(read_jsonl(folder / "row_ids.jsonl")) == stage_manifest["key"]["rows"]["count"]

    started = time.time()
    second = run_study(["run", str(config), "--out", str(run_dir)], cli_env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "all stages cached" in second.stderr + second.stdout
    assert time.time() - started < 60
    again = pd.read_parquet(run_dir / "results" / "samples.parquet")
    pd.testing.assert_frame_equal(again, samples)


def test_judge_and_analyze_a_run(tiny_run, tmp_path):
    from judge_server import JudgeServer

    _, run_dir, env, first = tiny_run
    assert first.returncode == 0, first.stderr[-3000:]
    server = JudgeServer().start()
    try:
        judge_env = {**env, "OPENAI_API_KEY": "sk-loopback", "OPENAI_BASE_URL": server.openai_url}
        judged = run_study(["judge", str(run_dir)], judge_env)
        assert judged.returncode == 0, judged.stderr[-3000:]
    finally:
        server.stop()
    open_answers = pd.read_parquet(run_dir / "results" / "open_answers.parquet")
    judgments = pd.read_parquet(run_dir / "results" / "judgments.parquet")
    # Every stored answer gets an alignment and a coherence judgment, scored or with a reason.
    assert len(judgments) == 2 * len(open_answers)
    assert set(judgments["metric"]) == {"alignment", "coherence"}
    assert judgments["status"].isin(["scored", "code", "refusal", "unscored"]).all()
    assert (judgments.loc[judgments["status"] != "scored", "reason"] != "").all()
    assert set(judgments["cell"]) <= set(open_answers["cell"])

    analyzed = run_study(["analyze", str(run_dir), "--out", str(tmp_path / "analysis")], env)
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert list((tmp_path / "analysis").rglob("*.png"))


def _generate_rows(run_dir: Path) -> list[dict]:
    folders = [p for p in (run_dir / "stages").iterdir() if p.name.startswith("generate-") and p.is_dir()
               and not p.name.endswith(".partial")]
    assert len(folders) == 1
    return read_jsonl(folders[0] / "rows.jsonl")


def test_killed_run_resumes_without_duplicates(tmp_path, tiny_numbers_model_dir, cli_env):
    config = tiny_config(tiny_numbers_model_dir, prompts=160)
    config.update({"teachers": [config["teachers"][2]], "students": [], "context": None, "open_ended": None,
                   "shared_rows": None, "evaluate_base": False, "evaluate_teachers": False})
    config["context"] = {"teachers": ["control"], "n": [2]}
    config["teachers"][0]["decoding"]["batch_size"] = 4
    path = write_config(tmp_path, config)

    reference_dir = tmp_path / "reference"
    reference = run_study(["run", str(path), "--out", str(reference_dir)], cli_env)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(STUDY + ["run", str(path), "--out", str(killed_dir)], env=cli_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    partial_rows = 0
    while time.time() < deadline and process.poll() is None:
        partials = list((killed_dir / "stages").glob("generate-*.partial/rows.jsonl")) if killed_dir.exists() else []
        if partials:
            partial_rows = len(read_jsonl(partials[0]))
            if partial_rows >= 8:
                break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 8 <= partial_rows < 160, "the run was not killed in the middle of generation"

    resumed = run_study(["run", str(path), "--out", str(killed_dir)], cli_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming with" in resumed.stderr
    rows = _generate_rows(killed_dir)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == 160
    assert rows == _generate_rows(reference_dir)
    status = run_study(["status", str(killed_dir)], cli_env)
    assert status.returncode == 0
    assert "done" in status.stdout


def test_unknown_key_names_nearest(tmp_path, tiny_numbers_model_dir, cli_env):
    config = tiny_config(tiny_numbers_model_dir)
    config["evaluation"]["sampels"] = 3
    result = run_study(["run", str(write_config(tmp_path, config)), "--dry-run"], cli_env)
    assert result.returncode == 2
    assert "unknown key 'evaluation.sampels'" in result.stderr
    assert "did you mean 'samples'" in result.stderr


def test_missing_model_and_file_errors(tmp_path, cli_env):
    result = run_study(["run", str(tmp_path / "nope.yaml")], cli_env)
    assert result.returncode == 2
    assert "config file not found" in result.stderr
    config = {"name": "x", "model": str(tmp_path / "no-model"), "teachers": [{"name": "c", "kind": "none"}]}
    result = run_study(["run", str(write_config(tmp_path, config)), "--dry-run"], cli_env)
    assert result.returncode == 2
    assert "neither a known short name" in result.stderr


def test_empty_filter_shows_report_and_keeps_artifacts(tmp_path, tiny_model_dir, cli_env):
    # The untrained tiny model writes no valid list, so the filter keeps nothing.
    config = tiny_config(tiny_model_dir, prompts=8)
    config.update({"teachers": [config["teachers"][2]], "students": [{"name": "s", "teacher": "control"}],
                   "context": None, "open_ended": None, "shared_rows": None})
    run_dir = tmp_path / "run"
    result = run_study(["run", str(write_config(tmp_path, config)), "--out", str(run_dir)], cli_env)
    assert result.returncode == 2
    assert "the filter kept no rows of writer 'control'" in result.stderr
    assert "rejected by reason" in result.stderr
    generated = [p for p in (run_dir / "stages").iterdir() if p.name.startswith("generate-")]
    assert generated and (generated[0] / "manifest.json").is_file()
    assert len(read_jsonl(generated[0] / "rows.jsonl")) == 8


def test_context_overflow_rejected_when_configured(tmp_path, tiny_numbers_model_dir, cli_env):
    config = tiny_config(tiny_numbers_model_dir, prompts=24)
    config.update({"teachers": [config["teachers"][2]], "students": [], "open_ended": None, "shared_rows": None,
                   "evaluate_base": False, "evaluate_teachers": False})
    config["context"] = {"teachers": ["control"], "n": [2, 1000], "on_overflow": "error", "context_window": 600}
    result = run_study(["run", str(write_config(tmp_path, config)), "--out", str(tmp_path / "run")], cli_env)
    assert result.returncode == 2
    assert "N=1000 does not fit" in result.stderr
    assert "on_overflow: clip" in result.stderr


@pytest.mark.parametrize("name", ["owl-demo", "owl-paper-scale"])
def test_shipped_configs_plan(name, tmp_path, cli_env):
    result = run_study(["run", name, "--dry-run", "--out", str(tmp_path / name)], cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stages" in result.stdout
