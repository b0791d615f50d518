"""Write an analysis's figures, tables and macros into one output folder.

Layout of the output folder::

    figures/<name>.png and .pdf
    tables/<name>.md and .tex, tables/rows.csv
    macros.tex
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analysis import macros as macro_module
from analysis import plots, tables
from analysis.load import load_results
from analysis.summary import Analysis, MisalignmentOptions, analyze


@dataclass
class Report:
    """An analysis and the files written from it."""

    analysis: Analysis
    out_dir: Path
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    macros: Path | None = None


def write_report(analysis: Analysis, out_dir: Path) -> Report:
    """Write figures, tables and macros of ``analysis`` under ``out_dir``."""
    out_dir = Path(out_dir)
    report = Report(analysis=analysis, out_dir=out_dir)
    report.figures = plots.write_figures(analysis, out_dir / "figures")
    report.tables = tables.write_tables(tables.build_tables(analysis), out_dir / "tables")
    report.macros = macro_module.write_macros(macro_module.build_macros(analysis), out_dir / "macros.tex")
    return report


def analyze_run(
    run_dir: Path,
    out_dir: Path | None = None,
    misalignment: MisalignmentOptions | None = None,
    confidence: float = 0.95,
) -> Report:
    """Load a run or suite directory, analyze it, and write the report (default ``RUN_DIR/analysis``)."""
    results = load_results(run_dir)
    analysis = analyze(results, misalignment, confidence)
    return write_report(analysis, Path(out_dir) if out_dir else Path(run_dir) / "analysis")
