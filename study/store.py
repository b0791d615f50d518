"""Run directories, content-hashed stage artifacts and atomic writes.

Each stage writes into ``RUN_DIR/stages/<kind>-<hash>/``, where the hash
covers everything that determines the artifact (config slice, upstream
hashes, seeds, template and package versions). A stage is complete once its
``manifest.json`` exists; work in progress lives in a ``.partial`` folder
that is renamed into place at the end, so a killed stage never looks done.
Row files in a partial folder are appended batch by batch and keyed by a
row id, so a resumed stage skips what it already wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from study import __version__

TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "gguf",
    "safetensors",
    "pydantic",
    "numpy",
    "pandas",
    "openai",
    "anthropic",
)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(value: Any, length: int = 16) -> str:
    """Hash a JSON-serializable value independent of key order."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"study": __version__, "python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision() -> str | None:
    """Return the checkout's commit (with '+dirty' for local edits), if any."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        revision = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return revision + ("+dirty" if dirty else "")


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file, ignoring a torn last line left by a killed writer."""
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            rows.append(json.loads(line))
    return rows


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


class RowLog:
    """An append-only JSONL file of rows keyed by ``id``, safe to resume.

    On open, a torn last line is cut off and the ids already present are
    loaded, so a caller can skip the work for them. Each ``append`` writes
    whole lines and fsyncs, so a kill loses at most the batch in flight.
    """

    def __init__(self, path: Path, key: str = "id"):
        self.path = path
        self.key = key
        self.rows: dict[Any, dict] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._truncate_torn_line()
            for row in read_jsonl(path):
                self.rows.setdefault(row[key], row)

    def _truncate_torn_line(self) -> None:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)

    def __contains__(self, row_id: Any) -> bool:
        return row_id in self.rows

    def append(self, rows: Iterable[dict]) -> None:
        fresh = [row for row in rows if row[self.key] not in self.rows]
        if not fresh:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            for row in fresh:
                handle.write(json.dumps(row, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for row in fresh:
            self.rows[row[self.key]] = row


@dataclass(frozen=True)
class Stage:
    """A stage artifact folder; ``path`` is final once ``complete`` is true."""

    kind: str
    key: dict
    digest: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def partial(self) -> Path:
        return self.path.with_name(self.path.name + ".partial")

    @property
    def complete(self) -> bool:
        return (self.path / "manifest.json").exists()

    def workdir(self) -> Path:
        """Return the folder to write into while the stage runs."""
        if self.complete:
            return self.path
        self.partial.mkdir(parents=True, exist_ok=True)
        return self.partial

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on this stage, so concurrent cells run it once.

        Uses flock on ``stages/.locks/<stage>.lock``: reliable between
        processes of one machine; on network filesystems flock support varies.
        """
        import fcntl

        locks = self.path.parent / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{self.path.name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    def finish(self, extra: dict | None = None, seconds: float | None = None) -> None:
        """Write the manifest into the partial folder and rename it into place."""
        if self.complete:
            return
        workdir = self.workdir()
        manifest = {
            "stage": self.kind,
            "hash": self.digest,
            "key": self.key,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": seconds,
            "git_revision": git_revision(),
            "package_versions": package_versions(),
            "host": {"platform": platform.platform(), "python": sys.version.split()[0]},
            **(extra or {}),
        }
        atomic_write_json(workdir / "manifest.json", manifest)
        if self.path.exists():
            # A folder without a manifest is debris from an older layout.
            shutil.rmtree(self.path)
        os.replace(workdir, self.path)


class RunStore:
    """A run directory with stage folders and a SQLite index of stage runs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.stages_dir = self.root / "stages"
        self.results_dir = self.root / "results"
        self.stages_dir.mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._init_index()

    @property
    def index_path(self) -> Path:
        return self.root / "index.sqlite"

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.index_path, timeout=30)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            with connection:
                yield connection
        finally:
            connection.close()

    def _init_index(self) -> None:
        with self.connect() as connection:
            connection.execute(
                """CREATE TABLE IF NOT EXISTS stage_runs (
                    name TEXT PRIMARY KEY,
                    kind TEXT NOT NULL,
                    status TEXT NOT NULL,
                    label TEXT,
                    started REAL,
                    finished REAL,
                    wall_seconds REAL,
                    error TEXT
                )"""
            )

    def stage(self, kind: str, key: dict) -> Stage:
        digest = content_hash(key)
        return Stage(kind=kind, key=key, digest=digest, path=self.stages_dir / f"{kind}-{digest}")

    def record(self, stage: Stage, status: str, label: str | None = None,
               wall_seconds: float | None = None, error: str | None = None) -> None:
        now = time.time()
        with self.connect() as connection:
            connection.execute(
                """INSERT INTO stage_runs (name, kind, status, label, started, finished, wall_seconds, error)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET
                     status=excluded.status,
                     label=COALESCE(excluded.label, stage_runs.label),
                     started=CASE WHEN excluded.status='running' THEN excluded.started ELSE stage_runs.started END,
                     finished=excluded.finished,
                     wall_seconds=COALESCE(excluded.wall_seconds, stage_runs.wall_seconds),
                     error=excluded.error""",
                (stage.name, stage.kind, status, label, now,
                 None if status == "running" else now, wall_seconds, error),
            )

    def stage_runs(self) -> list[dict]:
        with self.connect() as connection:
            connection.row_factory = sqlite3.Row
            rows = connection.execute("SELECT * FROM stage_runs ORDER BY started").fetchall()
        return [dict(row) for row in rows]
