"""SQLite store for judge verdicts, open batches and the cost ledger.

One row per judgment request, keyed by everything that determines the
reply: provider, model id, base URL, template id and version, rendered
prompt hash, sampling settings, scoring method and sample index. Only
verdicts from well-formed replies are stored (see ``Judgment.cacheable``),
so errors and provider refusals are sent again on the next run.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from study.judge.scoring import Judgment, Usage
from study.store import content_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    base_url TEXT NOT NULL,
    template_id TEXT NOT NULL,
    template_version INTEGER NOT NULL,
    prompt_hash TEXT NOT NULL,
    sampling TEXT NOT NULL,
    scoring TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    status TEXT NOT NULL,
    score REAL,
    reason_code TEXT NOT NULL,
    detail TEXT NOT NULL,
    numeric_mass REAL,
    top_logprobs TEXT,
    reply_text TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    request_id TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    judge TEXT NOT NULL,
    base_url TEXT NOT NULL,
    input_file_id TEXT,
    status TEXT NOT NULL,
    requests TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    judge TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    batch INTEGER NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class CacheKey:
    provider: str
    model: str
    base_url: str
    template_id: str
    template_version: int
    prompt_hash: str
    sampling: dict
    scoring: str
    sample_index: int

    @property
    def digest(self) -> str:
        return content_hash(
            {
                "provider": self.provider, "model": self.model, "base_url": self.base_url,
                "template_id": self.template_id, "template_version": self.template_version,
                "prompt_hash": self.prompt_hash, "sampling": self.sampling,
                "scoring": self.scoring, "sample_index": self.sample_index,
            },
            length=32,
        )


class JudgmentCache:
    """Thread-safe access to the judge database (WAL mode, one connection per thread)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as connection:
            connection.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # Verdicts

    def get(self, key: CacheKey) -> Judgment | None:
        row = self._connect().execute(
            """SELECT status, score, reason_code, detail, numeric_mass, top_logprobs, reply_text,
                      input_tokens, output_tokens, request_id FROM judgments WHERE key = ?""",
            (key.digest,),
        ).fetchone()
        if row is None:
            return None
        status, score, reason_code, detail, mass, top, text, tokens_in, tokens_out, request_id = row
        return Judgment(
            status=status, score=score, reason_code=reason_code, detail=detail,
            numeric_mass=mass,
            top_logprobs=[tuple(pair) for pair in json.loads(top)] if top else None,
            text=text, usage=Usage(tokens_in, tokens_out), request_id=request_id,
        )

    def put(self, key: CacheKey, judgment: Judgment) -> bool:
        """Store a verdict if it is cacheable; return whether it was stored."""
        if not judgment.cacheable:
            return False
        with self._connect() as connection:
            connection.execute(
                """INSERT OR REPLACE INTO judgments VALUES
                   (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    key.digest, key.provider, key.model, key.base_url, key.template_id,
                    key.template_version, key.prompt_hash, json.dumps(key.sampling, sort_keys=True),
                    key.scoring, key.sample_index, judgment.status, judgment.score,
                    judgment.reason_code, judgment.detail, judgment.numeric_mass,
                    json.dumps(judgment.top_logprobs) if judgment.top_logprobs is not None else None,
                    judgment.text, judgment.usage.input_tokens, judgment.usage.output_tokens,
                    judgment.request_id, time.time(),
                ),
            )
        return True

    def count(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    # Batches

    def add_batch(self, batch_id: str, provider: str, judge: str, base_url: str,
                  requests: dict[str, dict], input_file_id: str | None = None) -> None:
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, 'submitted', ?, ?, NULL)",
                (batch_id, provider, judge, base_url, input_file_id, json.dumps(requests), time.time()),
            )

    def open_batches(self, provider: str, judge: str, base_url: str) -> list[dict]:
        rows = self._connect().execute(
            """SELECT batch_id, input_file_id, requests FROM batches
               WHERE provider = ? AND judge = ? AND base_url = ? AND finished IS NULL
               ORDER BY created""",
            (provider, judge, base_url),
        ).fetchall()
        return [
            {"batch_id": batch_id, "input_file_id": file_id, "requests": json.loads(requests)}
            for batch_id, file_id, requests in rows
        ]

    def finish_batch(self, batch_id: str, status: str) -> None:
        with self._connect() as connection:
            connection.execute(
                "UPDATE batches SET status = ?, finished = ? WHERE batch_id = ?",
                (status, time.time(), batch_id),
            )

    # Ledger

    def record_cost(self, judge: str, model: str, usage: Usage, cost_usd: float, batch: bool) -> None:
        with self._connect() as connection:
            connection.execute(
                """INSERT INTO ledger (judge, model, input_tokens, output_tokens, cost_usd, batch, created)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (judge, model, usage.input_tokens, usage.output_tokens, cost_usd, int(batch), time.time()),
            )

    def total_cost(self) -> float:
        return self._connect().execute("SELECT COALESCE(SUM(cost_usd), 0) FROM ledger").fetchone()[0]
