"""Assemble the tidy result tables of a run and print its summary.

Everything here reads stored eval rows only: no model is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from analysis.stats import t_interval
from study.schema import LOGPROB_COLUMNS, OPEN_ANSWER_COLUMNS, SAMPLE_COLUMNS
from study.store import Stage, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)

ARM_ORDER = {"base": 0, "teacher": 1, "finetune": 2, "context": 3}


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(temporary, index=False)
    os.replace(temporary, path)


def _frame(rows: list[dict], columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype="object")
    return frame[list(columns)]


def collect(stages: list[Stage], results_dir: Path, traits: list[str]) -> dict[str, pd.DataFrame]:
    """Write samples, logprobs and open_answers Parquet tables from eval stages."""
    samples, logprobs, open_answers = [], [], []
    default_target = traits[0] if traits else ""
    for stage in {stage.name: stage for stage in stages}.values():
        if not stage.complete:
            continue
        for row in read_jsonl(stage.path / "samples.jsonl"):
            target = row.get("teacher_trait") or default_target
            row["target"] = target
            row["mentions_target"] = target in row["mentions"]
            samples.append(row)
        for row in read_jsonl(stage.path / "logprobs.jsonl"):
            target = row.get("teacher_trait") or default_target
            row["target"] = target
            row["is_target"] = row["candidate"] == target
            logprobs.append(row)
        open_answers += read_jsonl(stage.path / "open_answers.jsonl")

    tables = {
        "samples": _frame(samples, SAMPLE_COLUMNS),
        "logprobs": _frame(logprobs, LOGPROB_COLUMNS),
        "open_answers": _frame(open_answers, OPEN_ANSWER_COLUMNS),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        if name == "open_answers" and frame.empty:
            continue
        _write_parquet(frame, results_dir / f"{name}.parquet")
    return tables


def seed_measures(samples: pd.DataFrame, logprobs: pd.DataFrame, traits: list[str]) -> pd.DataFrame:
    """Return one row per condition x seed x trait: sampled rate, mean P, mean log P and share."""
    keys = ["condition", "arm", "n_rows", "seed"]
    rows = []
    plain = logprobs[logprobs["prefix"] == ""] if not logprobs.empty else logprobs
    for trait in traits:
        if not plain.empty:
            chosen = plain[plain["candidate"] == trait]
            measured = chosen.groupby(keys, dropna=False).agg(
                prob=("prob", "mean"), logprob=("logprob", "mean"), share=("share", "mean")).reset_index()
        else:
            measured = pd.DataFrame(columns=keys + ["prob", "logprob", "share"])
        if not samples.empty:
            hits = samples.assign(hit=samples["mentions"].map(lambda named, t=trait: t in list(named)))
            rates = hits.groupby(keys, dropna=False).agg(rate=("hit", "mean"), samples=("hit", "size")).reset_index()
            measured = measured.merge(rates, on=keys, how="outer")
        measured["trait"] = trait
        rows.append(measured)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def summarize(seed_frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% t-interval across seeds of each measure, per condition and trait."""
    if seed_frame.empty:
        return pd.DataFrame()
    records = []
    for (condition, arm, n_rows, trait), frame in seed_frame.groupby(["condition", "arm", "n_rows", "trait"], dropna=False):
        record = {"condition": condition, "arm": arm, "n_rows": n_rows, "trait": trait, "n_seeds": len(frame)}
        for measure in ("rate", "prob", "logprob", "share"):
            if measure in frame:
                mean, low, high = t_interval(frame[measure].dropna().to_numpy())
                if measure != "logprob" and not pd.isna(low):
                    # A t-interval over few seeds can leave [0, 1]; a probability cannot.
                    low, high = max(0.0, low), min(1.0, high)
                record.update({measure: mean, f"{measure}_low": low, f"{measure}_high": high})
        records.append(record)
    summary = pd.DataFrame(records)
    if summary.empty:
        return summary
    summary["arm_order"] = summary["arm"].map(ARM_ORDER).fillna(9)
    return summary.sort_values(["arm_order", "condition", "n_rows", "trait"]).drop(columns="arm_order")


def _interval(value: float, low: float, high: float, digits: int) -> str:
    if pd.isna(value):
        return "-"
    if pd.isna(low):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def summary_markdown(summary: pd.DataFrame) -> str:
    lines = [
        "| condition | trait | seeds | sampled rate | mean P(trait) | share of candidate mass | mean log P |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary.itertuples():
        lines.append(
            f"| {row.condition} | {row.trait} | {row.n_seeds} | {_interval(row.rate, row.rate_low, row.rate_high, 3)} "
            f"| {_interval(row.prob, row.prob_low, row.prob_high, 4)} "
            f"| {_interval(row.share, row.share_low, row.share_high, 4)} "
            f"| {_interval(row.logprob, row.logprob_low, row.logprob_high, 3)} |"
        )
    return "\n".join(lines) + "\n"


def print_summary(summary: pd.DataFrame, console) -> None:
    from rich.table import Table

    table = Table(title="Trait measures per condition (mean [95% t-interval across seeds])")
    for column in ("condition", "trait", "seeds", "sampled rate", "mean P(trait)", "share", "mean log P"):
        table.add_column(column, overflow="fold")
    for row in summary.itertuples():
        table.add_row(
            row.condition, row.trait, str(row.n_seeds),
            _interval(row.rate, row.rate_low, row.rate_high, 3),
            _interval(row.prob, row.prob_low, row.prob_high, 4),
            _interval(row.share, row.share_low, row.share_high, 4),
            _interval(row.logprob, row.logprob_low, row.logprob_high, 3),
        )
    console.print(table)


def plot_summary(summary: pd.DataFrame, path: Path) -> Path:
    """Plot the target share per condition and trait with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    conditions = list(dict.fromkeys(summary["condition"]))
    traits = list(dict.fromkeys(summary["trait"]))
    figure, axis = plt.subplots(figsize=(max(6, 0.55 * len(conditions) * len(traits)), 4.8))
    sns.barplot(data=summary, x="condition", y="share", hue="trait", order=conditions, hue_order=traits,
                errorbar=None, ax=axis)
    width = 0.8 / max(1, len(traits))
    for trait_index, trait in enumerate(traits):
        for condition_index, condition in enumerate(conditions):
            match = summary[(summary["condition"] == condition) & (summary["trait"] == trait)]
            if match.empty or pd.isna(match["share_low"].iloc[0]):
                continue
            x = condition_index - 0.4 + width * (trait_index + 0.5)
            mean = match["share"].iloc[0]
            axis.errorbar(x, mean, yerr=[[mean - match["share_low"].iloc[0]], [match["share_high"].iloc[0] - mean]],
                          fmt="none", ecolor="black", capsize=3, linewidth=1)
    axis.set_yscale("log")
    axis.set_ylabel("share of candidate probability mass (log scale)")
    axis.set_xlabel("")
    axis.set_title("Trait answer share per condition (95% t-interval across seeds)")
    axis.tick_params(axis="x", rotation=60)
    for label in axis.get_xticklabels():
        label.set_horizontalalignment("right")
    figure.tight_layout()
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    figure.savefig(temporary, dpi=130, format=path.suffix.lstrip("."))
    plt.close(figure)
    os.replace(temporary, path)
    return path


def write_summary(stages: list[Stage], results_dir: Path, traits: list[str]) -> pd.DataFrame:
    tables = collect(stages, results_dir, traits)
    seeds = seed_measures(tables["samples"], tables["logprobs"], traits)
    summary = summarize(seeds)
    if summary.empty:
        return summary
    _write_parquet(seeds, results_dir / "seed_measures.parquet")
    atomic_write_text(results_dir / "summary.md", summary_markdown(summary))
    plot_summary(summary, results_dir / "summary.png")
    return summary
