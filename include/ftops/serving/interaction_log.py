"""Writing the interaction log: a durable local spool first, the warehouse in batches after.

Every served call goes through :class:`InteractionLogger`. ``log`` appends the row as one JSON line to
``active.jsonl`` in the spool folder and fsyncs before it returns, so a gateway answers only once its row would
survive a crash. ``flush`` renames the active file to a numbered segment, inserts it into the warehouse in
batches (ids already present are skipped) and deletes it only after its inserts committed: a crash at any
point loses no row, and a replay inserts each row once. While the warehouse is down, rows stay spooled.
One logger owns a spool folder at a time (an exclusive file lock, released when its process dies).
:func:`import_jsonl` loads a JSONL file of such rows for applications that call their models themselves.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ftops.core.config import ftops_home
from ftops.core.names import check_task_type, key_digest
from ftops.warehouse.schema import INTERACTION_COLUMNS, WarehouseUnavailableError, insert_interactions

log = logging.getLogger(__name__)

ACTIVE = "active.jsonl"
_SEGMENT = "segment-{:08d}.jsonl"
REJECTED = "rejected.jsonl"  # spooled lines that could not be read back, kept for a person


def default_spool_dir(table: str = "interactions") -> Path:
    """``FTOPS_HOME/spool/<table>``."""
    return ftops_home() / "spool" / check_task_type(table)


def check_row(row: Mapping[str, Any], *, fill: bool = True) -> dict[str, Any]:
    """A log row checked against the interaction schema, as JSON-ready values.

    Args:
        row: Fields of the interaction log (see ``INTERACTION_COLUMNS``).
        fill: Generate a missing ``id`` (uuid4 hex) and ``timestamp`` (now, UTC). Without it a missing
            timestamp is an error and a missing id is derived from the row's content, so loading one file twice
            inserts its rows once.

    Returns:
        The row with every column; ``timestamp`` an ISO 8601 UTC string, ``metadata`` text.

    Raises:
        ValueError: A field is unknown, missing or of the wrong type or range (the message names it).
    """
    unknown = sorted(set(row) - set(INTERACTION_COLUMNS))
    if unknown:
        raise ValueError(f"unknown fields {unknown}")
    out: dict[str, Any] = {c: row.get(c) for c in INTERACTION_COLUMNS}
    out["task_type"] = check_task_type(out["task_type"])
    for name in ("prompt", "response", "model_version", "user_id", "key_id"):
        if out[name] is not None and not isinstance(out[name], str):
            raise ValueError(f"{name} must be text, got {type(out[name]).__name__}")
    feedback = out["user_feedback"]
    if feedback is not None and (isinstance(feedback, bool) or not isinstance(feedback, int) or not 1 <= feedback <= 5):
        raise ValueError(f"user_feedback must be an integer 1-5 or null, got {feedback!r}")
    for name in ("success", "task_success"):
        if out[name] is not None and not isinstance(out[name], bool):
            raise ValueError(f"{name} must be true, false or null, got {out[name]!r}")
    conf = out["confidence"]
    if conf is not None and (isinstance(conf, bool) or not isinstance(conf, int | float) or not math.isfinite(conf)):
        raise ValueError(f"confidence must be a finite number or null, got {conf!r}")
    for name, v in (("latency_ms", out["latency_ms"]), ("tokens_used", out["tokens_used"])):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{name} must be a non-negative integer or null, got {v!r}")
    if out["metadata"] is not None and not isinstance(out["metadata"], str):
        try:
            out["metadata"] = json.dumps(out["metadata"], sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be text or JSON-serialisable: {exc}") from None
    out["timestamp"] = _timestamp(out["timestamp"], fill=fill)
    if out["id"] is None:
        out["id"] = uuid.uuid4().hex if fill else "h" + key_digest(json.dumps(out, sort_keys=True))[:31]
    if not isinstance(out["id"], str) or not out["id"]:
        raise ValueError(f"id must be non-empty text, got {out['id']!r}")
    return out


def _timestamp(value: Any, *, fill: bool) -> str:
    if value is None and not fill:
        raise ValueError("timestamp is missing")
    value = datetime.now(UTC) if value is None else value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not ISO 8601") from None
    if not isinstance(value, datetime):
        raise ValueError(f"timestamp must be a datetime or ISO 8601 text, got {type(value).__name__}")
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)  # naive means UTC
    return value.isoformat()


def _db_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {**row, "timestamp": datetime.fromisoformat(row["timestamp"])}


def _first_of_each_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with ids unique within the batch: one insert statement cannot hold an id twice."""
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(r["id"], r)
    if len(first) < len(rows):
        log.warning("%s spooled rows repeat an earlier row's id; the first of each id is kept", len(rows) - len(first))
    return list(first.values())


class InteractionLogger:
    """Appends interaction rows to a durable spool and moves them to the warehouse in batches.

    Args:
        engine: The warehouse (its interaction table must exist: ``ensure_schema``).
        table: The interaction log table.
        spool_dir: The spool folder; default ``FTOPS_HOME/spool/<table>``.
        flush_every_s: The background thread (:meth:`start`) flushes at least this often ...
        flush_rows: ... and as soon as this many rows are spooled.
        batch_rows: Rows per warehouse insert.

    Raises:
        RuntimeError: Another live logger owns the spool folder.
    """

    def __init__(
        self,
        engine: sa.Engine,
        table: str = "interactions",
        spool_dir: str | Path | None = None,
        *,
        flush_every_s: float = 5.0,
        flush_rows: int = 500,
        batch_rows: int = 1000,
    ) -> None:
        self.engine, self.table = engine, table
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir(table)
        self.flush_every_s, self.flush_rows, self.batch_rows = flush_every_s, flush_rows, batch_rows
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.spool_dir / "spool.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(f"spool folder {self.spool_dir} is in use by another interaction logger") from None
        self._write_lock = threading.Lock()  # the active file: appends and rotation
        self._sync_lock = threading.Lock()  # one fsync at a time, covering every row appended before it
        self._written = self._synced = 0  # rows appended / rows known durable (group commit)
        self._flush_lock = threading.Lock()  # segments: one flush at a time
        self._pending, self._fd = 0, -1
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        # A crashed writer's active file may end in a torn line; move it aside before appending anything.
        self._next_segment = max((int(p.stem.split("-")[1]) for p in self._segments()), default=0) + 1
        with self._write_lock:
            self._rotate()
            self._open_active()

    def log(self, **row: Any) -> str:
        """Append one interaction row to the spool, durably (fsynced) before returning.

        Args:
            **row: Fields of the interaction log; ``id`` (uuid4 hex) and ``timestamp`` (now, UTC) when missing.

        Returns:
            The row's id.

        Raises:
            ValueError: The row does not fit the interaction schema (nothing is written).
        """
        checked = check_row(row, fill=True)
        line = (json.dumps(checked, ensure_ascii=False, allow_nan=False) + "\n").encode()
        with self._write_lock:
            if self._fd < 0:
                raise RuntimeError("interaction logger is closed")
            os.write(self._fd, line)  # O_APPEND: one write per row
            self._written += 1
            mine = self._written
            self._pending += 1
            due = self._pending >= self.flush_rows
        with self._sync_lock:  # group commit: rows appended while another fsync ran share the next one
            if self._synced < mine:
                with self._write_lock:
                    fd, upto = self._fd, self._written
                os.fsync(fd)  # open: closing it needs the sync lock
                self._synced = upto
        if due:
            self._wake.set()
        return str(checked["id"])

    def _open_active(self) -> None:
        self._fd = os.open(self.spool_dir / ACTIVE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _rotate(self) -> None:
        """Rename a non-empty active file to the next segment (caller holds the write lock, file closed)."""
        active = self.spool_dir / ACTIVE
        if active.exists() and active.stat().st_size > 0:
            active.rename(self.spool_dir / _SEGMENT.format(self._next_segment))
            self._next_segment += 1
            _fsync_dir(self.spool_dir)
        self._pending, self._fd = 0, -1

    def _segments(self) -> list[Path]:
        return sorted(self.spool_dir.glob("segment-*.jsonl"))

    def flush(self) -> int:
        """Move spooled rows to the warehouse (they stay spooled while it is down); returns how many were new."""
        with self._flush_lock:
            # Segments left by a crash or a failed flush first: while the warehouse is down the active file
            # grows instead of leaving a segment per attempt.
            inserted = self._insert_segments()
            if inserted is None:
                return 0
            with self._sync_lock, self._write_lock:
                if self._fd >= 0 and (self.spool_dir / ACTIVE).stat().st_size > 0:
                    os.fsync(self._fd)  # rows whose log() waits for its fsync are durable before the rename
                    self._synced = self._written
                    os.close(self._fd)
                    self._rotate()
                    self._open_active()
            more = self._insert_segments()
            return inserted + (more or 0)

    def _insert_segments(self) -> int | None:
        """Insert every segment, oldest first; None when the warehouse cannot be reached."""
        inserted = 0
        for segment in self._segments():
            try:
                inserted += self._insert_segment(segment)
            except (WarehouseUnavailableError, sa.exc.OperationalError) as exc:
                log.warning("Warehouse unavailable, %s rows stay spooled in %s: %s", self.spooled(), self.spool_dir,
                            str(exc).splitlines()[0][:300])  # fmt: skip
                return None
        return inserted

    def _insert_segment(self, segment: Path) -> int:
        rows, bad = self._read_segment(segment)
        rows = _first_of_each_id(rows)
        new = 0
        for i in range(0, len(rows), self.batch_rows):
            new += insert_interactions(self.engine, [_db_row(r) for r in rows[i : i + self.batch_rows]], self.table)
        if bad:  # kept for a person, once: only after the rows committed, as a failed insert reads them again
            with open(self.spool_dir / REJECTED, "ab") as f:
                f.write(b"".join(raw + b"\n" for raw in bad))
                os.fsync(f.fileno())
        segment.unlink()  # only now: every batch of it has committed
        _fsync_dir(self.spool_dir)
        log.info("Flushed %s: %s rows, %s new in %s, %s already there", segment.name, len(rows), new, self.table,
                 len(rows) - new)  # fmt: skip
        return new

    def _read_segment(self, segment: Path) -> tuple[list[dict[str, Any]], list[bytes]]:
        lines = segment.read_bytes().split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline; otherwise a write cut short by a crash
        if torn:
            log.warning("%s ends in a torn line (%s bytes) from a crash before its fsync; that call was never "
                        "answered, so the line is dropped", segment.name, len(torn))  # fmt: skip
        rows, bad = [], []
        for n, raw in enumerate(lines, 1):
            try:
                rows.append(check_row(json.loads(raw), fill=False))
            except ValueError as exc:  # includes JSONDecodeError
                log.error("%s line %s cannot be read (%s); it goes to %s", segment.name, n, exc, REJECTED)
                bad.append(raw)
        return rows, bad

    def spooled(self) -> int:
        """How many rows wait in the spool (lines in the active file and in segments)."""
        files = [*self._segments(), self.spool_dir / ACTIVE]
        return sum(p.read_bytes().count(b"\n") for p in files if p.exists())

    def replay(self) -> int:
        """Insert whatever an earlier, crashed logger left in the spool; returns how many rows were new."""
        if left := self.spooled():
            log.warning("Replaying %s spooled rows left in %s", left, self.spool_dir)
        return self.flush()

    def start(self) -> None:
        """Replay the spool, then flush in a background thread every ``flush_every_s`` or ``flush_rows`` rows."""
        if self._thread is not None:
            return
        self.replay()
        self._thread = threading.Thread(target=self._run, name=f"ftops-spool-{self.table}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the thread must outlive one bad flush; the rows stay spooled
                log.exception("Flushing %s failed; rows stay spooled and the next flush retries", self.spool_dir)

    def close(self) -> None:
        """Stop the background thread, flush once more, and release the spool folder."""
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self._lock_fd < 0:
            return
        try:
            self.flush()
        finally:
            with self._sync_lock, self._write_lock:
                os.close(self._fd)
                self._fd = -1
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> InteractionLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class ImportResult:
    """What :func:`import_jsonl` did with every line: ``lines == inserted + duplicates + len(rejected)``."""

    lines: int = 0
    inserted: int = 0  # rows new in the warehouse
    duplicates: int = 0  # rows whose id was already in the warehouse or earlier in the file
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason); nothing of it inserted


def import_jsonl(
    path: str | Path, engine: sa.Engine, table: str = "interactions", *, batch_rows: int = 1000
) -> ImportResult:
    """Load a JSONL file of interaction rows into the warehouse, in batches, each row checked.

    A row without an ``id`` gets one derived from its content, so importing a file again inserts nothing
    twice; a row without a ``timestamp`` is rejected (the time of the import would be wrong).

    Args:
        path: One JSON object per line.
        engine: The warehouse (its interaction table must exist).
        table: The interaction log table.
        batch_rows: Rows per insert.

    Returns:
        Counts of inserted and duplicate lines, and each rejected line's number and reason.

    Raises:
        WarehouseUnavailableError: The warehouse cannot be reached (batches before it stay inserted; a rerun
            skips them as duplicates).
    """
    result = ImportResult()
    batch: list[dict[str, Any]] = []
    seen: set[str] = set()

    def insert() -> None:
        try:
            new = insert_interactions(engine, [_db_row(r) for r in batch], table)
        except sa.exc.OperationalError as exc:
            raise WarehouseUnavailableError(f"import of {path} stopped at line {result.lines}: {exc.orig}") from exc
        result.inserted += new
        result.duplicates += len(batch) - new
        batch.clear()

    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            result.lines += 1
            try:
                text = raw.decode("utf-8").strip()
                if not text:
                    raise ValueError("empty line")
                obj = json.loads(text)
                if not isinstance(obj, dict):
                    raise ValueError(f"not a JSON object but {type(obj).__name__}")
                row = check_row(obj, fill=False)
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                result.rejected.append((n, str(exc)[:300]))
                continue
            if row["id"] in seen:
                result.duplicates += 1
                continue
            seen.add(row["id"])
            batch.append(row)
            if len(batch) >= batch_rows:
                insert()
    if batch:
        insert()
    if result.rejected:
        log.warning("%s: %s of %s lines rejected, first: line %s: %s", path, len(result.rejected), result.lines,
                    *result.rejected[0])  # fmt: skip
    log.info("Imported %s: %s lines, %s inserted, %s duplicates, %s rejected", path, result.lines, result.inserted,
             result.duplicates, len(result.rejected))  # fmt: skip
    return result
