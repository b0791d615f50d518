"""The suite directory: cell specs, a SQLite table of cell runs, and per-cell logs.

Cells record their own status (running, done, failed) from whatever process
or machine runs them, so the table is right for every executor as long as
the suite directory is on a filesystem that all of them share.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from study.store import atomic_write_json

CELL_COLUMNS = ("cell_id", "label", "status", "attempts", "cached", "host", "pid", "started", "finished",
                "wall_seconds", "stages_run", "eval_stages", "error")


class SuiteIndex:
    """Cell specs under ``cells/<id>/`` and their run status in ``suite.sqlite``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        with self.connect() as connection:
            connection.execute(
                """CREATE TABLE IF NOT EXISTS cells (
                    cell_id TEXT PRIMARY KEY,
                    label TEXT,
                    status TEXT NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    cached INTEGER,
                    host TEXT,
                    pid INTEGER,
                    started REAL,
                    finished REAL,
                    wall_seconds REAL,
                    stages_run INTEGER,
                    eval_stages TEXT,
                    error TEXT
                )"""
            )

    @property
    def path(self) -> Path:
        return self.root / "suite.sqlite"

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=60)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            with connection:
                yield connection
        finally:
            connection.close()

    def cell_dir(self, cell_id: str) -> Path:
        return self.cells_dir / cell_id

    def log_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "cell.log"

    def write_spec(self, cell_id: str, spec: dict) -> None:
        """Store the cell's factors and experiment config, unless an equal spec is already there."""
        path = self.cell_dir(cell_id) / "cell.json"
        if path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(spec, default=str)):
            return
        atomic_write_json(path, spec)

    def read_spec(self, cell_id: str) -> dict:
        return json.loads((self.cell_dir(cell_id) / "cell.json").read_text())

    def register(self, cells: list[tuple[str, str]]) -> None:
        """Add (cell id, label) pairs as pending; cells already known keep their status."""
        with self.connect() as connection:
            connection.executemany(
                "INSERT INTO cells (cell_id, label, status) VALUES (?, ?, 'pending') ON CONFLICT(cell_id) DO NOTHING",
                cells,
            )

    def mark_running(self, cell_id: str) -> None:
        with self.connect() as connection:
            connection.execute(
                """UPDATE cells SET status='running', attempts=attempts+1, host=?, pid=?, started=?,
                   finished=NULL, error=NULL WHERE cell_id=?""",
                (socket.gethostname(), os.getpid(), time.time(), cell_id),
            )

    def mark_done(self, cell_id: str, stages_run: int, eval_stages: list[str], wall_seconds: float) -> None:
        with self.connect() as connection:
            connection.execute(
                """UPDATE cells SET status='done', cached=?, finished=?, wall_seconds=?, stages_run=?,
                   eval_stages=?, error=NULL WHERE cell_id=?""",
                (int(stages_run == 0), time.time(), wall_seconds, stages_run, json.dumps(eval_stages), cell_id),
            )

    def mark_failed(self, cell_id: str, error: str) -> None:
        with self.connect() as connection:
            connection.execute(
                "UPDATE cells SET status='failed', finished=?, error=? WHERE cell_id=?",
                (time.time(), error, cell_id),
            )

    def reset_attempts(self, cell_ids: list[str]) -> None:
        """Give each cell a fresh set of attempts for this invocation."""
        with self.connect() as connection:
            connection.executemany("UPDATE cells SET attempts=0 WHERE cell_id=?", [(c,) for c in cell_ids])

    def rows(self) -> list[dict]:
        with self.connect() as connection:
            connection.row_factory = sqlite3.Row
            found = connection.execute("SELECT * FROM cells ORDER BY rowid").fetchall()
        return [dict(row) for row in found]

    def statuses(self) -> dict[str, dict]:
        return {row["cell_id"]: row for row in self.rows()}
