"""Loading, tables, macros and figures of the analysis package on synthetic runs."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from analysis import macros, tables
from analysis.load import load_results
from analysis.report import analyze_run
from analysis.summary import analyze
from analysis.synthetic import SyntheticSpec, make_results, write_run
from study.errors import StudyError

SNAPSHOTS = Path(__file__).parent / "snapshots"
# Snapshots store numbers at 3 decimals; a different BLAS or pandas may move the last digit.
SNAPSHOT_TOLERANCE = 2e-3
NUMBER = re.compile(r"-?\d+\.\d+")

SMALL = SyntheticSpec(traits=("owl", "eagle"), n_rows_levels=(16, 64, 256), seeds=(0, 1, 2), n_questions=3, n_samples=8)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    write_run(run_dir, make_results(SMALL))
    return run_dir


def _assert_matches_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if os.environ.get("UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"snapshot {path} was missing and has been written; rerun the test")
        return
    expected = path.read_text()
    # Text outside numbers must match exactly, numbers within the tolerance.
    assert NUMBER.sub("#", text) == NUMBER.sub("#", expected)
    actual_numbers = [float(value) for value in NUMBER.findall(text)]
    expected_numbers = [float(value) for value in NUMBER.findall(expected)]
    assert actual_numbers == pytest.approx(expected_numbers, abs=SNAPSHOT_TOLERANCE)


# ---------------------------------------------------------------------------
# Loading


def test_load_suite_of_runs(tmp_path):
    for seed in (0, 1):
        spec = SyntheticSpec(traits=("owl",), n_rows_levels=(16,), seeds=(seed,), n_questions=2, n_samples=3,
                             run_id=f"run{seed}", random_seed=seed)
        write_run(tmp_path / "suite" / f"run{seed}", make_results(spec))
    results = load_results(tmp_path / "suite")
    assert [path.name for path in results.run_dirs] == ["run0", "run1"]
    assert sorted(results.samples["seed"].unique().tolist()) == [0, 1]
    assert results.missing_tables == []


def test_load_missing_table_listed(tmp_path):
    tables_ = make_results(SyntheticSpec(traits=("owl",), n_rows_levels=(16,), seeds=(0,), n_questions=2, n_samples=3))
    del tables_["judgments"]
    write_run(tmp_path / "run", tables_)
    results = load_results(tmp_path / "run")
    assert results.missing_tables == ["judgments"]
    assert results.judgments.empty
    assert "metric" in results.judgments.columns


def test_load_rejects_missing_column(tmp_path):
    results_dir = tmp_path / "run" / "results"
    results_dir.mkdir(parents=True)
    pd.DataFrame({"arm": ["base"], "seed": [0]}).to_parquet(results_dir / "samples.parquet")
    with pytest.raises(StudyError, match="lacks column.*mentions_target"):
        load_results(tmp_path / "run")


def test_load_rejects_folder_without_results(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="no results/ folder found"):
        load_results(tmp_path / "empty")
    with pytest.raises(StudyError, match="not found"):
        load_results(tmp_path / "absent")


# ---------------------------------------------------------------------------
# Tables and macros


def test_tables_match_snapshots(small_run):
    analysis = analyze(load_results(small_run))
    built = tables.build_tables(analysis)
    for name in ("trait_rates", "key_comparisons", "dose_response", "fisher", "misalignment", "metrics"):
        caption = tables.TABLES[name][1]
        _assert_matches_snapshot(f"analysis_{name}.md", tables.to_markdown(built[name], caption))
    _assert_matches_snapshot("analysis_key_comparisons.tex", tables.to_latex(built["key_comparisons"], "caption", "tab:x"))


def test_markdown_and_latex_share_rows():
    rows = [tables.TableRow("finetune/sft/owl, N=64", "owl rate", 0.41234, 0.2, 0.6, 3, 0.0004, "1")]
    markdown = tables.to_markdown(rows)
    latex = tables.to_latex(rows)
    assert "| finetune/sft/owl, N=64 | owl rate | 0.412 | [0.200, 0.600] | 3 | <0.001 | 1 |" in markdown
    assert r"finetune/sft/owl, N=64 & owl rate & 0.412 & [0.200, 0.600] & 3 & \textless{}0.001 & 1 \\" in latex
    assert r"\toprule" in latex
    assert r"\bottomrule" in latex


def test_latex_escapes_specials():
    rows = [tables.TableRow("a_b & c", "50% of #1", 1.0)]
    latex = tables.to_latex(rows)
    assert r"a\_b \& c & 50\% of \#1" in latex


def test_macro_names_are_sanitized():
    assert macros.macro_name("owl", "finetune", "rate") == "OwlFinetuneRate"
    assert macros.macro_name("aux-logits", "n2", "rate") == "AuxLogitsNTwoRate"
    assert macros.macro_name("snow leopard", "context") == "SnowLeopardContext"
    with pytest.raises(ValueError):
        macros.macro_name("--", "")


def test_macros_cover_traits_and_headline(small_run):
    analysis = analyze(load_results(small_run))
    built = macros.build_macros(analysis)
    for name in ("OwlFinetuneRate", "OwlContextRate", "OwlBaseRate", "EagleFinetuneMinusContext",
                 "OwlFinetuneMinusContextP", "HeadlineTrait", "HeadlineFinetuneRate", "NumSeeds", "MaxRows"):
        assert name in built, name
    assert all(re.fullmatch(r"[A-Za-z]+", name) for name in built)
    assert built["NumSeeds"] == "3"
    assert built["MaxRows"] == "256"
    assert built["OwlFinetuneRate"].endswith(r"\%")
    text = macros.to_latex(built)
    assert r"\newcommand{\OwlFinetuneRate}{" in text


def test_paper_cites_only_defined_macros(small_run, tmp_path):
    # Without a LaTeX engine here, this checks what a build needs: every cited macro and input exists.
    from analysis import paper

    paper_dir = paper.default_paper_dir()
    copy = tmp_path / "paper"
    copy.mkdir()
    for source in [paper_dir / "main.tex", *sorted((paper_dir / "sections").glob("*.tex"))]:
        target = copy / source.relative_to(paper_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text())
    paper.write_paper_inputs(analyze(load_results(small_run)), copy)
    defined = set(re.findall(r"\\newcommand\{\\(\w+)\}", (copy / "generated" / "macros.tex").read_text()))
    defined |= set(re.findall(r"\\newcommand\{\\(\w+)\}", (copy / "main.tex").read_text()))
    text = "\n".join(path.read_text() for path in copy.rglob("*.tex") if "generated" not in path.parts)
    text = re.sub(r"(?<!\\)%.*", "", text)
    cited = set(re.findall(r"\\((?:Headline|Num|Max|Misalign)\w*)", text))
    assert cited <= defined, cited - defined
    for target in re.findall(r"\\input\{([^}]+)\}", text):
        path = copy / target
        assert path.exists() or path.with_suffix(".tex").exists(), target


# ---------------------------------------------------------------------------
# Figures with gaps in the results


def _assert_png(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200, (path, image.shape)
    assert image.shape[1] > 200, (path, image.shape)


def test_figures_survive_gaps(tmp_path, caplog):
    """Missing cells, a single seed, an empty arm and a missing table give warnings, not errors."""
    spec = SyntheticSpec(
        traits=("owl", "eagle"), n_rows_levels=(16, 64), seeds=(0,), n_questions=2, n_samples=5,
        arms=("base", "teacher", "finetune"), drop_cells=(("finetune", "eagle", 64),),
    )
    tables_ = make_results(spec)
    del tables_["judgments"]
    write_run(tmp_path / "run", tables_)
    with caplog.at_level(logging.WARNING, logger="analysis"):
        report = analyze_run(tmp_path / "run", tmp_path / "out")
    warnings = "\n".join(report.analysis.warnings)
    assert "arm 'context' has no rows" in warnings
    assert "single seed" in warnings
    assert "judgments.parquet is missing" in warnings
    assert "figure misalignment skipped" in caplog.text
    names = sorted(path.name for path in report.figures)
    assert names == sorted(f"{name}.{suffix}" for name in ("trait_rates", "dose_response", "trait_heatmap")
                           for suffix in ("png", "pdf"))
    for path in report.figures:
        if path.suffix == ".png":
            _assert_png(path)
    assert (tmp_path / "out" / "macros.tex").read_text().count(r"\HeadlineFinetuneRate}{n/a}") == 1


def test_missing_cells_between_arms_warned(tmp_path):
    spec = SyntheticSpec(traits=("owl",), n_rows_levels=(16, 64), seeds=(0, 1), n_questions=2, n_samples=5,
                         drop_cells=(("context", "owl", 64),))
    write_run(tmp_path / "run", make_results(spec))
    report = analyze_run(tmp_path / "run", tmp_path / "out")
    assert any("arm 'context' lacks cells" in warning and "owl N=64" in warning for warning in report.analysis.warnings)
    for path in report.figures:
        if path.suffix == ".png":
            _assert_png(path)
    assert len(report.figures) == 8


def test_full_report_writes_every_output(small_run, tmp_path):
    report = analyze_run(small_run, tmp_path / "out")
    assert report.analysis.warnings == []
    assert {path.stem for path in report.figures} == {"trait_rates", "dose_response", "misalignment", "trait_heatmap"}
    for path in report.figures:
        assert path.stat().st_size > 1000
        if path.suffix == ".png":
            _assert_png(path)
    rows = pd.read_csv(tmp_path / "out" / "tables" / "rows.csv")
    assert set(rows["table"]) == set(tables.TABLES)
