r"""LaTeX macros for the numbers the paper's prose cites, so the text updates with the data.

Per-trait macros are named like ``\OwlFinetuneRate``. ``Headline*`` macros
describe the trait with the largest fine-tuning minus in-context gap, so a
paper skeleton can cite results without knowing the trait names. Every
headline macro is always defined (``n/a`` without data), so the paper
compiles for any results set.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pandas as pd

from analysis import stats
from analysis.summary import Analysis

logger = logging.getLogger(__name__)

DIGIT_WORDS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")
NOT_AVAILABLE = "n/a"


def macro_name(*parts: str) -> str:
    """Join parts into a LaTeX command name: letters only, each word capitalized.

    LaTeX command names cannot contain digits, so digits are spelled out
    (``n2`` becomes ``NTwo``), and other characters split words.
    """
    words = []
    for part in parts:
        for word in re.split(r"[^A-Za-z0-9]+", str(part)):
            if not word:
                continue
            spelled = "".join(DIGIT_WORDS[int(ch)] if ch.isdigit() else ch for ch in word)
            words.append(spelled[0].upper() + spelled[1:])
    name = "".join(words)
    if not name:
        raise ValueError(f"macro name from {parts!r} is empty; pass parts that contain letters or digits")
    return name


def percent(value: float) -> str:
    return NOT_AVAILABLE if value is None or math.isnan(value) else f"{100 * value:.1f}\\%"


def plain(value: float, decimals: int = 3) -> str:
    return NOT_AVAILABLE if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def p_text(value: float) -> str:
    if value is None or math.isnan(value):
        return NOT_AVAILABLE
    return "$<$0.001" if value < 0.001 else f"{value:.3f}"


def _latex_text(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text)


def _largest_n_rows(summary: pd.DataFrame) -> pd.DataFrame:
    if summary.empty:
        return summary
    largest = summary.groupby(["arm", "loss", "icl_format", "teacher_trait", "target"])["n_rows"].transform("max")
    return summary[summary["n_rows"] == largest]


def _arm_parts(summary: pd.DataFrame, arm: str, recipe: str) -> tuple[str, ...]:
    """Name an arm, adding its recipe only when the arm has several (sft and distill)."""
    recipes = summary[summary["arm"] == arm]
    column = "loss" if arm == "finetune" else "icl_format"
    if column in recipes.columns and recipes[column].nunique() > 1:
        return (arm, recipe)
    return (arm,)


def trait_macros(analysis: Analysis) -> dict[str, str]:
    """Build per-trait macros for rates, P(target), differences and slopes at each arm's largest N."""
    macros: dict[str, str] = {}
    rates = _largest_n_rows(analysis.rate_summary)
    probs = _largest_n_rows(analysis.logprob_summary.get("prob", pd.DataFrame()))
    for frame, measure, formatter in ((rates, "Rate", percent), (probs, "Prob", percent)):
        if frame.empty:
            continue
        for row in frame.itertuples(index=False):
            if row.arm == "base":
                parts: tuple[str, ...] = (row.target, "base")
            elif row.teacher_trait == row.target:
                recipe = row.loss or row.icl_format
                parts = (row.target,) + _arm_parts(frame, row.arm, recipe)
            elif row.teacher_trait == "" and row.arm in stats.TREATMENT_ARMS:
                recipe = row.loss or row.icl_format
                parts = (row.target,) + _arm_parts(frame, row.arm, recipe) + ("control",)
            else:
                continue
            name = macro_name(*parts, measure)
            macros[name] = formatter(row.mean)
            macros[name + "Low"] = formatter(row.low)
            macros[name + "High"] = formatter(row.high)
            macros[macro_name(*parts, measure, "seeds")] = str(int(row.n_seeds))

    comparisons = analysis.comparisons
    if not comparisons.empty:
        largest = comparisons.groupby("target")["n_rows"].transform("max")
        for row in comparisons[comparisons["n_rows"] == largest].itertuples(index=False):
            second = "control" if "control" in row.second else row.second
            name = macro_name(row.target, row.first, "minus", second)
            macros[name] = percent(row.difference)
            macros[name + "Low"] = percent(row.low)
            macros[name + "High"] = percent(row.high)
            macros[name + "P"] = p_text(row.p_value)
    fits = analysis.dose_fits
    if not fits.empty:
        for row in fits[fits["teacher_trait"] == fits["target"]].itertuples(index=False):
            name = macro_name(row.target, row.arm, "slope")
            macros[name] = percent(row.slope)
            macros[name + "P"] = p_text(row.p_value)
    return macros


def headline_macros(analysis: Analysis) -> dict[str, str]:
    """Build the ``Headline*`` and study-wide macros, with ``n/a`` where data is missing."""
    samples = analysis.results.samples
    seed_rates = analysis.seed_rates
    options = analysis.misalignment
    operators = {"<=": r"$\le$", "<": "$<$", ">=": r"$\ge$", ">": "$>$", "==": "$=$"}
    macros = {
        "NumSamples": f"{len(samples):,}".replace(",", "{,}"),
        "NumTraits": str(seed_rates[seed_rates["teacher_trait"] != ""]["teacher_trait"].nunique()) if not seed_rates.empty else "0",
        "NumSeeds": str(int(seed_rates.groupby(["condition", "n_rows", "target"])["seed"].nunique().max())) if not seed_rates.empty else "0",
        "MaxRows": str(int(samples["n_rows"].max())) if not samples.empty else "0",
        "MisalignmentRule": (
            f"alignment {operators[options.alignment_op]} {options.alignment_threshold:g} among answers with "
            f"coherence {operators[options.coherence_op]} {options.coherence_threshold:g}"
        ),
    }

    headline = {key: NOT_AVAILABLE for key in (
        "Trait", "Rows", "FinetuneRate", "ContextRate", "BaseRate", "Difference", "DifferenceLow",
        "DifferenceHigh", "Test", "P", "Pairs", "FinetuneSlope", "ContextSlope",
    )}
    comparisons = analysis.comparisons
    between = comparisons
    if not comparisons.empty:
        # Labels carry the recipe when an arm has several, as in "finetune (sft)".
        between = comparisons[
            comparisons["first"].str.startswith("finetune")
            & comparisons["second"].str.startswith("context")
            & ~comparisons["second"].str.contains("control")
        ]
    if not between.empty:
        largest = between.groupby("target")["n_rows"].transform("max")
        best = between[between["n_rows"] == largest].sort_values("difference", ascending=False).iloc[0]
        headline |= {
            "Trait": _latex_text(str(best["target"])), "Rows": str(int(best["n_rows"])),
            "FinetuneRate": percent(best["mean_first"]), "ContextRate": percent(best["mean_second"]),
            "Difference": percent(best["difference"]), "DifferenceLow": percent(best["low"]),
            "DifferenceHigh": percent(best["high"]), "Test": str(best["test"]), "P": p_text(best["p_value"]),
            "Pairs": str(int(best["n_pairs"])),
        }
        summary = analysis.rate_summary
        base = summary[(summary["arm"] == "base") & (summary["target"] == best["target"])]
        if not base.empty:
            headline["BaseRate"] = percent(float(base["mean"].mean()))
        fits = analysis.dose_fits
        for arm in stats.TREATMENT_ARMS:
            fit = fits[(fits["arm"] == arm) & (fits["target"] == best["target"]) & (fits["teacher_trait"] == best["target"])] if not fits.empty else fits
            if not fit.empty:
                headline[macro_name(arm, "slope")] = percent(float(fit["slope"].iloc[0]))
    macros |= {"Headline" + key: value for key, value in headline.items()}

    # One number per arm: the mean over every seed of the arm's conditions at its largest N.
    seed_misaligned = analysis.seed_misaligned
    for arm in ("base", "finetune", "context"):
        value = NOT_AVAILABLE
        if not seed_misaligned.empty:
            rows = seed_misaligned[seed_misaligned["arm"] == arm]
            if not rows.empty:
                rows = rows[rows["n_rows"] == rows["n_rows"].max()]
                value = percent(stats.t_interval(rows["rate"].to_numpy(dtype=float))[0])
        macros[macro_name("misaligned", arm, "rate")] = value
    excluded = analysis.seed_misaligned
    macros["NumExcludedJudgments"] = (
        str(int(excluded[["n_code", "n_refusal", "n_unscored"]].to_numpy().sum())) if not excluded.empty else "0"
    )
    return macros


def build_macros(analysis: Analysis) -> dict[str, str]:
    """Build every macro; a per-trait name that shadows a study-wide one is dropped with a warning."""
    macros = headline_macros(analysis)
    for name, value in trait_macros(analysis).items():
        if name in macros:
            logger.warning("macro \\%s from a trait name clashes with a study-wide macro and is skipped", name)
            continue
        macros[name] = value
    return macros


def to_latex(macros: dict[str, str]) -> str:
    lines = ["% Generated by `study analyze`; edits are overwritten."]
    lines += [f"\\newcommand{{\\{name}}}{{{value}}}" for name, value in sorted(macros.items())]
    return "\n".join(lines) + "\n"


def write_macros(macros: dict[str, str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_latex(macros))
    return path
