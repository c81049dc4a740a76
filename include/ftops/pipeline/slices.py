"""The failure slice of an ``error_pattern`` fine-tune: which cluster started it, and its prompts as test rows.

How the cluster reaches the fine-tune: the governor records each decision in ``ftops_decisions`` with every
policy's inputs, for ``error_pattern`` the clusters it found (``cluster`` id, ``size``, up to 50 ``row_ids``),
and starts ``ftops_finetune`` with the decision's ``decision_key`` in the run conf (ids only: no prompt travels
in conf, XCom or tags). At evaluation time :func:`triggering_pattern` reads that decision back and returns the
cluster its reason names (the first); :func:`failure_slice` reads the cluster's rows from the log, scrubs them
like curation does, and keeps as test rows those with a reference (:mod:`ftops.evaluation.slices`).
:func:`slice_for_run` does both.

References, in order of trust: the row's ``correction`` (a user's or a review tool's right answer), then a
teacher model's answer through the :class:`TeacherAnswers` hook (the teacher relabelling's store,
:class:`ftops.warehouse.teacher_store.TeacherStore`, implements it). Rows with neither are counted, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ftops.core.config import FtopsConfig
from ftops.evaluation.slices import FailureSlice

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger(__name__)


class TeacherAnswers(Protocol):
    """Where a teacher model's checked answers to failed prompts are kept (the teacher relabelling's store)."""

    def answers(self, task_type: str, row_ids: Sequence[str]) -> Mapping[str, str]:
        """Log row id -> the teacher's answer, for those of ``row_ids`` it answered (and whose answer passed the
        task type's checks); the others are left out."""
        ...


@dataclass(frozen=True)
class TriggeringPattern:
    """The failure cluster a governor decision trained on: its id and its log row ids (at most 50)."""

    pattern: str
    row_ids: list[str]
    decision_key: str


def triggering_pattern(engine: sa.Engine, decision_key: str | None) -> TriggeringPattern | None:
    """The failure cluster behind the governor decision ``decision_key`` (the ``ftops_finetune`` run conf's).

    Returns:
        The cluster the decision's reason names, or None when there is no decision key (a run started by hand)
        or the decision was taken by another policy than ``error_pattern``.

    Raises:
        LookupError: No decision has this key, or an ``error_pattern`` decision records no cluster.
    """
    from ftops.warehouse.state import read_decisions

    if not decision_key:
        return None
    found = read_decisions(engine, decision_key=decision_key)
    if not found:
        raise LookupError(f"no governor decision {decision_key!r} in ftops_decisions: the run conf names a decision "
                          "this warehouse does not hold")  # fmt: skip
    decision = found[0]
    if decision["policy"] != "error_pattern":
        return None
    patterns = decision["details"].get("policies", {}).get("error_pattern", {}).get("inputs", {}).get("patterns")
    if not patterns or not patterns[0].get("cluster"):
        raise LookupError(f"the error_pattern decision {decision_key!r} records no failure cluster")
    top = patterns[0]
    return TriggeringPattern(str(top["cluster"]), [str(i) for i in top.get("row_ids") or []], decision_key)


def failure_slice(
    engine: sa.Engine,
    cfg: FtopsConfig,
    task_type: str,
    pattern_id: str,
    row_ids: Sequence[str],
    *,
    teacher: TeacherAnswers | None = None,
) -> FailureSlice:
    """Read a failure cluster's rows and make its test rows: scrubbed prompt, scrubbed reference.

    Prompts and references are scrubbed as curation scrubs them (:func:`ftops.curation.scrub.scrub`), so what a
    model is asked here (an API model included) is what training could have seen; a row whose prompt or
    reference holds a secret that cannot be removed for sure is left out and counted (``unsafe``).

    Args:
        engine: The warehouse.
        cfg: The config (``interactions_table``).
        task_type: The fine-tune's task type (rows of another task type are not read).
        pattern_id: The cluster id (``pattern-…``).
        row_ids: The cluster's log row ids, as the governor recorded them.
        teacher: Teacher answers for rows without a correction; None: corrections only.

    Returns:
        The slice; ``reference == "none"`` when no row has a reference.
    """
    from ftops.curation.curate import to_example
    from ftops.curation.scrub import scrub
    from ftops.warehouse.logread import read_rows_by_id

    wanted = list(dict.fromkeys(str(i) for i in row_ids))
    found = [r for r in read_rows_by_id(engine, task_type, wanted, cfg.interactions_table) if r["prompt"]]
    uncorrected = [r["id"] for r in found if not (r["correction"] or "").strip()]
    taught = dict(teacher.answers(task_type, uncorrected)) if teacher is not None and uncorrected else {}
    rows: list[dict[str, Any]] = []
    ids: list[str] = []
    sources: list[str] = []
    without = unsafe = 0
    for r in found:
        corrected = (r["correction"] or "").strip()
        reference, source = (corrected, "corrections") if corrected else (taught.get(r["id"], "").strip(), "teacher")
        prompt, answer = scrub(r["prompt"]), scrub(reference)
        if prompt.unsafe or answer.unsafe:
            unsafe += 1
        elif not reference:
            without += 1
        else:
            rows.append(to_example(prompt.text, answer.text))
            ids.append(r["id"])
            sources.append(source)
    result = FailureSlice(task_type, pattern_id, rows, ids, sources, without_reference=without, unsafe=unsafe,
                          missing=len(wanted) - len(found))  # fmt: skip
    log.info("Failure slice %s of %s: %d prompts, %d with a reference (%s), %d without, %d unsafe, %d no longer in "
             "the log", pattern_id, task_type, result.size, len(rows), result.reference, without, unsafe,
             result.missing)  # fmt: skip
    return result


def slice_for_run(
    engine: sa.Engine,
    cfg: FtopsConfig,
    task_type: str,
    decision_key: str | None,
    *,
    teacher: TeacherAnswers | None = None,
) -> FailureSlice | None:
    """The failure slice of an ``ftops_finetune`` run, from its conf's ``decision_key``; None when the run was not
    started by the ``error_pattern`` policy. See :func:`triggering_pattern` and :func:`failure_slice`."""
    pattern = triggering_pattern(engine, decision_key)
    if pattern is None:
        return None
    return failure_slice(engine, cfg, task_type, pattern.pattern, pattern.row_ids, teacher=teacher)
