"""The ``ftops_curate`` relabel step: a window's failed and low-rated rows answered by the teacher, before curation.

:func:`relabel_window` runs :func:`ftops.curation.teacher.relabel` on the rows of a window and adds the column
``teacher_answer`` to the frame (the accepted, scrubbed answer of a row, else None), which
:func:`ftops.curation.curate.curate_frame` turns into targets with source ``teacher``. It orchestrates what the
curation layer may not import:

* **Priority**: the error-pattern clusters among the window's candidates, found as the governor finds them
  (:func:`ftops.governance.patterns.find_clusters` with ``governor.error_pattern_similarity`` and
  ``error_pattern_min``, on the scrubbed prompts' embeddings from curation's embedding cache), are relabelled
  first when the budget cannot cover every candidate.
* **Judge**: for a task type scored by the LLM judge (``evaluation.metrics``), an answer is accepted only when
  the judge prefers it to the served one in both answer orders (:func:`ftops.evaluation.judge.compare_answers`).

The teacher's and the judge's clients come as factories from the DAG task (Airflow connections
``teacher.conn_id`` and ``evaluation.judge.conn_id``); this module never imports Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ftops.core.config import FtopsConfig

if TYPE_CHECKING:
    import pandas as pd
    import sqlalchemy as sa

    from ftops.curation.embedding import Embedder, EmbeddingCache
    from ftops.curation.teacher import Candidate, Judge

log = logging.getLogger(__name__)
TEACHER_COLUMN = "teacher_answer"  # the contract with curate_frame: str (accepted answer) or None per row


def relabel_window(
    engine: sa.Engine,
    cfg: FtopsConfig,
    task_type: str,
    frame: pd.DataFrame,
    *,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    teacher_client: Callable[[], Any] | None,
    judge_client: Callable[[], Any] | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, Any] | None:
    """Relabel the window's failed and low-rated rows and set ``frame["teacher_answer"]`` (in place).

    The column is added whether or not the teacher is enabled (all None when it is not), so the frame that
    curation sees always has it.

    Args:
        engine: The warehouse (the teacher's answers are stored there).
        cfg: The config (``teacher``, ``curation``, ``governor``, ``evaluation``).
        task_type: The window's task type.
        frame: The window's log rows.
        embedder: Curation's embedder (for the error-pattern priority).
        cache: Curation's embedding cache.
        teacher_client: Makes an ``openai.OpenAI`` client for the teacher; None: no calls (stored answers only).
        judge_client: Makes one for the judge; used for task types scored by the judge.
        now: The run's time (the budget's day).
        dry_run: Stored answers only: no call is made.

    Returns:
        The relabelling's counts and cost (:meth:`RelabelResult.summary`), or None when the teacher is disabled.
    """
    from ftops.curation.teacher import candidates, relabel
    from ftops.warehouse.teacher_store import TeacherStore

    if not cfg.teacher.enabled or "teacher" not in cfg.curation.target_sources or frame.empty:
        frame[TEACHER_COLUMN] = None
        return None
    rows = frame.to_dict("records")
    found, _ = candidates(rows, cfg.curation)
    judge = _judge(cfg, task_type, judge_client) if judge_client is not None else None
    result = relabel(rows, task_type=task_type, cfg=cfg.teacher, curation=cfg.curation,
                     store=TeacherStore(engine, cfg.interactions_table), client=teacher_client, judge=judge,
                     priority_ids=error_pattern_ids(cfg, found, embedder, cache), now=now, offline=dry_run)  # fmt: skip
    import pandas as pd

    # dtype object keeps None as None (a plain list of str and None would turn None into NaN)
    frame[TEACHER_COLUMN] = pd.Series([result.accepted.get(str(i)) for i in frame["id"]], index=frame.index,
                                      dtype=object)  # fmt: skip
    return result.summary()


def error_pattern_ids(
    cfg: FtopsConfig, found: Sequence[Candidate], embedder: Embedder, cache: EmbeddingCache | None
) -> set[str]:
    """The row ids of the candidates that fall in an error-pattern cluster (the governor's rule), or none when
    there are fewer candidates than a cluster needs."""
    from ftops.curation.embedding import embed_with_cache
    from ftops.governance.patterns import find_clusters

    gov = cfg.governor
    if len(found) < gov.error_pattern_min:
        return set()
    prompts = [c.prompt for c in found]
    vectors = embed_with_cache(embedder, prompts, cache)[0] if cache is not None else embedder.embed(prompts)
    clusters = find_clusters(vectors, similarity=gov.error_pattern_similarity, min_size=gov.error_pattern_min)
    ids = {found[i].row_id for c in clusters for i in c.members}
    log.info("Teacher priority: %d of %d candidates in %d error-pattern clusters", len(ids), len(found), len(clusters))
    return ids


def _judge(cfg: FtopsConfig, task_type: str, judge_client: Callable[[], Any]) -> Judge | None:
    """For a task type scored by the judge: whether it prefers each teacher answer to the served one."""
    if cfg.evaluation.metric(task_type) != "judge":
        return None

    def prefers(prompts: Sequence[str], teacher: Sequence[str], served: Sequence[str]) -> list[bool]:
        from ftops.evaluation.judge import CANDIDATE, compare_answers

        judged = compare_answers(judge_client(), cfg.evaluation.judge, prompts, teacher, served, task_type=task_type)
        return [v == CANDIDATE for v in judged.verdicts]

    return prefers
