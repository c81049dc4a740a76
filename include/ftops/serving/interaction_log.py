"""Writing the interaction log: a durable local spool first, the warehouse in batches after.

Every served call goes through :class:`InteractionLogger`. ``log`` checks the row (:func:`check_row`), appends
it as one JSON line to ``active.jsonl`` in the spool folder and fsyncs before it returns, so a gateway answers
only once its row would survive a crash. The active file becomes a numbered segment when it reaches
``segment_bytes`` (also while the warehouse is down) and at each flush. ``flush`` streams each segment into the
warehouse ``batch_rows`` at a time (ids already present are skipped) and deletes it only after every batch
committed: a crash at any point loses no row, and a replay inserts each row once.

Nothing a row holds can stop the loop. A batch the warehouse refuses is bisected (:mod:`ftops.warehouse.
bisect_insert`): only the rows refused on their own go to ``rejected.jsonl`` with the reason (``ftops spool``
lists them), the others are inserted. An unreachable warehouse or a table that refuses every row rejects
nothing: rows stay spooled, and :meth:`~InteractionLogger.health` says why. The spool is capped at
``max_bytes``: once full, ``log`` raises :class:`SpoolFullError` without writing (the gateway answers 503).

One logger owns a spool folder at a time (an exclusive file lock, released when its process dies). The folder
is 0700 and its files 0600: they hold prompts.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ftops.core.config import ftops_home
from ftops.core.files import private_dir
from ftops.core.names import check_task_type
from ftops.serving.spool_rows import (
    ACTIVE,
    LOCK,
    REJECTED,
    SEGMENT,
    check_row,
    count_lines,
    db_row,
    rejected_line,
    segments,
    spool_files,
)
from ftops.warehouse.bisect_insert import UNAVAILABLE, WarehouseRefusedError, error_text, insert_or_bisect
from ftops.warehouse.schema import WarehouseUnavailableError

log = logging.getLogger(__name__)

MIB = 1024 * 1024


class SpoolFullError(RuntimeError):
    """The spool holds ``max_bytes`` already (the warehouse has been unreachable for long): nothing was written."""


def default_spool_dir(table: str = "interactions") -> Path:
    """``FTOPS_HOME/spool/<table>``."""
    return ftops_home() / "spool" / check_task_type(table)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may take fewer bytes than given)."""
    view, done = memoryview(data), 0
    while done < len(data):
        n = os.write(fd, view[done:])
        if n <= 0:
            raise OSError(errno.EIO, "the spool file took no bytes")
        done += n


def _open_private(path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask, and for files an older version made 0644
    return fd


class InteractionLogger:
    """Appends interaction rows to a durable spool and moves them to the warehouse in batches.

    Args:
        engine: The warehouse (its interaction table must exist: ``ensure_schema``).
        table: The interaction log table.
        spool_dir: The spool folder; default ``FTOPS_HOME/spool/<table>``.
        flush_every_s: The background thread (:meth:`start`) flushes at least this often ...
        flush_rows: ... and as soon as this many rows are spooled.
        batch_rows: Rows per warehouse insert, and the most rows of a segment held in memory.
        segment_bytes: The active file becomes a segment once it is this large.
        max_bytes: The spool's cap (active file and segments): :meth:`log` refuses rows past it.

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
        segment_bytes: int = 16 * MIB,
        max_bytes: int = 1024 * MIB,
    ) -> None:
        self.engine, self.table = engine, table
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir(table)
        self.flush_every_s, self.flush_rows, self.batch_rows = flush_every_s, flush_rows, batch_rows
        self.segment_bytes, self.max_bytes = segment_bytes, max_bytes
        private_dir(self.spool_dir, force=True)
        self._lock_fd = _open_private(self.spool_dir / LOCK, os.O_RDWR)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(f"spool folder {self.spool_dir} is in use by another interaction logger") from None
        for p in self.spool_dir.glob("*.jsonl"):
            os.chmod(p, 0o600)  # files an older version left world-readable
        self._write_lock = threading.Lock()  # the active file, rotation and the running counts
        self._sync_lock = threading.Lock()  # one fsync at a time, covering every row appended before it
        self._written = self._synced = 0  # rows appended / rows known durable (group commit)
        self._flush_lock = threading.Lock()  # segments: one flush at a time
        self._pending, self._fd, self._active_bytes = 0, -1, 0
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        # Counted once here by streaming the files, then kept up to date: health() and spooled() read no file.
        files = spool_files(self.spool_dir)
        self._rows = sum(count_lines(p) for p in files)
        self._bytes = sum(p.stat().st_size for p in files)
        rejected = self.spool_dir / REJECTED
        self._rejected = count_lines(rejected) if rejected.exists() else 0
        self._full = False  # a row was refused for want of space, and no flush has freed any since
        self._flush_error: str | None = None
        self._last_flush_at: datetime | None = None
        self._resume: dict[str, tuple[int, int]] = {}  # segment -> (bytes, lines) committed by an interrupted flush
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
            SpoolFullError: The spool is full (nothing is written).
        """
        checked = check_row(row, fill=True)
        line = (json.dumps(checked, ensure_ascii=False, allow_nan=False) + "\n").encode()  # no surrogate: checked
        with self._write_lock:
            if self._fd < 0:
                raise RuntimeError("interaction logger is closed")
            if self._bytes + len(line) > self.max_bytes:
                self._full = True
                raise SpoolFullError(f"the spool {self.spool_dir} holds {self._bytes} bytes of at most "
                                     f"{self.max_bytes}; rows are refused until the warehouse takes them")  # fmt: skip
            try:
                _write_all(self._fd, line)  # O_APPEND: the row's bytes follow the previous row's
            except BaseException:
                os.ftruncate(self._fd, self._active_bytes)  # no partial line before the next row
                raise
            self._written += 1
            mine = self._written
            self._pending += 1
            self._rows, self._bytes, self._active_bytes = self._rows + 1, self._bytes + len(line), self._active_bytes + len(line)
            due = self._pending == self.flush_rows  # wake the flusher once per batch, not on every row while down
            rotate = self._active_bytes >= self.segment_bytes
        with self._sync_lock:  # group commit: rows appended while another fsync ran share the next one
            if self._synced < mine:
                with self._write_lock:
                    fd, upto = self._fd, self._written
                os.fsync(fd)  # open: closing it needs the sync lock
                self._synced = upto
        if rotate:  # by size, also while the warehouse is down: recovery never reads one huge file
            self._rotate_active(min_bytes=self.segment_bytes)
        if due:
            self._wake.set()
        return str(checked["id"])

    def _open_active(self) -> None:
        path = self.spool_dir / ACTIVE
        created = not path.exists()
        self._fd = _open_private(path, os.O_WRONLY | os.O_APPEND)
        self._active_bytes = os.fstat(self._fd).st_size
        if created:
            _fsync_dir(self.spool_dir)  # the new file's name survives a crash with the rows in it

    def _rotate(self) -> None:
        """Rename a non-empty active file to the next segment (caller holds the write lock, file closed)."""
        active = self.spool_dir / ACTIVE
        if active.exists() and active.stat().st_size > 0:
            active.rename(self.spool_dir / SEGMENT.format(self._next_segment))
            self._next_segment += 1
            _fsync_dir(self.spool_dir)
        self._fd, self._active_bytes = -1, 0

    def _rotate_active(self, min_bytes: int = 1) -> None:
        """Make the active file a segment if it holds at least ``min_bytes``, durably, and open a new one."""
        with self._sync_lock, self._write_lock:
            if self._fd >= 0 and self._active_bytes >= min_bytes:
                os.fsync(self._fd)  # rows whose log() waits for its fsync are durable before the rename
                self._synced = self._written
                os.close(self._fd)
                self._rotate()
                self._pending = 0
                self._open_active()

    def _segments(self) -> list[Path]:
        return segments(self.spool_dir)

    def flush(self) -> int:
        """Move spooled rows to the warehouse (they stay spooled while it is down); returns how many were new.

        Rows the warehouse refuses one by one go to the rejected file; nothing a row holds makes this raise.
        """
        with self._flush_lock:
            # Segments left by a crash or a failed flush first: while the warehouse is down the active file
            # grows (up to segment_bytes) instead of leaving a segment per attempt.
            inserted, ok = self._insert_segments()
            if ok:
                self._rotate_active()
                more, ok = self._insert_segments()
                inserted += more
            if ok:
                self._flush_error, self._last_flush_at = None, datetime.now(UTC)
            return inserted

    def _insert_segments(self) -> tuple[int, bool]:
        """Insert every segment, oldest first; False once the warehouse is unreachable or refuses every row."""
        inserted = 0
        for segment in self._segments():
            try:
                if self._flush_error and segment.name not in self._resume:
                    self._probe()  # still down? ask before parsing a batch of the segment
                inserted += self._insert_segment(segment)
            except (WarehouseUnavailableError, WarehouseRefusedError) as exc:
                what = "Warehouse unavailable" if isinstance(exc, WarehouseUnavailableError) else "Table refuses rows"
                error = f"{what}: {(str(exc).splitlines() or [''])[0][:500]}"  # texts of error_text: no row data
                if error != self._flush_error:  # once per distinct cause, not every few seconds
                    log.warning("%s rows stay spooled in %s: %s", self._rows, self.spool_dir, error)
                self._flush_error = error
                return inserted, False
        return inserted, True

    def _probe(self) -> None:
        """Raise WarehouseUnavailableError (as an insert would) when no connection can be made."""
        try:
            self.engine.connect().close()
        except UNAVAILABLE as exc:
            raise WarehouseUnavailableError(error_text(exc)) from None

    def _insert_segment(self, segment: Path) -> int:
        """Stream one segment into the warehouse, ``batch_rows`` at a time; delete it once every batch committed."""
        size = segment.stat().st_size
        offset, lines = self._resume.get(segment.name, (0, 0))
        new = refused = 0
        batch: list[dict[str, Any]] = []
        bad: list[bytes] = []
        with open(segment, "rb") as f:
            f.seek(offset)
            for raw in f:
                if not raw.endswith(b"\n"):  # only the last line can: a write cut short by a crash
                    log.warning("%s ends in a torn line (%s bytes) from a crash before its fsync; that call was "
                                "never answered, so the line is dropped", segment.name, len(raw))  # fmt: skip
                    break
                lines += 1
                try:
                    obj = json.loads(raw)
                    if not isinstance(obj, dict):
                        raise ValueError(f"not a JSON object but {type(obj).__name__}")
                    batch.append(check_row(obj, fill=False))
                except (ValueError, RecursionError) as exc:  # includes JSONDecodeError and UnicodeDecodeError
                    log.error("%s line %s cannot be read (%s); it goes to %s", segment.name, lines,
                              error_text(exc, mask_values=True), REJECTED)  # fmt: skip
                    bad.append(rejected_line(segment.name, f"unreadable line: {error_text(exc)}", line=raw[:-1]))
                if len(batch) >= self.batch_rows:
                    n, r = self._insert_batch(segment.name, batch, bad)
                    new, refused = new + n, refused + r
                    batch, bad = [], []
                    self._resume[segment.name] = (f.tell(), lines)  # committed: a retry starts after it
        n, r = self._insert_batch(segment.name, batch, bad)
        new, refused = new + n, refused + r
        segment.unlink()  # only now: every batch of it has committed
        _fsync_dir(self.spool_dir)
        self._resume.pop(segment.name, None)
        with self._write_lock:
            self._rows -= lines
            self._bytes -= size
            self._full = False
        log.info("Flushed %s: %s rows, %s new in %s, %s refused, %s already there", segment.name, lines, new,
                 self.table, refused, lines - new - refused)  # fmt: skip
        return new

    def _insert_batch(self, segment: str, batch: list[dict[str, Any]], bad: list[bytes]) -> tuple[int, int]:
        """Insert one batch; its refused rows and unreadable lines go to the rejected file once it committed."""
        first: dict[str, dict[str, Any]] = {}
        for r in batch:  # one insert statement cannot hold an id twice
            first.setdefault(r["id"], r)
        if len(first) < len(batch):
            log.warning("%s spooled rows repeat an earlier row's id; the first of each id is kept", len(batch) - len(first))
        new, refused = insert_or_bisect(self.engine, [db_row(r) for r in first.values()], self.table)
        lines = [rejected_line(segment, reason, row=first[row["id"]]) for row, reason in refused]
        if refused:
            log.error("The warehouse refused %s rows of %s (first: %s); they are kept in %s", len(refused), segment,
                      refused[0][1], self.spool_dir / REJECTED)  # fmt: skip
        self._append_rejected([*lines, *bad])
        return new, len(refused)

    def _append_rejected(self, lines: Iterable[bytes]) -> None:
        data = b"".join(lines)
        if not data:
            return
        fd = _open_private(self.spool_dir / REJECTED, os.O_WRONLY | os.O_APPEND)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._write_lock:
            self._rejected += data.count(b"\n")

    def spooled(self) -> int:
        """How many rows wait in the spool (lines in the active file and in segments), without reading a file."""
        return self._rows

    def health(self) -> dict[str, Any]:
        """The spool's state from running counts (no file is read): for ``/healthz`` and ``ftops spool``.

        Returns:
            ``spooled_rows``, ``spool_bytes``, ``spool_max_bytes``, ``spool_full`` (rows are being refused),
            ``rejected_rows`` (in the rejected file), ``flush_error`` (why rows stay spooled: an exception type
            and the driver's message, never row data; None after a flush that emptied the spool's segments) and
            ``last_flush_at`` (ISO 8601 UTC of the last such flush, or None).
        """
        return {
            "spooled_rows": self._rows, "spool_bytes": self._bytes, "spool_max_bytes": self.max_bytes,
            "spool_full": self._full or self._bytes >= self.max_bytes, "rejected_rows": self._rejected,
            "flush_error": self._flush_error,
            "last_flush_at": self._last_flush_at.isoformat() if self._last_flush_at else None,
        }  # fmt: skip

    def replay(self) -> int:
        """Insert whatever an earlier, crashed logger left in the spool; returns how many rows were new."""
        if self._rows:
            log.warning("Replaying %s spooled rows left in %s", self._rows, self.spool_dir)
        return self.flush()

    def start(self) -> None:
        """Replay the spool, then flush in a background thread every ``flush_every_s`` or ``flush_rows`` rows."""
        if self._thread is not None:
            return
        try:
            self.replay()
        except Exception as exc:  # noqa: BLE001 - a gateway starts whatever its spool holds; the thread retries
            self._log_failure(exc)
        self._thread = threading.Thread(target=self._run, name=f"ftops-spool-{self.table}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive one bad flush; the rows stay spooled
                self._log_failure(exc)

    def _log_failure(self, exc: Exception) -> None:
        self._flush_error = error_text(exc, mask_values=True)
        # no traceback for a statement's error: its text may carry the parameters (engines made elsewhere)
        log.error("Flushing %s failed (%s); rows stay spooled and the next flush retries", self.spool_dir,
                  self._flush_error, exc_info=None if isinstance(exc, sa.exc.StatementError) else exc)  # fmt: skip

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
