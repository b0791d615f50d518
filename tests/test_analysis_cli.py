"""The ``study analyze`` and ``study paper`` commands, run as a user runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from analysis.synthetic import SyntheticSpec, make_results, write_run

SPEC = SyntheticSpec(traits=("owl", "dolphin"), n_rows_levels=(16, 64, 256), seeds=(0, 1, 2), n_questions=3, n_samples=8)


def _study(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # A wide terminal keeps rich from wrapping the comparison table mid-word.
    environment = os.environ | {"COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "study.cli", *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=120,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "run"
    write_run(path, make_results(SPEC))
    return path


def test_analyze_writes_outputs_and_prints_comparisons(run_dir, tmp_path):
    out = tmp_path / "out"
    completed = _study("analyze", str(run_dir), "--out", str(out), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "finetune vs context" in completed.stdout
    assert "paired t, n=3" in completed.stdout
    for name in ("trait_rates", "dose_response", "misalignment", "trait_heatmap"):
        image = matplotlib.image.imread(out / "figures" / f"{name}.png")
        assert image.shape[0] > 200
        assert (out / "figures" / f"{name}.pdf").stat().st_size > 1000
    assert (out / "tables" / "key_comparisons.tex").exists()
    assert r"\newcommand{\OwlFinetuneRate}" in (out / "macros.tex").read_text()


def test_analyze_defaults_to_run_analysis_folder(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    completed = _study("analyze", str(copy), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert (copy / "analysis" / "figures" / "trait_rates.png").exists()


def test_analyze_missing_run_dir_names_value(tmp_path):
    completed = _study("analyze", str(tmp_path / "absent"), cwd=tmp_path)
    assert completed.returncode == 2
    assert "absent not found" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_paper_without_latex_says_so(run_dir, tmp_path):
    from analysis.paper import default_paper_dir, find_engine

    paper = tmp_path / "paper"
    shutil.copytree(default_paper_dir(), paper, ignore=shutil.ignore_patterns("generated"))
    completed = _study("paper", str(run_dir), "--paper-dir", str(paper), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert (paper / "generated" / "macros.tex").exists()
    assert (paper / "generated" / "figures" / "dose_response.pdf").exists()
    if find_engine() is None:
        assert "No LaTeX engine found" in completed.stdout
    else:
        assert (paper / "main.pdf").exists()


def test_analysis_imports_no_model_or_api_package():
    code = (
        "import sys, analysis.cli, analysis.report, analysis.paper, analysis.synthetic\n"
        "print(sorted(name for name in ('torch', 'transformers', 'openai', 'anthropic') if name in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.stdout.strip() == "[]", completed.stderr
