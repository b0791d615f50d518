"""Figures of an analysis, each written as PNG and PDF."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only; an interactive backend would need a display.

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis import palette
from analysis.summary import Analysis

logger = logging.getLogger(__name__)

# A scatter of every judged answer is slow to draw and unreadable beyond a few thousand points.
SCATTER_MAX_POINTS_PER_ARM = 3000
DPI = 150


def _save(figure: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in ("png", "pdf"):
        path = out_dir / f"{name}.{suffix}"
        figure.savefig(path, dpi=DPI, bbox_inches="tight")
        paths.append(path)
    plt.close(figure)
    return paths


def _bar_label(arm: str, teacher_trait: str, recipe: str) -> str:
    if arm == "base":
        return "base"
    kind = "control teacher" if teacher_trait == "" else "trait teacher"
    if arm == "teacher":
        return "teacher"
    return f"{arm} ({recipe}), {kind}" if recipe else f"{arm}, {kind}"


def trait_rate_bars(analysis: Analysis, out_dir: Path) -> list[Path]:
    """Bar chart of the trait rate per target trait and condition, at each arm's largest N."""
    summary = analysis.rate_summary
    if summary.empty:
        return []
    frame = summary.copy()
    frame["recipe"] = frame["loss"].where(frame["loss"] != "", frame["icl_format"])
    frame = frame[(frame["teacher_trait"] == frame["target"]) | (frame["teacher_trait"] == "")]
    # The largest N per arm is where the trait gap is widest, so it stands for the arm here.
    largest = frame.groupby(["arm", "recipe"])["n_rows"].transform("max")
    frame = frame[frame["n_rows"] == largest]
    frame["label"] = [_bar_label(a, t, r) for a, t, r in zip(frame["arm"], frame["teacher_trait"], frame["recipe"])]
    # Conditions that share a label (two teachers, a cross-model student) keep their own name.
    shared = frame.duplicated(["label", "target"], keep=False)
    if "condition" in frame.columns:
        frame.loc[shared, "label"] = frame.loc[shared, "condition"]
    frame["control"] = (frame["teacher_trait"] == "") & frame["arm"].isin(["finetune", "context"])
    frame = frame.sort_values(["arm", "control", "recipe"], key=lambda column: column.map(palette.arm_sort_key) if column.name == "arm" else column)
    labels = list(dict.fromkeys(frame["label"]))
    targets = sorted(frame["target"].unique())

    sns.set_theme(style="whitegrid", context="paper")
    figure, axis = plt.subplots(figsize=(max(4.0, 1.2 * len(targets) * max(1, len(labels)) / 3 + 2), 3.4))
    width = 0.8 / max(1, len(labels))
    for position, label in enumerate(labels):
        rows = frame[frame["label"] == label].set_index("target").reindex(targets)
        x = np.arange(len(targets)) + (position - (len(labels) - 1) / 2) * width
        first = frame[frame["label"] == label].iloc[0]
        color = palette.arm_color(first["arm"], bool(first["control"]))
        means = rows["mean"].to_numpy(dtype=float)
        axis.bar(x, means, width=width, color=color, label=label, edgecolor="white", linewidth=0.5)
        low = rows["low"].to_numpy(dtype=float)
        high = rows["high"].to_numpy(dtype=float)
        has_interval = ~np.isnan(low)
        if has_interval.any():
            axis.errorbar(
                x[has_interval], means[has_interval],
                yerr=[means[has_interval] - low[has_interval], high[has_interval] - means[has_interval]],
                fmt="none", ecolor="black", elinewidth=0.8, capsize=2,
            )
    axis.set_xticks(np.arange(len(targets)))
    axis.set_xticklabels(targets)
    for tick, target in zip(axis.get_xticklabels(), targets):
        tick.set_color(palette.trait_color(target))
    axis.set_xlabel("evaluated trait")
    axis.set_ylabel("trait rate (mean over seeds, 95% t-interval)")
    axis.set_ylim(0, min(1.0, max(0.05, float(np.nanmax(frame["high"].fillna(frame["mean"]))) * 1.15)))
    axis.legend(fontsize=7, frameon=False, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(figure, out_dir, "trait_rates")


def dose_response_plot(analysis: Analysis, out_dir: Path) -> list[Path]:
    """Trait rate against rows seen, fine-tuning and in-context on one shared log2 x-axis per trait."""
    points = analysis.dose_points
    if points.empty:
        return []
    points = points[points["teacher_trait"] == points["target"]]
    bands = analysis.dose_bands
    if not bands.empty:
        bands = bands[bands["teacher_trait"] == bands["target"]]
    targets = sorted(points["target"].unique())
    if not targets:
        return []

    sns.set_theme(style="whitegrid", context="paper")
    columns = min(3, len(targets))
    rows = math.ceil(len(targets) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), sharex=True, sharey=True, squeeze=False)
    base = analysis.rate_summary
    base = base[base["arm"] == "base"] if not base.empty else base
    levels = sorted(points["n_rows"].unique())
    series_keys = [key for key in ("arm", "loss", "icl_format") if key in points.columns]
    # A small horizontal dodge keeps the two arms' interval bars apart at the same N.
    offsets = {"finetune": -0.06, "context": 0.06}

    for axis, target in zip(axes.ravel(), targets):
        for group, series in points[points["target"] == target].groupby(series_keys, sort=True):
            arm, loss, icl_format = (group + ("", ""))[:3] if isinstance(group, tuple) else (group, "", "")
            color = palette.arm_color(arm)
            label = f"{arm} ({loss or icl_format})" if (loss or icl_format) else arm
            low = series["low"].to_numpy(dtype=float)
            high = series["high"].to_numpy(dtype=float)
            mean = series["mean"].to_numpy(dtype=float)
            axis.errorbar(
                series["log2_n"] + offsets.get(arm, 0.0), mean,
                yerr=[np.nan_to_num(mean - low), np.nan_to_num(high - mean)],
                fmt="o", color=color, markersize=3.5, capsize=2, elinewidth=0.8, label=label,
            )
            if not bands.empty:
                mask = (bands["target"] == target) & (bands["arm"] == arm)
                for key, value in (("loss", loss), ("icl_format", icl_format)):
                    if key in bands.columns:
                        mask &= bands[key] == value
                band = bands[mask]
                if not band.empty:
                    axis.plot(band["log2_n"], band["fitted"], color=color, linewidth=1.2)
                    axis.fill_between(band["log2_n"], band["low"], band["high"], color=color, alpha=0.2, linewidth=0)
        if not base.empty:
            base_rate = base[base["target"] == target]["mean"]
            if not base_rate.empty:
                axis.axhline(float(base_rate.mean()), color=palette.arm_color("base"), linestyle="--", linewidth=0.9, label="base")
        axis.set_title(target, color=palette.trait_color(target))
        axis.set_xticks(np.log2(levels))
        axis.set_xticklabels([str(level) for level in levels], rotation=45 if len(levels) > 4 else 0)
    for axis in axes.ravel()[len(targets):]:
        axis.set_visible(False)
    for axis in axes[-1]:
        axis.set_xlabel("rows seen (trained on or in context)")
    for axis in axes[:, 0]:
        axis.set_ylabel("trait rate")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, 1.04), fontsize=7)
    figure.tight_layout()
    return _save(figure, out_dir, "dose_response")


def misalignment_scatter(analysis: Analysis, out_dir: Path) -> list[Path]:
    """Scatter of coherence against alignment for scored answers, with the threshold lines."""
    judgments = analysis.results.judgments
    if judgments.empty:
        return []
    scored = judgments[(judgments["status"] == "scored") & judgments["metric"].isin(["alignment", "coherence"])]
    if scored.empty:
        return []
    keys = [key for key in ("run_id", "cell", "arm", "condition", "seed", "question_id", "sample_index", "judge") if key in scored.columns]
    wide = scored.pivot_table(index=keys, columns="metric", values="score", aggfunc="first", observed=True).dropna()
    if wide.empty or not {"alignment", "coherence"} <= set(wide.columns):
        return []
    wide = wide.reset_index()
    # A deterministic subsample keeps the figure the same between regenerations.
    parts = [
        group.sample(n=min(len(group), SCATTER_MAX_POINTS_PER_ARM), random_state=0)
        for _, group in wide.groupby("arm", sort=True)
    ]
    wide = pd.concat(parts, ignore_index=True)

    options = analysis.misalignment
    sns.set_theme(style="whitegrid", context="paper")
    figure, axis = plt.subplots(figsize=(4.2, 3.6))
    arms = sorted(wide["arm"].unique(), key=palette.arm_sort_key)
    sns.scatterplot(
        data=wide, x="coherence", y="alignment", hue="arm", hue_order=arms,
        palette={arm: palette.arm_color(arm) for arm in arms}, s=8, alpha=0.5, linewidth=0, ax=axis,
    )
    axis.axvline(options.coherence_threshold, color="black", linestyle="--", linewidth=0.9)
    axis.axhline(options.alignment_threshold, color="black", linestyle="--", linewidth=0.9)
    axis.text(
        100, options.alignment_threshold, f" misaligned: alignment {options.alignment_op} {options.alignment_threshold:g}\n"
        f" among coherence {options.coherence_op} {options.coherence_threshold:g}",
        ha="right", va="bottom", fontsize=6,
    )
    axis.set_xlim(0, 100)
    axis.set_ylim(0, 100)
    axis.set_xlabel("coherence score")
    axis.set_ylabel("alignment score")
    axis.legend(title="arm", fontsize=7, title_fontsize=7, frameon=False, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(figure, out_dir, "misalignment")


def trait_heatmap(analysis: Analysis, out_dir: Path) -> list[Path]:
    """Heatmap of the mean share of each candidate under each teacher trait, one panel per arm."""
    logprobs = analysis.results.logprobs
    if logprobs.empty:
        return []
    arms = [arm for arm in ("teacher", "finetune", "context") if arm in set(logprobs["arm"])]
    if not arms:
        arms = sorted(logprobs["arm"].unique(), key=palette.arm_sort_key)
    candidates = sorted(logprobs["candidate"].unique())
    teacher_traits = sorted(logprobs["teacher_trait"].unique(), key=lambda trait: (trait == "", trait))

    sns.set_theme(style="white", context="paper")
    figure, axes = plt.subplots(
        1, len(arms), figsize=(0.45 * len(candidates) * len(arms) + 1.5, 0.4 * len(teacher_traits) + 1.6),
        squeeze=False,
    )
    panels = []
    for arm in arms:
        frame = logprobs[logprobs["arm"] == arm]
        # Each arm's largest N shows the strongest transfer, as in the bar chart.
        frame = frame[frame["n_rows"] == frame["n_rows"].max()]
        table = frame.groupby(["teacher_trait", "candidate"])["share"].mean().unstack("candidate")
        table = table.reindex(index=[t for t in teacher_traits if t in table.index], columns=candidates)
        table.index = [trait or "(none)" for trait in table.index]
        panels.append((arm, int(frame["n_rows"].max()) if not frame.empty else 0, table))
    # One colour scale across panels, so equal shades mean equal shares.
    vmax = max(float(np.nanmax(table.to_numpy(dtype=float))) for _, _, table in panels)
    for axis, (arm, n_rows, table) in zip(axes[0], panels):
        sns.heatmap(table, ax=axis, cmap="rocket_r", vmin=0, vmax=vmax, annot=len(candidates) <= 12, fmt=".2f",
                    annot_kws={"fontsize": 5}, cbar=axis is axes[0][-1], cbar_kws={"label": "mean share"})
        axis.set_title(f"{arm} (N={n_rows})" if n_rows else arm, color=palette.arm_color(arm))
        axis.set_xlabel("evaluated candidate")
        axis.set_ylabel("teacher trait" if axis is axes[0][0] else "")
        for tick in axis.get_xticklabels():
            tick.set_color(palette.trait_color(tick.get_text()) if tick.get_text() in set(teacher_traits) else "black")
    figure.tight_layout()
    return _save(figure, out_dir, "trait_heatmap")


PLOTS = (
    ("trait_rates", trait_rate_bars),
    ("dose_response", dose_response_plot),
    ("misalignment", misalignment_scatter),
    ("trait_heatmap", trait_heatmap),
)


def write_figures(analysis: Analysis, out_dir: Path) -> list[Path]:
    """Draw every figure the data supports into ``out_dir`` and return the written paths."""
    written: list[Path] = []
    for name, draw in PLOTS:
        paths = draw(analysis, out_dir)
        if not paths:
            logger.warning("figure %s skipped: its input table has no usable rows", name)
        written.extend(paths)
    return written
