"""Loading a JSONL file of interaction rows that an application logged itself (``ftops import-logs``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ftops.serving.spool_rows import check_row, db_row
from ftops.warehouse.bisect_insert import WarehouseRefusedError, insert_or_bisect
from ftops.warehouse.schema import WarehouseUnavailableError

log = logging.getLogger(__name__)


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
        WarehouseUnavailableError: The warehouse cannot be reached or its table refuses every row (batches
            before it stay inserted; a rerun skips them as duplicates). A row it alone refuses is rejected.
    """
    result = ImportResult()
    batch: list[dict[str, Any]] = []
    line_of: dict[str, int] = {}  # id -> line number, for the rows of the batch
    seen: set[str] = set()

    def insert() -> None:
        try:  # a row the warehouse refuses is rejected with its line; the rest of the batch goes in
            new, refused = insert_or_bisect(engine, [db_row(r) for r in batch], table)
        except (WarehouseUnavailableError, WarehouseRefusedError) as exc:
            raise WarehouseUnavailableError(f"import of {path} stopped at line {result.lines}: {exc}") from None
        result.inserted += new
        result.duplicates += len(batch) - new - len(refused)
        result.rejected += [(line_of[row["id"]], f"the warehouse refused it: {reason}") for row, reason in refused]
        batch.clear()
        line_of.clear()

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
            line_of[row["id"]] = n
            batch.append(row)
            if len(batch) >= batch_rows:
                insert()
    if batch:
        insert()
    result.rejected.sort()
    if result.rejected:
        log.warning("%s: %s of %s lines rejected, first: line %s: %s", path, len(result.rejected), result.lines,
                    *result.rejected[0])  # fmt: skip
    log.info("Imported %s: %s lines, %s inserted, %s duplicates, %s rejected", path, result.lines, result.inserted,
             result.duplicates, len(result.rejected))  # fmt: skip
    return result
