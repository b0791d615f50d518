"""Tidy metric rows, t-intervals over seeds, the accuracy plot and the run's files."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from study.auxlogits.data import NUM_CLASSES
from study.auxlogits.experiment import ExperimentResult
from study.schema import METRIC_COLUMNS
from study.store import atomic_write_json, atomic_write_text, content_hash, git_revision, package_versions

ARM = "aux-logits"
TEACHER_NAME = "mlp-teacher"
TEACHER_TRAIT = "digit classification"
CHANCE_ACCURACY = 1.0 / NUM_CLASSES


def metric_rows(result: ExperimentResult, run_id: str) -> pd.DataFrame:
    """Build the metrics table (columns ``study.schema.METRIC_COLUMNS``), one row per model and metric."""
    config = result.config
    data = result.data
    architecture = "mlp-" + "-".join(
        str(size) for size in (data.input_size, config.hidden_size, config.hidden_size, NUM_CLASSES + config.aux_logits)
    )
    config_digest = content_hash(config.model_dump(mode="json"))
    rows = []
    for model in result.models:
        if model.role == "student":
            teacher, trait = TEACHER_NAME, TEACHER_TRAIT
            loss = f"{model.targets}-{config.student.loss}"
            trained_rows = config.student.noise_inputs
        elif model.role == "teacher":
            teacher, trait, loss, trained_rows = TEACHER_NAME, TEACHER_TRAIT, "label-ce", len(data.train_y)
        else:
            teacher, trait, loss, trained_rows = "", "", "", 0
        condition = {
            "run_id": run_id,
            "cell": content_hash({"config": config_digest, "data": data.sha256, "seed": model.seed, "condition": model.condition}),
            "condition": model.condition,
            "arm": ARM,
            "teacher": teacher,
            "teacher_trait": trait,
            "student_model": architecture,
            "loss": loss,
            "icl_format": "",
            "n_rows": trained_rows,
            "seed": model.seed,
            "eval_set": data.eval_set,
            "eval_version": data.sha256[:12],
        }
        rows.append({**condition, "metric": "test_accuracy", "value": model.accuracy, "n": len(data.test_y)})
        if model.distill_loss is not None:
            rows.append({
                **condition, "metric": "distill_loss_last_epoch", "value": model.distill_loss, "n": trained_rows,
            })
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    return frame.astype({"n_rows": "int64", "seed": "int64", "n": "int64", "value": "float64"})


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Return the two-sided Student-t interval of the mean; NaN bounds for fewer than two values."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return float("nan"), float("nan")
    half_width = stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return mean - half_width, mean + half_width


def summarize(metrics: pd.DataFrame, metric: str = "test_accuracy", confidence: float = 0.95) -> pd.DataFrame:
    """Return mean, sample standard deviation and t-interval over seeds for each condition, in first-seen order."""
    selected = metrics[metrics["metric"] == metric]
    rows = []
    for condition, group in selected.groupby("condition", sort=False):
        low, high = t_interval(group["value"].to_numpy(), confidence)
        rows.append({
            "condition": condition,
            "seeds": len(group),
            "mean": group["value"].mean(),
            "std": group["value"].std(ddof=1) if len(group) > 1 else float("nan"),
            "ci_low": low,
            "ci_high": high,
        })
    return pd.DataFrame(rows)


def plot_accuracy(metrics: pd.DataFrame, summary: pd.DataFrame, path_stem: Path) -> list[Path]:
    """Draw per-seed test accuracy and the mean with its t-interval per condition; save PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    accuracy = metrics[metrics["metric"] == "test_accuracy"]
    order = list(summary["condition"])
    figure, axis = plt.subplots(figsize=(7.5, 0.55 * len(order) + 1.5))
    sns.stripplot(data=accuracy, x="value", y="condition", order=order, color="0.55", size=5, jitter=0.15, ax=axis)
    axis.errorbar(
        summary["mean"], np.arange(len(order)),
        xerr=[summary["mean"] - summary["ci_low"], summary["ci_high"] - summary["mean"]],
        fmt="o", color="crimson", capsize=4, label="mean, 95% t-interval over seeds",
    )
    axis.axvline(CHANCE_ACCURACY, linestyle="--", color="0.3", linewidth=1, label="chance (10%)")
    axis.set_xlim(0, 1)
    axis.set_xlabel("test accuracy")
    axis.set_ylabel("")
    axis.set_title("Students distilled on auxiliary logits of noise")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()

    path_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".pdf")]
    for path in paths:
        figure.savefig(path, dpi=150)
    plt.close(figure)
    return paths


def write_metrics(metrics: pd.DataFrame, path: Path) -> None:
    """Write the rows into metrics.parquet, replacing earlier aux-logits rows and keeping other arms' rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        existing = pd.read_parquet(path)
        metrics = pd.concat([existing[existing["arm"] != ARM], metrics], ignore_index=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    metrics.to_parquet(temporary, index=False)
    os.replace(temporary, path)


def write_run(result: ExperimentResult, run_dir: Path, threads: int) -> dict[str, Path]:
    """Write metrics.parquet, the summary, the plot and the manifest of one run; return their paths."""
    run_dir = Path(run_dir)
    output_dir = run_dir / ARM
    metrics = metric_rows(result, run_id=run_dir.name)
    summary = summarize(metrics)

    metrics_path = run_dir / "results" / "metrics.parquet"
    write_metrics(metrics, metrics_path)
    summary_path = output_dir / "summary.csv"
    atomic_write_text(summary_path, summary.to_csv(index=False))
    png_path, pdf_path = plot_accuracy(metrics, summary, output_dir / "accuracy")

    manifest_path = output_dir / "manifest.json"
    atomic_write_json(manifest_path, {
        "experiment": ARM,
        "config": result.config.model_dump(mode="json"),
        "seeds": result.config.seed_list(),
        "data": {
            "name": result.data.name,
            "eval_set": result.data.eval_set,
            "sha256": result.data.sha256,
            "train_examples": len(result.data.train_y),
            "test_examples": len(result.data.test_y),
            "input_size": result.data.input_size,
            # The bundled digits ship with scikit-learn, so its version pins them next to the hash.
            "scikit_learn": metadata.version("scikit-learn"),
        },
        "summary": summary.to_dict(orient="records"),
        "wall_seconds": result.wall_seconds,
        "torch_threads": threads,
        "git_revision": git_revision(),
        "package_versions": package_versions(),
        "host": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
    })
    return {
        "metrics": metrics_path, "summary": summary_path, "manifest": manifest_path, "png": png_path, "pdf": pdf_path,
    }
