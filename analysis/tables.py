"""Tidy table rows built from an analysis, rendered as Markdown and LaTeX (booktabs).

Every table is a list of :class:`TableRow`, so the Markdown, LaTeX and CSV
outputs always show the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from analysis.summary import Analysis

TABLE_HEADER = ("Condition", "Metric", "Value", "95% interval", "Seeds", "p", "Template")


@dataclass(frozen=True)
class TableRow:
    """One number of a results table with its interval and provenance.

    ``n_seeds`` counts the students behind the value (pairs for a paired
    test). ``template_version`` is the version of the question set or judge
    template that produced the answers, so a table mixing versions shows it.
    """

    condition: str
    metric: str
    value: float
    low: float = math.nan
    high: float = math.nan
    n_seeds: int = 0
    p_value: float = math.nan
    template_version: str = ""
    decimals: int = 3


def _label(condition: str, n_rows: int) -> str:
    return f"{condition}, N={int(n_rows)}" if int(n_rows) > 0 else condition


def _versions(frame: pd.DataFrame, column: str) -> str:
    if column not in frame.columns or frame.empty:
        return ""
    return ",".join(sorted(str(value) for value in frame[column].dropna().unique() if str(value)))


def _sort_conditions(frame: pd.DataFrame) -> pd.DataFrame:
    from analysis.palette import arm_sort_key

    return frame.sort_values(
        ["arm", "condition", "n_rows"],
        key=lambda column: column.map(arm_sort_key) if column.name == "arm" else column,
        kind="stable",
    )


def trait_rate_rows(analysis: Analysis) -> list[TableRow]:
    summary = analysis.rate_summary
    if summary.empty:
        return []
    # Off-target rows (an owl student scored for eagle) are kept out of the paper table.
    summary = summary[(summary["teacher_trait"] == summary["target"]) | (summary["teacher_trait"] == "")]
    return [
        TableRow(_label(row.condition, row.n_rows), f"{row.target} rate", row.mean, row.low, row.high,
                 int(row.n_seeds), template_version=str(row.eval_version))
        for row in _sort_conditions(summary).itertuples(index=False)
    ]


def target_probability_rows(analysis: Analysis) -> list[TableRow]:
    keyed = []
    labels = (("prob", "P({})", 3), ("logprob", "log P({})", 2), ("share", "share of {}", 3))
    for order, (measure, template, decimals) in enumerate(labels):
        summary = analysis.logprob_summary.get(measure)
        if summary is None or summary.empty:
            continue
        summary = summary[(summary["teacher_trait"] == summary["target"]) | (summary["teacher_trait"] == "")]
        for position, row in enumerate(_sort_conditions(summary).itertuples(index=False)):
            table_row = TableRow(_label(row.condition, row.n_rows), template.format(row.target), row.mean, row.low,
                                 row.high, int(row.n_seeds), template_version=str(row.eval_version), decimals=decimals)
            keyed.append(((position, order), table_row))
    # Interleave the three measures so each condition's P, log P and share sit together.
    return [row for _, row in sorted(keyed, key=lambda item: item[0])]


def comparison_rows(analysis: Analysis, largest_only: bool = False) -> list[TableRow]:
    rows = []
    samples_version = _versions(analysis.results.samples, "eval_version")
    comparisons = analysis.comparisons
    if largest_only and not comparisons.empty:
        comparisons = comparisons[comparisons["n_rows"] == comparisons.groupby("target")["n_rows"].transform("max")]
    for row in comparisons.itertuples(index=False):
        n = row.n_pairs if row.test == "paired t" else min(row.n_first, row.n_second)
        rows.append(TableRow(
            f"{row.first} - {row.second}, N={int(row.n_rows)}", f"{row.target} rate difference ({row.test})",
            row.difference, row.low, row.high, int(n), row.p_value, samples_version,
        ))
    return rows


def fisher_rows(analysis: Analysis) -> list[TableRow]:
    samples_version = _versions(analysis.results.samples, "eval_version")
    return [
        TableRow(
            f"{row.arm} vs {row.control}, N={int(row.n_rows)}",
            f"{row.target} odds ratio ({row.mentions_treated}/{row.n_treated} vs {row.mentions_control}/{row.n_control})",
            row.odds_ratio, n_seeds=int(row.n_seeds), p_value=row.p_adjusted, template_version=samples_version,
            decimals=2,
        )
        for row in analysis.fisher.itertuples(index=False)
    ]


def dose_response_rows(analysis: Analysis) -> list[TableRow]:
    samples_version = _versions(analysis.results.samples, "eval_version")
    fits = analysis.dose_fits
    if fits.empty:
        return []
    fits = fits[fits["teacher_trait"] == fits["target"]]
    rows = []
    for row in fits.itertuples(index=False):
        recipe = getattr(row, "loss", "") or getattr(row, "icl_format", "")
        condition = f"{row.arm}/{recipe}/{row.teacher_trait}" if recipe else f"{row.arm}/{row.teacher_trait}"
        rows.append(TableRow(
            f"{condition}, {row.n_levels} N levels", f"{row.target} rate slope per doubling of N",
            row.slope, row.slope_low, row.slope_high, int(row.n_points), row.p_value, samples_version,
        ))
    return rows


def misalignment_rows(analysis: Analysis) -> list[TableRow]:
    summary = analysis.misaligned_summary
    if summary.empty:
        return []
    judge_version = _versions(analysis.results.judgments, "template_version")
    options = analysis.misalignment
    metric = (f"misaligned rate (alignment {options.alignment_op} {options.alignment_threshold:g} "
              f"among coherence {options.coherence_op} {options.coherence_threshold:g})")
    return [
        TableRow(_label(row.condition, row.n_rows), metric, row.mean, row.low, row.high, int(row.n_seeds),
                 template_version=judge_version)
        for row in _sort_conditions(summary).itertuples(index=False)
    ]


def metric_rows(analysis: Analysis) -> list[TableRow]:
    summary = analysis.metric_summary
    if summary.empty:
        return []
    version = _versions(analysis.results.metrics, "eval_version")
    return [
        TableRow(_label(row.condition, row.n_rows), str(row.metric), row.mean, row.low, row.high, int(row.n_seeds),
                 template_version=version)
        for row in _sort_conditions(summary).itertuples(index=False)
    ]


def key_comparison_rows(analysis: Analysis) -> list[TableRow]:
    return comparison_rows(analysis, largest_only=True)


TABLES = {
    "key_comparisons": (key_comparison_rows, "Differences in trait rate at each trait's largest N: paired t-test over matched seeds, else Welch's t-test."),
    "trait_rates": (trait_rate_rows, "Trait rate per condition: mean over seeds of each seed's share of answers naming the trait."),
    "target_probability": (target_probability_rows, "Probability, log-probability and candidate-set share of the target per condition, averaged within and then across seeds."),
    "comparisons": (comparison_rows, "Differences in trait rate at matched N: paired t-test over matched seeds, else Welch's t-test."),
    "fisher": (fisher_rows, "Fisher exact tests of answers pooled over seeds, p-values Benjamini-Hochberg adjusted across all rows."),
    "dose_response": (dose_response_rows, "OLS slope of the seed-level trait rate on log2 N; the interval is the slope's t-interval."),
    "misalignment": (misalignment_rows, "Misaligned rate per condition among coherent scored answers; code, refusal and unscored answers excluded."),
    "metrics": (metric_rows, "Scalar per-seed metrics, such as auxiliary-logit test accuracy."),
}


def build_tables(analysis: Analysis) -> dict[str, list[TableRow]]:
    """Build every table's rows from an analysis."""
    return {name: build(analysis) for name, (build, _) in TABLES.items()}


# ---------------------------------------------------------------------------
# Rendering


def format_number(value: float, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{decimals}f}"


def format_interval(row: TableRow) -> str:
    if math.isnan(row.low) or math.isnan(row.high):
        return "n/a"
    return f"[{row.low:.{row.decimals}f}, {row.high:.{row.decimals}f}]"


def format_p(p_value: float) -> str:
    if math.isnan(p_value):
        return ""
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def row_cells(row: TableRow) -> list[str]:
    return [row.condition, row.metric, format_number(row.value, row.decimals), format_interval(row),
            str(row.n_seeds), format_p(row.p_value), row.template_version]


def to_markdown(rows: list[TableRow], caption: str = "") -> str:
    """Render rows as a GitHub-flavoured Markdown table."""
    lines = [f"{caption}\n"] if caption else []
    lines.append("| " + " | ".join(TABLE_HEADER) + " |")
    lines.append("|" + "|".join(["---", "---", "---:", "---", "---:", "---:", "---"]) + "|")
    if not rows:
        lines.append("| no data | | | | | | |")
    for row in rows:
        cells = [cell.replace("|", "\\|") for cell in row_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(character, character) for character in text)


# Tables longer than this become a longtable that breaks across pages.
LONG_TABLE_ROWS = 30


def to_latex(rows: list[TableRow], caption: str = "", label: str = "") -> str:
    """Render rows as a booktabs table; the preamble loads booktabs, adjustbox and longtable."""
    header = " & ".join(latex_escape(cell) for cell in TABLE_HEADER) + r" \\"
    body = [" & ".join(latex_escape(cell) for cell in row_cells(row)) + r" \\" for row in rows]
    if not rows:
        body = [r"\multicolumn{7}{l}{no data} \\"]
    caption_lines = [rf"\caption{{{latex_escape(caption)}}}"] if caption else []
    label_lines = [rf"\label{{{label}}}"] if label else []

    if len(rows) > LONG_TABLE_ROWS:
        lines = [r"\begingroup\footnotesize", r"\begin{longtable}{llrlrrl}"]
        if caption_lines or label_lines:
            lines.append("".join(caption_lines + label_lines) + r" \\")
        lines += [r"\toprule", header, r"\midrule", r"\endhead", r"\bottomrule", r"\endfoot"]
        lines += body
        lines += [r"\end{longtable}", r"\endgroup"]
        return "\n".join(lines) + "\n"

    lines = [r"\begin{table}[htbp]", r"\centering", r"\small"] + caption_lines + label_lines
    lines += [r"\begin{adjustbox}{max width=\linewidth}", r"\begin{tabular}{llrlrrl}", r"\toprule", header, r"\midrule"]
    lines += body
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{adjustbox}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(tables: dict[str, list[TableRow]], out_dir: Path) -> list[Path]:
    """Write each table as ``.md`` and ``.tex``, and all rows as one ``rows.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    records = []
    for name, rows in tables.items():
        caption = TABLES[name][1] if name in TABLES else ""
        markdown = out_dir / f"{name}.md"
        markdown.write_text(to_markdown(rows, caption))
        latex = out_dir / f"{name}.tex"
        latex.write_text(to_latex(rows, caption, label=f"tab:{name.replace('_', '-')}"))
        written += [markdown, latex]
        records += [{"table": name} | asdict(row) for row in rows]
    csv = out_dir / "rows.csv"
    pd.DataFrame(records, columns=["table"] + list(TableRow.__dataclass_fields__)).to_csv(csv, index=False)
    written.append(csv)
    return written
