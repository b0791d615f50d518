"""Write the paper's generated inputs and build its PDF when a LaTeX engine is installed."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from study.errors import StudyError

from analysis.report import Report, write_report
from analysis.summary import Analysis

logger = logging.getLogger(__name__)

# Engines in order of preference; latexmk reruns pdflatex until references settle.
ENGINES = {
    "latexmk": ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "main.tex"],
    "pdflatex": ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"],
    "tectonic": ["tectonic", "main.tex"],
}
BUILD_TIMEOUT_S = 300


def default_paper_dir() -> Path:
    """Return the repository's ``paper/`` folder next to the ``analysis`` package."""
    return Path(__file__).resolve().parents[1] / "paper"


def check_paper_dir(paper_dir: Path) -> Path:
    paper_dir = Path(paper_dir)
    if not (paper_dir / "main.tex").is_file():
        raise StudyError(
            f"paper folder {paper_dir} has no main.tex; pass --paper-dir pointing at a copy of the repository's paper/ folder"
        )
    return paper_dir


def write_paper_inputs(analysis: Analysis, paper_dir: Path) -> Report:
    """Write figures, tables and macros into ``paper_dir/generated``."""
    return write_report(analysis, check_paper_dir(paper_dir) / "generated")


def find_engine(preferred: str = "auto") -> str | None:
    """Return the first installed LaTeX engine (or ``preferred`` if installed), else None."""
    if preferred != "auto":
        if preferred not in ENGINES:
            raise StudyError(f"unknown LaTeX engine {preferred!r}; use auto, {', '.join(ENGINES)}")
        return preferred if shutil.which(preferred) else None
    for name in ENGINES:
        if shutil.which(name):
            return name
    return None


def build_pdf(paper_dir: Path, engine: str) -> Path:
    """Compile ``main.tex`` with ``engine`` and return the PDF path."""
    command = ENGINES[engine]
    # pdflatex alone needs a second pass so that references and the table list resolve.
    passes = 2 if engine == "pdflatex" else 1
    for _ in range(passes):
        try:
            completed = subprocess.run(
                command, cwd=paper_dir, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise StudyError(f"{engine} timed out after {BUILD_TIMEOUT_S} s in {paper_dir}; run it by hand to see where it stops") from error
        if completed.returncode != 0:
            tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-15:])
            raise StudyError(f"{engine} failed on {paper_dir / 'main.tex'} (exit {completed.returncode}); see main.log. Last lines:\n{tail}")
    return paper_dir / "main.pdf"
