"""A deterministic simulator of production LLM interaction logs.

The logs look like what a served model leaves behind: three checkable task types (``sentiment``,
``city_extraction``, ``unit_conversion``; and, when asked for, the free-text ``support_reply``) asked in many phrasings, answered by a "production model" that is
right about three times in four, and all the mess real logs carry, so that curation has something to do:

* ratings that follow correctness with noise, and about 20 % of them missing;
* about 5 % failed calls (``success=False`` with error text), plus a few refusals and truncated answers
  that are logged as successes;
* about 3 % exact duplicates (a new id, the same prompt and response) and about 3 % near duplicates
  (the same prompt with trivial casing, punctuation or whitespace changes);
* PII and secrets planted in about 5 % of prompts (e-mail, phone, a Luhn-valid card number, an IPv4
  address, OpenAI, AWS and GitHub style keys), and a few oversized prompts;
* log-normal latency with a long tail, token counts roughly proportional to text length, about 50 users,
  and one user, ``u-gamer``, who rates every answer five stars, wrong ones included;
* a ``correction`` (the right answer in the task type's template) on about 15 % of the wrong answers, failed
  calls included, as a user or a review tool would type it.

Every answer of the three default task types follows a fixed template filled only by the answer slot
(:func:`reference_response`), so exact match after normalisation is a fair accuracy measure; a
``support_reply`` answer is one of several phrasings, judged by :func:`ftops_dev.known_truth.is_right`. Rows with metadata carry the ground truth slot as
``{"expected": ...}`` in their metadata JSON. Output depends only on the arguments: the same seed gives the
same rows.
"""

from __future__ import annotations

import json
import logging
import math
import random
import string
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ftops_dev.drift import DRIFT_TASKS, P_CORRECT_DRIFTED
from ftops_dev.task_types import (
    TASK_TYPES,
    TASKS,
    _respond,
    reference_response,
)

logger = logging.getLogger(__name__)
DEFAULT_START = datetime(2026, 11, 1, tzinfo=UTC)
GAMER_USER_ID = "u-gamer"
USER_IDS: tuple[str, ...] = tuple(f"u-{i:04d}" for i in range(1, 50)) + (GAMER_USER_ID,)

# Rates of each kind of mess, per generated row.
P_CORRECT = 0.75
P_FAILURE = 0.05
P_REFUSAL = 0.01
P_TRUNCATED = 0.01
P_EXACT_DUP = 0.03
P_NEAR_DUP = 0.03
P_PII = 0.05
P_OVERSIZED = 0.001
P_RATING_MISSING = 0.20
P_METADATA_MISSING = 0.15
P_CONFIDENCE_MISSING = 0.10
P_ANONYMOUS = 0.08
P_GAMER = 0.02
P_CORRECTION = 0.15  # of wrong answers; drawn from a random source of its own, so the other columns stay as they were
_ERRORS = (
    "Error: upstream timeout after 30000 ms",
    "Error: rate limit exceeded (HTTP 429), retry after 20 s",
    "Error: model server returned HTTP 503 Service Unavailable",
    'Traceback (most recent call last):\n  File "serve.py", line 88, in generate\nRuntimeError: CUDA out of memory',
    "Error: context length exceeded (4096 tokens)",
)
_REFUSALS = (
    "I'm sorry, but as an AI language model I cannot help with this request right now.",
    "I cannot answer that. Please contact support if you believe this is a mistake.",
)
_FIRST = ("jane", "omar", "li", "maria", "tom", "aisha", "lukas", "sofia", "ken", "nina")
_LAST = ("doe", "khan", "wei", "garcia", "smith", "okafor", "muller", "rossi", "tanaka", "berg")
_DOMAINS = ("example.com", "mail.example.org", "corp.example.net", "gmail.com")
_ALNUM = string.ascii_letters + string.digits


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):  # the check digit will sit right of these, so double even i
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i : i + 4] for i in range(0, 16, 4))


def _pii(rng: random.Random) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        email = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{rng.randrange(100)}@{rng.choice(_DOMAINS)}"
        return f"My email is {email}, please reply there."
    if kind == 1:
        phone = f"+1 {rng.randint(201, 989)}-555-{rng.randint(0, 9999):04d}"
        return f"You can call me at {phone} if needed."
    if kind == 2:
        return f"Use my card {_luhn_card(rng)} for the order."
    if kind == 3:
        ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        return f"(request from {ip})"
    if kind == 4:
        key = "sk-" + "".join(rng.choice(_ALNUM) for _ in range(48))
        return f"debug: OPENAI_API_KEY={key}"
    if kind == 5:
        key = "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        return f"aws_access_key_id = {key}"
    token = "ghp_" + "".join(rng.choice(_ALNUM) for _ in range(36))
    return f"my github token is {token}"


def _near_duplicate(rng: random.Random, prompt: str) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return prompt.lower()
    if kind == 1:
        return prompt.upper() if len(prompt) < 80 else prompt[:1].lower() + prompt[1:]
    if kind == 2:
        return prompt.rstrip(".?!") + rng.choice(("!", "??", " .", "...", ""))
    if kind == 3:
        return prompt.replace(" ", "  ", rng.randint(1, 3))
    return rng.choice((" ", "\n", "  ")) + prompt + rng.choice((" ", "\n", "\t"))


def _rating(rng: random.Random, correct: bool, success: bool, user_id: str | None) -> int | None:
    if rng.random() < P_RATING_MISSING:
        return None
    if user_id == GAMER_USER_ID:
        return 5
    if not success:
        return rng.choices((1, 2, 3), weights=(70, 20, 10))[0]
    weights = (2, 3, 10, 35, 50) if correct else (35, 35, 20, 7, 3)
    return rng.choices((1, 2, 3, 4, 5), weights=weights)[0]


def _tokens(rng: random.Random, prompt: str, response: str) -> int:
    return max(1, round((len(prompt) + len(response)) / 4 * rng.uniform(0.85, 1.15)))


def simulated_day(timestamp: datetime, start: datetime | None = None, days: int = 30) -> int:
    """The day of a simulated row: 1 for the first 24 hours of the ``days`` before ``start``, 2 for the next...

    Args:
        timestamp: A row's timestamp.
        start: The ``start`` that :func:`generate_interactions` was given (default 2026-11-01T00:00Z).
        days: The ``days`` it was given.
    """
    window_start = (start or DEFAULT_START) - timedelta(days=days)
    return int((timestamp - window_start).total_seconds() // 86_400) + 1


def generate_interactions(
    n: int,
    seed: int = 0,
    start: datetime | None = None,
    task_types: Sequence[str] = TASK_TYPES,
    model_version: str = "base",
    *,
    days: int = 30,
    drift_share: float = 0.0,
    drift_from_day: int = 2,
    correction_share: float = P_CORRECTION,
) -> list[dict[str, Any]]:
    """Generate ``n`` simulated interaction log rows.

    With drift (``drift_share > 0``), from day ``drift_from_day`` on (:func:`simulated_day`) that share of the
    calls asks about entities of :mod:`ftops_dev.drift` (new cities, a new sentiment phrasing, larger numbers, a
    new support problem), which the served model answers right only
    :data:`~ftops_dev.drift.P_CORRECT_DRIFTED` of the time; their metadata says ``"drift": true``. Every other
    row is byte-identical to the row the same arguments give without drift (drift draws from random sources
    of its own), so the days before the drift day are the same logs as ever.

    Args:
        n: Rows to generate.
        seed: Seed of the random sources; the same arguments give the same rows.
        start: Rows are timestamped over the ``days`` before this instant (default 2026-11-01T00:00Z).
        task_types: Task types to draw from, uniformly: by default the three exact-match ones; the free-text
            ``support_reply`` (:data:`ftops_dev.task_types.FREE_TEXT_TASK_TYPES`) only when named.
        model_version: Version label written on every row.
        days: How many days before ``start`` the timestamps spread over.
        drift_share: Share of the calls from the drift day on that ask about drifted entities (0: no drift).
        drift_from_day: The first day with drift (1 = from the first row on).
        correction_share: Share of the wrong answers (failed calls included) that get a ``correction``.

    Returns:
        Rows sorted by timestamp, each with the keys ``id``, ``timestamp`` (tz-aware UTC), ``task_type``,
        ``prompt``, ``response``, ``model_version``, ``user_id``, ``user_feedback``, ``success``,
        ``confidence``, ``latency_ms``, ``tokens_used``, ``metadata`` (a JSON string or ``None``) and
        ``correction`` (the right answer, or ``None``).

    Raises:
        ValueError: ``n`` is negative, ``days`` or ``drift_from_day`` is not positive, a share is not in
            [0, 1], or a task type is unknown.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if days < 1 or drift_from_day < 1:
        raise ValueError(f"days and drift_from_day must be >= 1, got {days} and {drift_from_day}")
    if not (0.0 <= drift_share <= 1.0 and 0.0 <= correction_share <= 1.0):
        raise ValueError(f"drift_share and correction_share must be in [0, 1], got {drift_share}, {correction_share}")
    unknown = [t for t in task_types if t not in TASKS]
    if unknown or not task_types:
        raise ValueError(f"unknown or no task types {unknown!r}; known: {tuple(TASKS)}")
    start = start or DEFAULT_START
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    args = (n, seed, start, tuple(task_types), model_version, days, correction_share)
    rows = _generate(*args, drifted=frozenset())
    if drift_share > 0 and drift_from_day <= days:
        # A row's day is known only once every row is drawn (timestamps come last, from the same source), and
        # drift leaves that source's draws as they were: so draw once, pick the drifted rows, draw again.
        pick = random.Random(f"drift/{seed}")
        drifted = frozenset(
            i
            for i, row in enumerate(rows)
            if simulated_day(row["timestamp"], start, days) >= drift_from_day and pick.random() < drift_share
        )
        rows = _generate(*args, drifted=drifted)
        logger.info("Drift from day %d: %d rows ask about new entities", drift_from_day, len(drifted))
    logger.info("Generated %d interactions over %d days (seed %d, %d task types)", n, days, seed, len(task_types))
    return rows


def _generate(
    n: int, seed: int, start: datetime, types: tuple[str, ...], model_version: str, days: int,
    correction_share: float, *, drifted: frozenset[int],
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows of :func:`generate_interactions`; rows ``drifted`` (by index) ask about drifted entities.

    A drifted row makes every draw of the main source that an undrifted row makes, and discards what it does
    not use, so that the rows after it (and every timestamp) are drawn exactly as without drift.
    """
    rng = random.Random(seed)
    corrections = random.Random(f"corrections/{seed}")
    drift_rng = random.Random(f"drift-rows/{seed}")  # drifted rows' own draws
    regular_users = USER_IDS[:-1]
    rows: list[dict[str, Any]] = []

    for i in range(n):
        draw = rng.random()
        if rows and draw < P_EXACT_DUP:
            row = dict(rng.choice(rows))
            row["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            rows.append(row)
            continue
        if rows and draw < P_EXACT_DUP + P_NEAR_DUP:
            source = rng.choice(rows)
            row = dict(source)
            row["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            row["prompt"] = _near_duplicate(rng, source["prompt"])
            row["latency_ms"] = max(40, round(rng.lognormvariate(math.log(450), 0.9)))
            rows.append(row)
            continue

        task_type = rng.choice(types)
        make, make_wrong = TASKS[task_type]
        prompt, answer, template = make(rng)
        kept = answer  # the main source's draws below are made for it, drifted or not
        drift = i in drifted
        if drift:
            make, make_wrong = DRIFT_TASKS[task_type]
            prompt, answer, template = make(drift_rng)
        if rng.random() < P_PII:
            pii = _pii(rng)
            prompt = f"{pii} {prompt}" if rng.random() < 0.5 else f"{prompt}\n{pii}"
        if rng.random() < P_OVERSIZED:
            log_line = "2026-10-01 12:00:00 INFO worker heartbeat ok\n"
            prompt = prompt + "\n\nAttached log:\n" + log_line * 500

        user_roll = rng.random()
        user_id: str | None
        if user_roll < P_ANONYMOUS:
            user_id = None
        elif user_roll < P_ANONYMOUS + P_GAMER:
            user_id = GAMER_USER_ID
        else:
            user_id = rng.choice(regular_users)

        outcome = rng.random()
        correct = kept_correct = rng.random() < P_CORRECT
        success = True
        confidence: float | None
        if drift:
            correct = drift_rng.random() < P_CORRECT_DRIFTED
        if outcome < P_FAILURE:
            success, correct = False, False
            kept_correct = False
            response = rng.choice(_ERRORS)
            confidence = None
        elif outcome < P_FAILURE + P_REFUSAL:
            correct = kept_correct = False
            response = rng.choice(_REFUSALS)
            confidence = round(rng.uniform(0.05, 0.4), 4)
        else:
            if drift:  # the draws an undrifted row makes here, then the drifted row's own
                _ = kept if kept_correct else TASKS[task_type][1](rng, kept)
                _ = rng.betavariate(8, 2) if kept_correct else rng.betavariate(4, 3)
                slot = answer if correct else make_wrong(drift_rng, answer)
                confidence = round(drift_rng.betavariate(8, 2) if correct else drift_rng.betavariate(4, 3), 4)
            else:
                slot = answer if correct else make_wrong(rng, answer)
                confidence = round(rng.betavariate(8, 2) if correct else rng.betavariate(4, 3), 4)
            response = _respond(task_type, answer, slot)
            if outcome < P_FAILURE + P_REFUSAL + P_TRUNCATED:
                response = response[: rng.randint(8, 30)]
                correct = kept_correct = False
        if confidence is not None and rng.random() < P_CONFIDENCE_MISSING:
            confidence = None

        if response.startswith("Error: upstream timeout"):
            latency = 30_000 + rng.randrange(50)
        else:
            latency = max(40, round(rng.lognormvariate(math.log(450), 0.9)))
            if rng.random() < 0.002:  # a stuck worker: the slow tail past any sensible cut-off
                latency = rng.randint(10_001, 45_000)

        metadata = None
        if rng.random() >= P_METADATA_MISSING:
            fields = {
                "expected": answer,
                "client": rng.choice(("web", "ios", "android", "api")),
                "prompt_template": template,
                "session": f"s-{rng.getrandbits(32):08x}",
            }
            metadata = json.dumps({**fields, "drift": True} if drift else fields, sort_keys=True)

        # A drifted row draws its correction from its own source after the draw its undrifted self would make,
        # so the undrifted rows after it keep theirs.
        draw = corrections.random() if not kept_correct else 1.0
        if drift:
            draw = drift_rng.random() if not correct else 1.0
        corrected = draw < correction_share
        rows.append(
            {
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "timestamp": None,
                "task_type": task_type,
                "prompt": prompt,
                "response": response,
                "model_version": model_version,
                "user_id": user_id,
                "user_feedback": _rating(rng, correct, success, user_id),
                "success": success,
                "confidence": confidence,
                "latency_ms": latency,
                "tokens_used": _tokens(rng, prompt, response),
                "metadata": metadata,
                "correction": reference_response(task_type, answer) if corrected else None,
            }
        )

    # Timestamps last, sorted, so a duplicate always lands at some other time than its source.
    span = days * 86_400
    offsets = sorted((rng.random() * span for _ in rows), reverse=True)
    for row, offset in zip(rows, offsets, strict=True):
        row["timestamp"] = start - timedelta(seconds=round(offset, 3))
    return rows


def clean_chat_rows(
    task_type: str, n: int, seed: int, *, oversample: int = 4, max_prompt_chars: int | None = None
) -> list[dict[str, Any]]:
    """Up to ``n`` distinct chat examples whose replies are the simulator's ground truth (no wrong answers).

    For tests and benchmarks that train or evaluate: ``{"messages": [user prompt, assistant reference]}``,
    drawn from ``oversample * n`` simulated calls (failed calls, repeats and prompts longer than
    ``max_prompt_chars`` are skipped).
    """
    rows, seen = [], set()
    for r in generate_interactions(oversample * n, seed=seed, task_types=[task_type]):
        prompt = r["prompt"].strip()
        too_long = max_prompt_chars is not None and len(prompt) > max_prompt_chars
        if not r["success"] or r["metadata"] is None or prompt in seen or too_long:
            continue
        seen.add(prompt)
        answer = reference_response(task_type, json.loads(r["metadata"])["expected"])
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    return rows[:n]
