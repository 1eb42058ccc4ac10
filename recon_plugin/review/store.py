"""The answers database: ``STUDY_DIR/answers.sqlite``.

Schema (version :data:`SCHEMA_VERSION`)::

    meta(key TEXT PRIMARY KEY, value TEXT)            -- schema_version, study_id
    answers(reader, item, preference, left_quality, left_artefacts, left_blurring,
            right_quality, right_artefacts, right_blurring, updated,
            PRIMARY KEY (reader, item))               -- one row per reader and item, upserted

Answers are stored as the reader saw them (``left``/``right``/``none`` and per-side scores); only
:mod:`recon_plugin.review.results` maps sides to methods. Every save is its own committed transaction
in WAL mode with ``synchronous=FULL``, so an answer acknowledged to the browser survives a killed server.
All SQL uses bound parameters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import AnswerError, CorruptDatabaseError, StudyVersionError
from .study import DB_FILE, RUBRIC, Study

SCHEMA_VERSION = 1
SIDES = ("left", "right")
PREFERENCES = ("left", "right", "none")
SCORE_FIELDS = tuple(f"{side}_{criterion}" for side in SIDES for criterion in RUBRIC)
FIELDS = ("preference", *SCORE_FIELDS)

_SCORE_CHECKS = ",\n".join(f"    {name} INTEGER CHECK ({name} BETWEEN 1 AND 5)" for name in SCORE_FIELDS)
_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE answers (
    reader TEXT NOT NULL,
    item TEXT NOT NULL,
    preference TEXT CHECK (preference IN ('left', 'right', 'none')),
{_SCORE_CHECKS},
    updated TEXT NOT NULL,
    PRIMARY KEY (reader, item)
);
"""
_UPSERT = (
    f"INSERT INTO answers (reader, item, {', '.join(FIELDS)}, updated) "
    f"VALUES (?, ?, {', '.join('?' for _ in FIELDS)}, ?) "
    f"ON CONFLICT (reader, item) DO UPDATE SET {', '.join(f'{f} = excluded.{f}' for f in FIELDS)}, "
    "updated = excluded.updated"
)


def validate_answer(kind: str, payload: Any) -> dict[str, Any]:
    """A posted answer -> the row's fields; missing values are None (an answer may be partial).

    ``payload`` is ``{"preference": "left"|"right"|"none"|null, "scores": {"left": {"quality": 1..5|null,
    "artefacts": ..., "blurring": ...}, "right": {...}}}``; single-image items take no preference and no
    right-hand scores.

    Raises:
        AnswerError: anything else (unknown keys, wrong types, scores outside 1..5).
    """
    if not isinstance(payload, Mapping):
        raise AnswerError("the answer must be a JSON object")
    unknown = set(payload) - {"preference", "scores"}
    if unknown:
        raise AnswerError(f"unknown answer fields: {', '.join(sorted(map(str, unknown)))}")
    row: dict[str, Any] = dict.fromkeys(FIELDS)
    preference = payload.get("preference")
    if preference is not None:
        if kind != "pair":
            raise AnswerError("a single-image item takes no preference")
        if preference not in PREFERENCES:
            raise AnswerError(f"preference must be one of {', '.join(PREFERENCES)} or null")
        row["preference"] = preference
    scores = payload.get("scores") or {}
    if not isinstance(scores, Mapping):
        raise AnswerError("scores must be an object by side")
    sides = SIDES if kind == "pair" else SIDES[:1]
    for side, values in scores.items():
        if side not in sides:
            raise AnswerError(f"scores for side {side!r}: this item has sides {', '.join(sides)}")
        if not isinstance(values, Mapping):
            raise AnswerError(f"scores.{side} must be an object by criterion")
        for criterion, value in values.items():
            if criterion not in RUBRIC:
                raise AnswerError(f"unknown criterion {criterion!r} (criteria: {', '.join(RUBRIC)})")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise AnswerError(f"score {side}.{criterion} must be an integer from 1 to 5, not {value!r}")
            row[f"{side}_{criterion}"] = value
    return row


def is_complete(kind: str, row: Mapping[str, Any] | None) -> bool:
    """Whether an answer row holds everything its item asks for."""
    if row is None:
        return False
    needed = FIELDS if kind == "pair" else tuple(f"left_{c}" for c in RUBRIC)
    return all(row.get(name) is not None for name in needed)


def row_to_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row -> the API's answer shape."""
    return {
        "preference": row.get("preference"),
        "scores": {side: {c: row.get(f"{side}_{c}") for c in RUBRIC} for side in SIDES},
    }


class AnswerStore:
    """Opens and checks the study's database; one short connection per operation (thread safe)."""

    def __init__(self, study: Study) -> None:
        self.path = Path(study.root) / DB_FILE
        self.study_id = str(study.data["study_id"])
        self._check()

    @classmethod
    def create(cls, study: Study) -> AnswerStore:
        """Make a new database for ``study`` (the file must not exist)."""
        path = Path(study.root) / DB_FILE
        if path.exists():
            raise CorruptDatabaseError(f"{path} already exists; a new study needs a new folder")
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            with conn:
                conn.executescript(_SCHEMA)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("study_id", str(study.data["study_id"]))],
                )
        finally:
            conn.close()
        return cls(study)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.IntegrityError):
                raise AnswerError(f"the database refused the answer ({exc})") from exc
            raise CorruptDatabaseError(f"{self.path} cannot be used, it is corrupt ({exc})") from exc
        finally:
            conn.close()

    def _check(self) -> None:
        if not self.path.is_file():
            raise CorruptDatabaseError(f"{self.path} is missing; the study folder is incomplete")
        with self._connect() as conn:
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise CorruptDatabaseError(f"{self.path} fails SQLite's integrity check, it is corrupt")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = ?", ("table",))}
            if not {"meta", "answers"} <= tables:
                raise CorruptDatabaseError(f"{self.path} is not a reader-study database (tables: {sorted(tables)})")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema_version", "")
        if version != str(SCHEMA_VERSION):
            age = "an older" if version.isdigit() and int(version) < SCHEMA_VERSION else "a newer or unknown"
            raise StudyVersionError(
                f"{self.path} was written by {age} version of the review tool (schema {version!r}, this tool "
                f"uses {SCHEMA_VERSION}); use the matching version to read it"
            )
        if meta.get("study_id") != self.study_id:
            raise CorruptDatabaseError(f"{self.path} belongs to another study (its study id does not match study.json)")

    def save(self, reader: str, item: str, row: Mapping[str, Any]) -> None:
        """Insert or replace the answer of ``reader`` to ``item`` (one row per pair, never duplicated)."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        values = [reader, item, *(row.get(name) for name in FIELDS), now]
        with self._connect() as conn, conn:
            conn.execute(_UPSERT, values)

    def answers(self, reader: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """Stored answers by (reader, item), of one reader or all."""
        query = f"SELECT reader, item, {', '.join(FIELDS)}, updated FROM answers"
        params: tuple[str, ...] = ()
        if reader is not None:
            query += " WHERE reader = ?"
            params = (reader,)
        with self._connect() as conn:
            rows = conn.execute(query, params).fetchall()
        return {(r["reader"], r["item"]): dict(r) for r in rows}
