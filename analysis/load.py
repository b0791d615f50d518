"""Load the result tables of one run directory or a suite of run directories."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from study.errors import StudyError
from study.schema import (
    CONDITION_COLUMNS,
    JUDGMENT_COLUMNS,
    LOGPROB_COLUMNS,
    METRIC_COLUMNS,
    SAMPLE_COLUMNS,
)

logger = logging.getLogger(__name__)

TABLE_COLUMNS = {
    "samples": SAMPLE_COLUMNS,
    "logprobs": LOGPROB_COLUMNS,
    "judgments": JUDGMENT_COLUMNS,
    "metrics": METRIC_COLUMNS,
}

# Columns without which a table cannot be analysed at all.
REQUIRED_COLUMNS = {
    "samples": ("arm", "teacher_trait", "n_rows", "seed", "mentions_target"),
    "logprobs": ("arm", "teacher_trait", "n_rows", "seed", "candidate", "logprob", "prob", "share", "is_target"),
    "judgments": ("arm", "seed", "metric", "status", "score"),
    "metrics": ("arm", "seed", "metric", "value"),
}

INTEGER_COLUMNS = ("n_rows", "seed")

# How deep below the given folder run directories are looked for.
MAX_SEARCH_DEPTH = 3


@dataclass
class Results:
    """The concatenated tables of every run found, with the names of tables no run had."""

    samples: pd.DataFrame
    logprobs: pd.DataFrame
    judgments: pd.DataFrame
    metrics: pd.DataFrame
    run_dirs: list[Path] = field(default_factory=list)
    missing_tables: list[str] = field(default_factory=list)

    def table(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


def find_run_dirs(path: Path) -> list[Path]:
    """Return ``path`` if it holds ``results/``, else the run directories below it."""
    path = Path(path)
    if not path.exists():
        raise StudyError(f"run directory {path} not found; pass a run directory that contains results/ or a suite folder of them")
    if not path.is_dir():
        raise StudyError(f"{path} is a file; pass a run directory that contains results/ or a suite folder of them")
    if (path / "results").is_dir():
        return [path]
    found: list[Path] = []
    level = [path]
    for _ in range(MAX_SEARCH_DEPTH):
        below = sorted(child for folder in level for child in folder.iterdir() if child.is_dir() and child.name != "results")
        found.extend(child for child in below if (child / "results").is_dir())
        level = [child for child in below if not (child / "results").is_dir()]
    if not found:
        raise StudyError(
            f"no results/ folder found in {path} or {MAX_SEARCH_DEPTH} levels below it; "
            "pass a run directory after its evaluation stage has written results/*.parquet"
        )
    return found


def empty_table(name: str) -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype="int64" if column in INTEGER_COLUMNS else "object") for column in TABLE_COLUMNS[name]})


def _normalize(frame: pd.DataFrame, name: str, source: Path) -> pd.DataFrame:
    missing = [column for column in REQUIRED_COLUMNS[name] if column not in frame.columns]
    if missing:
        raise StudyError(
            f"{source} lacks column(s) {', '.join(missing)}; rewrite it with the columns of study.schema "
            "(rerun the stage that wrote it) or move the file out of results/"
        )
    # Older or hand-made tables may lack descriptive condition columns, so fill them with blanks.
    for column in CONDITION_COLUMNS:
        if column not in frame.columns:
            frame[column] = 0 if column in INTEGER_COLUMNS else ""
    for column in INTEGER_COLUMNS:
        frame[column] = frame[column].fillna(0).astype("int64")
    for column in set(CONDITION_COLUMNS) - set(INTEGER_COLUMNS):
        frame[column] = frame[column].fillna("").astype(str)
    if "target" in TABLE_COLUMNS[name] and "target" not in frame.columns:
        frame["target"] = frame["teacher_trait"]
    return frame


def load_results(path: Path | str) -> Results:
    """Load every results table of a run directory, or of all run directories under a suite folder.

    Missing tables load as empty frames with the schema's columns, and their
    names are listed in ``missing_tables``.
    """
    run_dirs = find_run_dirs(Path(path))
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLE_COLUMNS}
    for run_dir in run_dirs:
        for name in TABLE_COLUMNS:
            file = run_dir / "results" / f"{name}.parquet"
            if not file.exists():
                continue
            try:
                frame = pd.read_parquet(file)
            except (OSError, ValueError) as error:
                raise StudyError(f"could not read {file}: {error}; rerun the stage that writes it or remove the file") from error
            if "run_id" not in frame.columns or (frame["run_id"] == "").all():
                frame["run_id"] = run_dir.name
            frames[name].append(_normalize(frame, name, file))

    tables: dict[str, pd.DataFrame] = {}
    missing = []
    for name, parts in frames.items():
        parts = [part for part in parts if not part.empty]
        if parts:
            tables[name] = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        else:
            missing.append(name)
            tables[name] = empty_table(name)
    if len(missing) == len(TABLE_COLUMNS):
        raise StudyError(
            f"every results table in {', '.join(str(d) for d in run_dirs)} is missing or empty; "
            "run the evaluation stage first (it writes results/samples.parquet)"
        )
    return Results(**tables, run_dirs=run_dirs, missing_tables=missing)
