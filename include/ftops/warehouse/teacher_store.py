"""The teacher's answers, kept in the warehouse so that no teacher call is paid twice.

Two tables, created with FT-Ops' other tables (:func:`ftops.warehouse.schema.ensure_state_tables`):

* ``ftops_teacher_answers``: one row per teacher request, keyed by a content hash of (teacher model, scrubbed
  messages): the task type, the answer (scrubbed), its verdict (``accepted`` / ``rejected``) and reason, the
  tokens and cost the call took, and when it was made. A retry or a later run that sends the same messages finds
  the row and makes no call.
* ``ftops_teacher_rows``: which log rows (per log table) asked that request; several rows with one scrubbed
  prompt share one answer.
* ``ftops_teacher_reservations``: the budget a wave of calls in flight holds (its calls and worst-case cost),
  taken under the ``teacher-budget`` lock before the wave is sent and given back once its answers are stored, so
  task types relabelled at once never spend the same rows twice. A run that dies mid-wave leaves its reservation
  standing for the rest of that day: the budget errs on the side of spending less.

Erasure (``ftops erase``) deletes the answers of a user's rows, and their links (:func:`delete_for_rows`).
:class:`TeacherStore` also serves the failure slices' references (``ftops.pipeline.slices.TeacherAnswers``).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

_BATCH = 5000  # keys or ids per IN (...) list
ACCEPTED, REJECTED = "accepted", "rejected"

_MD = sa.MetaData()
ANSWERS = sa.Table(
    "ftops_teacher_answers",
    _MD,
    sa.Column("key", sa.Text, primary_key=True),  # sha256 of (model, scrubbed messages)
    sa.Column("task_type", sa.Text, nullable=False, index=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),  # scrubbed
    sa.Column("verdict", sa.Text, nullable=False),  # accepted | rejected (the latest check's)
    sa.Column("reason", sa.Text),  # why rejected
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
)
ROWS = sa.Table(
    "ftops_teacher_rows",
    _MD,
    sa.Column("log_table", sa.Text, nullable=False),
    sa.Column("row_id", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False, index=True),
    sa.PrimaryKeyConstraint("log_table", "row_id", "key", name="ftops_teacher_rows_pk"),
)


RESERVATIONS = sa.Table(
    "ftops_teacher_reservations",
    _MD,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("calls", sa.Integer, nullable=False),
    sa.Column("cost", sa.Float, nullable=False),  # worst case
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
)


def create_tables(conn: sa.Connection) -> None:
    """Create the two tables when missing (idempotent)."""
    _MD.create_all(conn, checkfirst=True)


@dataclass(frozen=True)
class StoredAnswer:
    """A teacher answer as stored."""

    key: str
    answer: str
    verdict: str
    reason: str | None
    cost: float


class TeacherStore:
    """The teacher's answers of one log table's rows (see the module docstring).

    Args:
        engine: The warehouse (its tables must exist: ``ensure_state_tables``).
        log_table: The log table the row ids belong to.
    """

    def __init__(self, engine: sa.Engine, log_table: str = "interactions") -> None:
        self.engine, self.log_table = engine, log_table

    def lookup(self, keys: Iterable[str]) -> dict[str, StoredAnswer]:
        """The stored answers among ``keys``."""
        wanted = sorted(set(keys))
        found: dict[str, StoredAnswer] = {}
        a = ANSWERS.c
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), _BATCH):
                query = sa.select(a.key, a.answer, a.verdict, a.reason, a.cost).where(a.key.in_(wanted[i : i + _BATCH]))
                found.update({r.key: StoredAnswer(r.key, r.answer, r.verdict, r.reason, r.cost)
                              for r in conn.execute(query)})  # fmt: skip
        return found

    def spent_since(self, since: datetime) -> tuple[int, float]:
        """(calls, cost) of the answers stored since ``since`` and of the waves in flight (their reservations):
        what the budget of that day has spent or holds."""
        a, v = ANSWERS.c, RESERVATIONS.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(a.cost), 0.0))
                               .where(a.created_at >= since)).one()  # fmt: skip
            held = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(v.calls), 0),
                                          sa.func.coalesce(sa.func.sum(v.cost), 0.0)).where(v.created_at >= since)).one()
        return int(row[0]) + int(held[0]), float(row[1]) + float(held[1])

    def reserve(self, calls: int, cost: float, at: datetime) -> str:
        """Hold ``calls`` and ``cost`` of the budget of ``at``'s day for a wave in flight; returns the reservation's
        id (:meth:`release` gives it back). Take it under the ``teacher-budget`` lock, after :meth:`spent_since`."""
        rid = uuid.uuid4().hex
        with self.engine.begin() as conn:
            conn.execute(sa.insert(RESERVATIONS).values(id=rid, calls=calls, cost=cost, created_at=at))
        return rid

    def release(self, reservation: str) -> None:
        """Give a wave's reservation back (its answers, stored by :meth:`save`, now count instead)."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(RESERVATIONS).where(RESERVATIONS.c.id == reservation))

    def save(self, *, key: str, task_type: str, model: str, answer: str, prompt_tokens: int, completion_tokens: int,
             cost: float, created_at: datetime, row_ids: Sequence[str]) -> None:  # fmt: skip
        """Store one call's answer (rejected as ``unchecked`` until :meth:`set_verdicts`) and link its rows."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(ANSWERS.c.key).where(ANSWERS.c.key == key)).first() is None:
                conn.execute(sa.insert(ANSWERS).values(
                    key=key, task_type=task_type, model=model, answer=answer, verdict=REJECTED, reason="unchecked",
                    prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost,
                    created_at=created_at))  # fmt: skip
        self.link({key: row_ids})

    def link(self, rows_by_key: Mapping[str, Sequence[str]]) -> None:
        """Record which log rows asked each stored request (links already there are kept)."""
        r = ROWS.c
        with self.engine.begin() as conn:
            for key, ids in rows_by_key.items():
                have = set(conn.scalars(sa.select(r.row_id).where(r.log_table == self.log_table, r.key == key)))
                new = [{"log_table": self.log_table, "row_id": str(i), "key": key} for i in dict.fromkeys(ids)
                       if str(i) not in have]  # fmt: skip
                if new:
                    conn.execute(sa.insert(ROWS), new)

    def set_verdicts(self, verdicts: Mapping[str, tuple[str, str | None]]) -> None:
        """Record each key's latest check: ``(verdict, reason)``."""
        with self.engine.begin() as conn:
            for key, (verdict, reason) in verdicts.items():
                conn.execute(sa.update(ANSWERS).where(ANSWERS.c.key == key).values(verdict=verdict, reason=reason))

    def answers(self, task_type: str, row_ids: Sequence[str]) -> Mapping[str, str]:
        """Log row id -> the accepted teacher answer, for those of ``row_ids`` that have one (the
        ``ftops.pipeline.slices.TeacherAnswers`` protocol)."""
        wanted = sorted({str(i) for i in row_ids})
        a, r = ANSWERS.c, ROWS.c
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), _BATCH):
                query = (sa.select(r.row_id, a.answer).join(ANSWERS, a.key == r.key)
                         .where(r.log_table == self.log_table, r.row_id.in_(wanted[i : i + _BATCH]),
                                a.task_type == task_type, a.verdict == ACCEPTED)
                         .order_by(r.row_id, a.created_at.desc()))  # fmt: skip
                for row in conn.execute(query):
                    found.setdefault(row.row_id, row.answer)  # the newest (e.g. of a newer teacher model)
        return found


def delete_for_rows(engine: sa.Engine, log_table: str, row_ids: Collection[str]) -> int:
    """Delete the teacher answers asked by any of these log rows, and every link to them (erasure).

    An answer shared with another user's identical (scrubbed) prompt goes too: more is removed, never less; that
    row is simply asked again. Returns the answers deleted.
    """
    ids = sorted({str(i) for i in row_ids})
    deleted = 0
    with engine.begin() as conn:
        for i in range(0, len(ids), _BATCH):
            keys: list[Any] = list(conn.scalars(sa.select(ROWS.c.key).distinct().where(
                ROWS.c.log_table == log_table, ROWS.c.row_id.in_(ids[i : i + _BATCH]))))  # fmt: skip
            for j in range(0, len(keys), _BATCH):
                part = keys[j : j + _BATCH]
                conn.execute(sa.delete(ROWS).where(ROWS.c.key.in_(part)))
                deleted += conn.execute(sa.delete(ANSWERS).where(ANSWERS.c.key.in_(part))).rowcount
    return deleted
