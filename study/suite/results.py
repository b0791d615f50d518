"""Suite results: one row per cell, eval stage and measured trait, read from stored eval rows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from study.store import RunStore, atomic_write_text, read_jsonl
from study.suite.planner import Cell

FACTOR_COLUMNS = ("arm", "trait", "rows_trait", "teacher_kind", "temperature", "n", "epochs", "lora_rank",
                  "student_model", "icl_format", "seed")


def _measures(stage_path: Path, target: str) -> dict:
    logprobs = [row for row in read_jsonl(stage_path / "logprobs.jsonl")
                if row.get("prefix", "") == "" and row["candidate"] == target]
    samples = read_jsonl(stage_path / "samples.jsonl")
    first = samples[0] if samples else {}
    count = len(logprobs)
    return {
        "condition": first.get("condition", ""),
        "n_rows": first.get("n_rows", 0),
        "prob": sum(row["prob"] for row in logprobs) / count if count else float("nan"),
        "share": sum(row["share"] for row in logprobs) / count if count else float("nan"),
        "logprob": sum(row["logprob"] for row in logprobs) / count if count else float("nan"),
        "rate": sum(target in row["mentions"] for row in samples) / len(samples) if samples else float("nan"),
        "samples": len(samples),
    }


def collect_cells(store: RunStore, cells: list[Cell], statuses: dict[str, dict], traits: list[str]) -> pd.DataFrame:
    """Return the measures of every done cell; base and control cells are measured for every suite trait."""
    records = []
    for cell in cells:
        status = statuses.get(cell.id, {})
        if status.get("status") != "done":
            continue
        targets = [cell.trait] if cell.trait else traits
        for stage_name in json.loads(status["eval_stages"] or "[]"):
            stage_path = store.stages_dir / stage_name
            for target in targets:
                record = {"cell_id": cell.id, "label": cell.label(),
                          **{name: getattr(cell, name) for name in FACTOR_COLUMNS}}
                record.update(_measures(stage_path, target))
                record.update({"target": target, "eval_stage": stage_name})
                records.append(record)
    frame = pd.DataFrame.from_records(records)
    for column in ("n", "epochs", "lora_rank", "seed"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


def write_tidy_tables(store: RunStore, statuses: dict[str, dict], traits: list[str]) -> None:
    """Write the tidy samples, logprobs and open_answers tables of every done cell, for study analyze."""
    from study.results import collect
    from study.store import Stage

    names = []
    for status in statuses.values():
        if status.get("status") == "done":
            names += json.loads(status["eval_stages"] or "[]")
    stages = [Stage(kind="eval", key={}, digest=name.split("-", 1)[-1], path=store.stages_dir / name)
              for name in dict.fromkeys(names)]
    collect(stages, store.results_dir, traits)


def write_results(frame: pd.DataFrame, results_dir: Path) -> None:
    """Write cells.parquet and a Markdown table of mean measures across seeds."""
    results_dir.mkdir(parents=True, exist_ok=True)
    temporary = results_dir / f".cells.parquet.tmp-{os.getpid()}"
    frame.to_parquet(temporary, index=False)
    os.replace(temporary, results_dir / "cells.parquet")
    atomic_write_text(results_dir / "summary.md", summary_markdown(frame))


def summary_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "No cell has finished yet.\n"
    keys = [c for c in FACTOR_COLUMNS if c not in ("seed", "trait")] + ["target", "n_rows"]
    table = frame.copy()
    for key in keys:
        table[key] = table[key].astype(object).where(table[key].notna(), "-").astype(str)
    grouped = table.groupby(keys, sort=True)
    lines = ["| " + " | ".join(keys) + " | seeds | mean P(target) | share | sampled rate |",
             "|" + "---|" * (len(keys) + 4)]
    for values, group in grouped:
        cells = " | ".join(str(value) for value in values)
        lines.append(f"| {cells} | {group['seed'].nunique()} | {group['prob'].mean():.4g} "
                     f"| {group['share'].mean():.4g} | {group['rate'].mean():.3f} |")
    return "\n".join(lines) + "\n"
