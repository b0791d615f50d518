"""Judge agreement (Spearman, Cohen's kappa), human labels and the misaligned rate."""

import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from study.errors import StudyError
from study.judge.config import MisalignedSettings
from study.judge.metrics import agreement, answer_decisions, misaligned_rate, read_human_labels
from study.schema import CONDITION_COLUMNS, JUDGMENT_COLUMNS


def judgment_rows(judge, alignment, coherence, cell="c0"):
    """Build judgment rows: alignment and coherence values are numbers or 'code'/'refusal'/None."""
    rows = []
    for index, (a, c) in enumerate(zip(alignment, coherence)):
        for metric, value in (("alignment", a), ("coherence", c)):
            row = {column: "" for column in CONDITION_COLUMNS}
            row.update(run_id="r", cell=cell, n_rows=0, seed=0, eval_version=1, eval_set="misalignment")
            if value is None:
                status, score, reason = "unscored", None, "error: x"
            elif isinstance(value, str):
                status, score, reason = value, None, ""
            else:
                status, score, reason = "scored", float(value), ""
            row.update(question_id=f"q{index}", sample_index=0, judge=judge, metric=metric, status=status,
                       score=score, reason=reason, numeric_mass=None, template_id="t", template_version=1)
            rows.append(row)
    return pd.DataFrame(rows, columns=list(JUDGMENT_COLUMNS))


def test_misaligned_rate_counts():
    frame = judgment_rows("j", [10, 10, 90, "code", None, 30, 31], [80, 20, 95, 90, 90, 50, 60])
    rates = misaligned_rate(frame, MisalignedSettings())
    row = rates.iloc[0]
    assert row["n_answers"] == 7
    assert row["n_misaligned"] == 2
    assert row["n_counted"] == 4
    assert row["misaligned_rate"] == pytest.approx(0.5)
    assert row["n_code"] == 1
    assert row["n_unscored"] == 1
    assert row["n_incoherent"] == 1


def test_misaligned_rate_operators_configurable():
    frame = judgment_rows("j", [30, 30], [50, 49])
    strict = MisalignedSettings(alignment_operator="<", coherence_operator=">")
    row = misaligned_rate(frame, strict).iloc[0]
    assert row["n_misaligned"] == 0
    assert row["n_counted"] == 0
    assert row["alignment_operator"] == "<"
    default = misaligned_rate(frame, MisalignedSettings()).iloc[0]
    assert default["n_misaligned"] == 1


def test_no_coherence_filter():
    frame = judgment_rows("j", [10, 90], [5, 5])
    row = misaligned_rate(frame, MisalignedSettings(coherence_threshold=None)).iloc[0]
    assert row["misaligned_rate"] == pytest.approx(0.5)


def test_unscored_coherence_excluded():
    frame = judgment_rows("j", [10], [None])
    decided = answer_decisions(frame, MisalignedSettings())
    assert decided["decision"].tolist() == ["coherence_unscored"]


def test_agreement_identical_judges():
    a = judgment_rows("a", [10, 20, 80, 90], [90, 90, 90, 90])
    b = judgment_rows("b", [15, 25, 70, 95], [90, 90, 90, 90])
    report = agreement(a, b, MisalignedSettings())
    assert report["metrics"]["alignment"]["spearman"] == pytest.approx(1.0)
    assert report["metrics"]["alignment"]["n"] == 4
    assert report["decision"]["kappa"] == pytest.approx(1.0)
    assert report["decision"]["n"] == 4


def test_agreement_opposed_judges():
    a = judgment_rows("a", [10, 20, 80, 90], [90] * 4)
    b = judgment_rows("b", [90, 80, 20, 10], [90] * 4)
    report = agreement(a, b, MisalignedSettings())
    assert report["metrics"]["alignment"]["spearman"] == pytest.approx(-1.0)
    assert report["decision"]["kappa"] == pytest.approx(-1.0)


def test_agreement_constant_is_nan():
    a = judgment_rows("a", [90, 90, 90], [90] * 3)
    b = judgment_rows("b", [80, 85, 90], [90] * 3)
    report = agreement(a, b, MisalignedSettings())
    assert math.isnan(report["metrics"]["alignment"]["spearman"])
    assert math.isnan(report["decision"]["kappa"])


def test_agreement_skips_unscored_pairs():
    a = judgment_rows("a", [10, None, 80, 90], [90] * 4)
    b = judgment_rows("b", [15, 25, "refusal", 95], [90] * 4)
    report = agreement(a, b, MisalignedSettings())
    assert report["metrics"]["alignment"]["n"] == 2
    assert report["decision"]["n"] == 2


def write_labels(path, rows):
    pd.DataFrame(rows, columns=["cell", "question_id", "sample_index", "metric", "score"]).to_csv(path, index=False)


def test_human_labels_read(tmp_path):
    path = tmp_path / "labels.csv"
    write_labels(path, [["c0", "q0", 0, "alignment", "12"], ["c0", "q1", 0, "alignment", "CODE"],
                        ["c0", "q2", 0, "alignment", ""]])
    labels = read_human_labels(path)
    assert labels["status"].tolist() == ["scored", "code", "unscored"]
    assert labels["score"].iloc[0] == 12
    assert (labels["judge"] == "human").all()


@pytest.mark.parametrize("score,message", [("high", "not a number"), ("120", "outside 0-100")])
def test_human_labels_invalid_score(tmp_path, score, message):
    path = tmp_path / "labels.csv"
    write_labels(path, [["c0", "q0", 0, "alignment", score]])
    with pytest.raises(StudyError, match=message):
        read_human_labels(path)


def test_human_labels_missing_column(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"cell": ["c0"], "score": [1]}).to_csv(path, index=False)
    with pytest.raises(StudyError, match="question_id"):
        read_human_labels(path)


def test_agreement_cli_judges_and_human(tmp_path):
    from study.cli import app

    frame = pd.concat([judgment_rows("a", [10, 20, 80, 90], [90] * 4), judgment_rows("b", [15, 25, 70, 95], [90] * 4)])
    (tmp_path / "results").mkdir()
    frame.to_parquet(tmp_path / "results" / "judgments.parquet", index=False)
    runner = CliRunner()
    result = runner.invoke(app, ["judge-agreement", str(tmp_path), "--judge", "a", "--judge", "b"])
    assert result.exit_code == 0, result.output
    assert "Cohen" in result.output
    report = json.loads((tmp_path / "results" / "judge_agreement_a_vs_b.json").read_text())
    assert report["decision"]["kappa"] == pytest.approx(1.0)

    labels = tmp_path / "labels.csv"
    write_labels(labels, [["c0", f"q{i}", 0, "alignment", value] for i, value in enumerate(["5", "10", "90", "85"])])
    result = runner.invoke(app, ["judge-agreement", str(tmp_path), "--judge", "a", "--human", str(labels)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "results" / "judge_agreement_a_vs_human.json").read_text())
    assert report["metrics"]["alignment"]["n"] == 4
    assert report["decision"]["n"] == 4
    assert report["decision"]["kappa"] == pytest.approx(1.0)


def test_agreement_cli_unknown_judge(tmp_path):
    from study.cli import app

    (tmp_path / "results").mkdir()
    judgment_rows("a", [10], [90]).to_parquet(tmp_path / "results" / "judgments.parquet", index=False)
    result = CliRunner().invoke(app, ["judge-agreement", str(tmp_path), "--judge", "a", "--judge", "zzz"])
    assert isinstance(result.exception, StudyError)
    assert "zzz" in str(result.exception)
