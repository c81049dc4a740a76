"""Teacher relabelling: a stronger model answers the prompts that failed or were rated low, after scrubbing.

:func:`relabel` takes a window's log rows and picks the candidates (:func:`candidates`): rows whose call failed
(``success`` or ``task_success`` false) or whose rating is below curation's ``quality_threshold``, that have no
``correction`` (a person's answer beats a teacher's) and are well formed. Each candidate's prompt is scrubbed
exactly as curation scrubs it (:func:`ftops.curation.scrub.scrub`); a prompt with a secret that cannot be removed
for sure is never sent. The request is the scrubbed prompt as the one user turn, the shape of a training example;
just before it is sent, :func:`ftops.curation.scrub.find_leaks` must find nothing in it (else
:class:`UnscrubbedTextError`: a bug, never a quiet leak).

What keeps cost and risk in bounds:

* **Cache, idempotence.** Requests are keyed by a hash of (model, messages) (:func:`request_key`) and their
  answers kept in the warehouse (:class:`ftops.warehouse.teacher_store.TeacherStore`): a retry or re-run finds
  them and makes no call; rows with one scrubbed prompt share one call.
* **Budget.** ``max_rows`` new calls and ``max_cost`` money per UTC day, counted from the store (so retries and
  other task types of the night count). A call is made only when its worst case fits: estimated prompt tokens
  (UTF-8 bytes / 2, more than any tokenizer makes of prose) at ``price_input`` plus ``max_answer_tokens`` at
  ``price_output``. Calls go in waves, each as large as the money left allows, so real (smaller) costs let later
  waves grow. What does not fit is counted (``skipped_budget``, rows), most important first: rows in
  ``priority_ids`` (the error-pattern clusters; see :mod:`ftops.pipeline.relabel`), then lower ratings.
* **Outage.** A teacher that cannot be reached, answers 5xx/429/4xx or times out (after ``max_retries``) ends the
  run's relabelling with one log line and ``skipped_reason``: no exception reaches curation.
* **Checks.** An answer is scrubbed, then rejected with a reason when it does not fully match the task type's
  ``formats`` regex, breaks curation's response rules (:func:`ftops.curation.rules.answer_problem`), or loses to
  the served answer before the judge (``judge``, given for task types judged by an LLM). Checks run again on
  stored answers each time (a changed rule applies at once); the judge caches its own verdicts.

Logs carry counts and cost only: never a prompt, an answer or a key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from ftops.core.chat import context_and_prompt, logged_messages
from ftops.core.config import CurationConfig, TeacherConfig
from ftops.curation.rules import answer_problem, is_missing, malformed_reason
from ftops.curation.scrub import find_leaks, scrub
from ftops.warehouse.teacher_store import ACCEPTED, REJECTED, TeacherStore

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

Judge = Callable[[Sequence[str], Sequence[str], Sequence[str]], Sequence[bool]]
"""(scrubbed prompts, teacher answers, served answers) -> whether the judge prefers each teacher answer."""


class UnscrubbedTextError(RuntimeError):
    """A request about to leave holds text that scrubbing would still replace (a bug: nothing is sent)."""


class _Unavailable(Exception):
    """The teacher could not answer (connection, timeout, an HTTP error after the client's retries)."""


@dataclass(frozen=True)
class Candidate:
    """A log row for the teacher: its id, scrubbed prompt, scrubbed served answer and rating."""

    row_id: str
    prompt: str
    served: str
    rating: float | None


@dataclass
class RelabelResult:
    """What one relabelling did. ``accepted``/``rejected`` are per log row; the counts are per row too, except
    ``calls`` (requests sent) and ``cached`` (requests answered by the store)."""

    candidates: int = 0
    accepted: dict[str, str] = field(default_factory=dict)  # row id -> the teacher's (scrubbed) answer
    rejected: dict[str, str] = field(default_factory=dict)  # row id -> reason
    calls: int = 0
    cached: int = 0
    tokens: int = 0
    cost: float = 0.0
    skipped_budget: int = 0
    unanswered: int = 0  # rows the teacher was not reached for (outage, no client, a dry run)
    unsafe: int = 0  # prompts with a secret that cannot be removed for sure: never sent
    skipped_reason: str | None = None

    def summary(self) -> dict[str, Any]:
        """Counts and cost only (no text): for the curation report, XCom and logs."""
        reasons: dict[str, int] = {}
        for reason in self.rejected.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return {"candidates": self.candidates, "accepted": len(self.accepted), "rejected": dict(sorted(reasons.items())),
                "calls": self.calls, "cached": self.cached, "tokens": self.tokens, "cost": round(self.cost, 6),
                "skipped_budget": self.skipped_budget, "unanswered": self.unanswered, "unsafe": self.unsafe,
                "skipped_reason": self.skipped_reason}  # fmt: skip


def candidates(rows: Iterable[Mapping[str, Any]], cfg: CurationConfig) -> tuple[list[Candidate], int]:
    """The rows the teacher should answer, scrubbed, and how many were left out as unsafe to send."""
    found: list[Candidate] = []
    unsafe = 0
    for row in rows:
        if malformed_reason(dict(row), cfg, None):
            continue  # curation quarantines it: no target can come of it
        correction = row.get("correction")
        if not is_missing(correction) and str(correction).strip():
            continue
        request = row.get("request")  # well formed (malformed_reason): a call with a system prompt or earlier turns
        if not is_missing(request) and request != "" and context_and_prompt(logged_messages(request))[0]:
            continue  # is not relabelled: the teacher is asked the prompt alone, which may mean something else
        verdict, rating = row.get("task_success"), cast(Any, row.get("user_feedback"))
        failed = not bool(row.get("success")) or (not is_missing(verdict) and not bool(verdict))
        if not failed and (is_missing(rating) or float(rating) >= cfg.quality_threshold):
            continue
        prompt = scrub(row["prompt"])
        if prompt.unsafe:
            unsafe += 1
            continue
        found.append(Candidate(str(row["id"]), prompt.text, scrub(row["response"]).text,
                               None if is_missing(rating) else float(rating)))  # fmt: skip
    return found, unsafe


def teacher_messages(prompt: str) -> list[dict[str, str]]:
    """The request's messages: the scrubbed prompt as the one user turn (a training example's shape)."""
    return [{"role": "user", "content": prompt}]


def request_key(model: str, messages: Sequence[Mapping[str, str]]) -> str:
    """SHA-256 of the teacher model and the messages: the store's key."""
    return hashlib.sha256(json.dumps([model, list(messages)], ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def worst_cost(cfg: TeacherConfig, messages: Sequence[Mapping[str, str]]) -> float:
    """The most one request can cost: prompt tokens estimated high (bytes / 2), the answer at its token cap."""
    prompt_tokens = sum(len(m["content"].encode()) // 2 + 8 for m in messages) + 8
    return (prompt_tokens * cfg.price_input + cfg.max_answer_tokens * cfg.price_output) / 1_000_000


def _day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def relabel(
    rows: Iterable[Mapping[str, Any]],
    *,
    task_type: str,
    cfg: TeacherConfig,
    curation: CurationConfig,
    store: TeacherStore,
    client: Callable[[], openai.OpenAI] | None,
    judge: Judge | None = None,
    priority_ids: Collection[str] = (),
    now: datetime | None = None,
    offline: bool = False,
) -> RelabelResult:
    """Answer a window's failed and low-rated rows with the teacher, within the day's budget, and check the answers.

    Args:
        rows: Log rows (the interaction log's columns; any row may be passed, :func:`candidates` picks).
        task_type: Their task type (the store's and the format rule's).
        cfg: The teacher settings.
        curation: Curation's settings: its quality threshold and response rules.
        store: Where answers are kept (the cache, and the budget's record).
        client: Makes an ``openai.OpenAI`` client for the teacher; None, or one that raises: no calls.
        judge: Where the task type is judged by an LLM: prefers the teacher's answer or not (see :data:`Judge`).
        priority_ids: Row ids relabelled first when the budget cannot cover all (the error-pattern clusters).
        now: The run's time (the budget's day); default now.
        offline: Use stored answers only (a dry run): no call is made.

    Returns:
        Accepted and rejected rows, calls, cost, rows skipped by the budget or an outage, and ``skipped_reason``.

    Raises:
        UnscrubbedTextError: A request still held scrubbable text (never sent).
    """
    now = now or datetime.now(UTC)
    found, unsafe = candidates(rows, curation)
    result = RelabelResult(candidates=len(found), unsafe=unsafe)
    by_key: dict[str, list[Candidate]] = {}
    for cand in found:
        by_key.setdefault(request_key(cfg.model, teacher_messages(cand.prompt)), []).append(cand)
    stored = store.lookup(by_key)
    answers = {k: s.answer for k, s in stored.items()}
    result.cached = len(stored)
    store.link({k: [c.row_id for c in by_key[k]] for k in stored})
    first = set(map(str, priority_ids))
    todo = sorted((k for k in by_key if k not in stored), key=lambda k: (
        not any(c.row_id in first for c in by_key[k]), min(c.rating if c.rating is not None else 0.0 for c in by_key[k]),
        min(c.row_id for c in by_key[k])))  # fmt: skip
    over_budget: set[str] = set()
    if todo and offline:
        result.skipped_reason = "offline (dry run): stored answers only"
    elif todo:
        over_budget = _ask_teacher(todo, by_key, task_type, cfg, store, client, now, answers, result)
    for k in todo:
        if k not in answers:
            if k in over_budget:
                result.skipped_budget += len(by_key[k])
            else:
                result.unanswered += len(by_key[k])
    _check(by_key, answers, task_type, cfg, curation, store, judge, result)
    log.info("Teacher %s on %s: %d candidates (%d unsafe to send), %d accepted, %d rejected, %d calls (%d answered "
             "by the store), cost %.4f, %d rows over budget, %d not relabelled%s", cfg.model, task_type, len(found),
             unsafe, len(result.accepted), len(result.rejected), result.calls, result.cached, result.cost,
             result.skipped_budget, result.unanswered,
             f" ({result.skipped_reason})" if result.skipped_reason else "")  # fmt: skip
    return result


def _ask_teacher(
    todo: Sequence[str], by_key: Mapping[str, list[Candidate]], task_type: str, cfg: TeacherConfig,
    store: TeacherStore, client: Callable[[], openai.OpenAI] | None, now: datetime, answers: dict[str, str],
    result: RelabelResult,
) -> set[str]:  # fmt: skip
    """Send ``todo`` (in order) in waves within the day's budget; store and collect the answers.

    Returns:
        The keys left out by the budget.
    """
    try:
        teacher = client() if client is not None else None
    except Exception as exc:  # noqa: BLE001 - a missing connection or key must not fail curation
        teacher, why = None, f"no teacher client ({type(exc).__name__})"
    else:
        why = "no teacher client configured"
    if teacher is None:
        result.skipped_reason = why
        log.warning("Teacher %s: %s: no relabel this run; %d prompts left for a later run", cfg.model, why, len(todo))
        return set()
    teacher = teacher.with_options(max_retries=cfg.max_retries, timeout=cfg.timeout_s)
    endpoint = str(teacher.base_url)
    pending = list(todo)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="teacher") as pool:
        while pending and result.skipped_reason is None:
            wave, reservation = _reserve_wave(pending, by_key, cfg, store, now, task_type)
            if not wave:
                break
            try:
                futures = {pool.submit(_call, teacher, cfg, teacher_messages(by_key[k][0].prompt)): k for k in wave}
                wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    future.cancel()  # after an outage: no more spending
                _store_wave(futures, by_key, task_type, cfg, store, now, answers, result)
            finally:
                store.release(reservation)  # the stored answers count from here on
            pending = [k for k in pending if k not in answers and k not in wave]
            log.info("Teacher %s: %d/%d calls, cost %.4f, %.1f s", cfg.model, result.calls, len(todo), result.cost,
                     time.perf_counter() - started)  # fmt: skip
    if result.skipped_reason:
        log.warning("Teacher %s at %s unavailable (%s): no relabel for the rest of this run, %d calls made; "
                    "curation goes on", cfg.model, endpoint, result.skipped_reason, result.calls)  # fmt: skip
        return set()
    return set(pending)


def _reserve_wave(
    pending: Sequence[str], by_key: Mapping[str, list[Candidate]], cfg: TeacherConfig, store: TeacherStore,
    now: datetime, task_type: str,
) -> tuple[list[str], str]:  # fmt: skip
    """The next wave: the most important keys whose worst case fits what the day has left, reserved in the store
    under the ``teacher-budget`` lock (so task types curated at once share one budget). Returns (keys, reservation)."""
    from ftops.warehouse.locks import warehouse_lock

    with warehouse_lock(store.engine, "teacher-budget", wait_s=120, what=f"the teacher budget of {task_type}"):
        calls_today, spent_today = store.spent_since(_day_start(now))
        rows_left, money_left = cfg.max_rows - calls_today, cfg.max_cost - spent_today
        wave: list[str] = []
        held = 0.0
        for key in pending:  # the most important that fit; a cheaper one further down may still fit
            worst = worst_cost(cfg, teacher_messages(by_key[key][0].prompt))
            if len(wave) < rows_left and held + worst <= money_left:
                wave.append(key)
                held += worst
        return wave, (store.reserve(len(wave), held, now) if wave else "")


def _store_wave(
    futures: Mapping[Any, str], by_key: Mapping[str, list[Candidate]], task_type: str, cfg: TeacherConfig,
    store: TeacherStore, now: datetime, answers: dict[str, str], result: RelabelResult,
) -> None:  # fmt: skip
    """Store the answered calls of a wave (cost as the usage says, else the worst case) and count them."""
    for future in [f for f in futures if f.done() and not f.cancelled()]:
        key = futures[future]
        try:
            answer, prompt_tokens, completion_tokens = future.result()
        except _Unavailable as exc:
            if result.skipped_reason is None:
                result.skipped_reason = f"teacher unreachable: {exc}"
            continue
        if completion_tokens < 0:  # no usage in the response: count the worst case
            prompt_tokens, completion_tokens = 0, 0
            cost = worst_cost(cfg, teacher_messages(by_key[key][0].prompt))
        else:
            cost = (prompt_tokens * cfg.price_input + completion_tokens * cfg.price_output) / 1_000_000
        store.save(key=key, task_type=task_type, model=cfg.model, answer=answer, prompt_tokens=prompt_tokens,
                   completion_tokens=completion_tokens, cost=cost, created_at=now,
                   row_ids=[c.row_id for c in by_key[key]])  # fmt: skip
        answers[key] = answer
        result.calls += 1
        result.tokens += prompt_tokens + completion_tokens
        result.cost += cost


def _call(teacher: openai.OpenAI, cfg: TeacherConfig, messages: list[dict[str, str]]) -> tuple[str, int, int]:
    """One teacher request: (scrubbed answer, prompt tokens, completion tokens; -1 when the usage is missing).

    Raises:
        UnscrubbedTextError: The messages hold scrubbable text (nothing is sent).
        _Unavailable: The teacher did not answer; the message names the status, never the request's text.
    """
    import openai

    for message in messages:  # the last gate before text leaves the house
        leaks = find_leaks(message["content"])
        if leaks:
            raise UnscrubbedTextError(f"a teacher request still holds {', '.join(leaks)}: not sent")
    try:
        response = teacher.chat.completions.create(model=cfg.model, messages=cast(Any, messages), temperature=0,
                                                   max_tokens=cfg.max_answer_tokens)  # fmt: skip
    except openai.APIStatusError as exc:
        raise _Unavailable(f"HTTP {exc.status_code}" + (f" ({exc.code})" if exc.code else "")) from None
    except openai.APITimeoutError:
        raise _Unavailable(f"timed out after {cfg.timeout_s:g} s") from None
    except openai.APIConnectionError:
        raise _Unavailable("cannot be reached") from None
    except openai.OpenAIError as exc:
        raise _Unavailable(type(exc).__name__) from None
    text = (response.choices[0].message.content if response.choices else None) or ""
    usage = response.usage
    tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, -1)
    return scrub(text).text, *tokens


def _check(
    by_key: Mapping[str, list[Candidate]], answers: Mapping[str, str], task_type: str, cfg: TeacherConfig,
    curation: CurationConfig, store: TeacherStore, judge: Judge | None, result: RelabelResult,
) -> None:  # fmt: skip
    """Check every answer (stored or new), record the verdicts, and fill ``result.accepted``/``rejected``."""
    pattern = cfg.formats.get(task_type)
    reasons: dict[str, str | None] = {}
    for key, answer in answers.items():
        text = answer.strip()
        if not text:
            reasons[key] = "empty_answer"
        elif pattern is not None and re.fullmatch(pattern, text) is None:
            reasons[key] = "format"
        else:
            reasons[key] = answer_problem(answer, curation)
    judged = [k for k, r in reasons.items() if r is None]
    if judge is not None and judged:
        try:
            prefers = judge([by_key[k][0].prompt for k in judged], [answers[k] for k in judged],
                            [by_key[k][0].served for k in judged])  # fmt: skip
            reasons.update({k: None if p else "judge_prefers_served" for k, p in zip(judged, prefers, strict=True)})
        except Exception as exc:  # noqa: BLE001 - a judge outage leaves answers unaccepted, never fails curation
            log.warning("Judge unavailable for the teacher's %d answers (%s): none accepted this run", len(judged),
                        type(exc).__name__)  # fmt: skip
            reasons.update(dict.fromkeys(judged, "judge_unavailable"))
    store.set_verdicts({k: (ACCEPTED, None) if r is None else (REJECTED, r) for k, r in reasons.items()})
    for key, reason in reasons.items():
        for cand in by_key[key]:
            if reason is None:
                result.accepted[cand.row_id] = answers[key]
            else:
                result.rejected[cand.row_id] = reason
