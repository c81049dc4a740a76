"""Simulated users in front of the gateway: ``ftops simulate-traffic``.

Each user sends the simulator's prompts through ``ftops serve`` with the real ``openai`` client, reads the
answer, and rates it the way the log simulator's users rate (mostly 4-5 when the answer is right, mostly
1-2 when it is wrong; some never rate), through ``POST /v1/feedback``. So the warehouse gets the served
models' own traffic, with versions, latencies and ratings, for the canary judge and the next curation.

With ``drift_share`` a share of the calls asks about the drifted entities of :mod:`ftops_dev.drift` (new
cities, a new sentiment phrasing, larger numbers, a new support problem), which a champion trained on the
first day's logs never saw; with ``correction_share`` users who rate a wrong answer also type the right one
(``correction`` in the feedback body) that share of the time. With ``conversation_share`` a share of the calls
is a conversation: a system prompt and an earlier exchange (another prompt of the task type and its right answer)
before the user's message, as a chat product sends them (:func:`conversation`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ftops.core.stats import percentile
from ftops.evaluation.metrics import normalise
from ftops_dev.drift import DRIFT_TASKS
from ftops_dev.known_truth import is_right
from ftops_dev.simulate import GAMER_USER_ID, USER_IDS, _rating
from ftops_dev.task_types import FREE_TEXT_TASK_TYPES, TASK_TYPES, TASKS, reference_response

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)


@dataclass
class VersionStats:
    """What the simulated users saw from one served version."""

    requests: int = 0
    correct: int = 0
    errors: int = 0
    ratings: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)  # (prompt, answer), the first few

    def summary(self) -> dict[str, Any]:
        answered = self.requests - self.errors
        return {
            "requests": self.requests, "errors": self.errors,
            "accuracy": round(self.correct / answered, 3) if answered else None,
            "mean_rating": round(sum(self.ratings) / len(self.ratings), 2) if self.ratings else None,
            "latency_p50_ms": round(percentile(self.latencies_ms, 0.5)) if self.latencies_ms else None,
            "latency_p95_ms": round(percentile(self.latencies_ms, 0.95)) if self.latencies_ms else None,
        }  # fmt: skip


@dataclass
class TrafficReport:
    """Per served ``model_version`` (``ftops-<task_type>/<version>``, or ``error:<task_type>``)."""

    versions: dict[str, VersionStats]
    seconds: float

    def lines(self, samples: int = 3) -> list[str]:
        out = []
        for name, stats in sorted(self.versions.items()):
            out.append(f"{name}: {stats.summary()}")
            out += [f"    {p[:70]!r} -> {a[:90]!r}" for p, a in stats.samples[:samples]]
        return out


SYSTEM_PROMPTS = (
    "You are a helpful assistant. Answer in the house format.",
    "You are the support desk's assistant. Be brief and exact.",
    "Answer the user's last message only, in one line.",
)


def conversation(task_type: str, prompt: str, key: str, share: float) -> list[dict[str, str]]:
    """The messages of one call: ``prompt`` alone, or (``share`` of the keys) after a system prompt and an earlier
    exchange of the same task type (the simulator's prompt and its right answer), drawn from ``key``."""
    rng = random.Random(f"conversation/{key}")
    if not share or rng.random() >= share:
        return [{"role": "user", "content": prompt}]
    kind = task_type if task_type in TASKS else TASK_TYPES[0]
    earlier, answer, _ = TASKS[kind][0](rng)
    return [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}, {"role": "user", "content": earlier},
            {"role": "assistant", "content": reference_response(kind, answer)}, {"role": "user", "content": prompt}]  # fmt: skip


async def _user_calls(
    client: openai.AsyncOpenAI, jobs: asyncio.Queue[tuple[int, tuple[str, str, str, str]]],
    report: dict[str, VersionStats], seed: int, max_tokens: int, feedback: bool, correction_share: float,
    conversation_share: float,
) -> None:  # fmt: skip
    import httpx
    import openai

    while not jobs.empty():
        i, (task_type, user, prompt, reference) = jobs.get_nowait()
        # Each call's rating (and whether its user corrects it) is drawn from a source of its own: which simulated
        # user happens to take which call depends on timing, so a shared one would rate the same answers
        # differently under load (and a canary review on them would not be reproducible).
        rng, typer = random.Random(f"rating/{seed}/{i}"), random.Random(f"corrections/{seed}/{i}")
        started = time.perf_counter()
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=f"ftops/{task_type}", user=user,
                messages=conversation(task_type, prompt, f"{seed}/{i}", conversation_share),  # type: ignore[arg-type]
                max_tokens=max_tokens, temperature=0,
            )  # fmt: skip
        except openai.APIError as exc:
            stats = report[f"error:{task_type}"]
            stats.requests += 1
            stats.errors += 1
            log.warning("Request for ftops/%s failed: %s", task_type, exc)
            continue
        completion = raw.parse()
        version = raw.headers.get("x-ftops-model-version", f"unknown:{task_type}")
        answer = completion.choices[0].message.content or ""
        try:  # a free-text answer is right in any phrasing that does the job
            correct = is_right(task_type, prompt, answer)
        except (LookupError, ValueError):  # not a simulated task type: its prompts are the first one's
            correct = normalise(answer) == normalise(reference)
        stats = report[version]
        stats.requests += 1
        stats.correct += correct
        stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        if len(stats.samples) < 5:
            stats.samples.append((prompt, answer))
        rating = _rating(rng, correct, True, user)
        if feedback and rating is not None:
            stats.ratings.append(rating)
            body: dict[str, Any] = {"id": completion.id, "rating": rating}
            if not correct and typer.random() < correction_share:  # the ratings stay those of a run without them
                body["correction"] = reference
            await client.post("/feedback", body=body, cast_to=httpx.Response)


async def _drive(
    client: openai.AsyncOpenAI, calls: Sequence[tuple[str, str, str, str]], concurrency: int, seed: int,
    max_tokens: int, feedback: bool, correction_share: float = 0.0, conversation_share: float = 0.0,
) -> dict[str, VersionStats]:  # fmt: skip
    jobs: asyncio.Queue[tuple[int, tuple[str, str, str, str]]] = asyncio.Queue()
    for job in enumerate(calls):
        jobs.put_nowait(job)
    report: dict[str, VersionStats] = defaultdict(VersionStats)
    async with client:
        await asyncio.gather(*(_user_calls(client, jobs, report, seed, max_tokens, feedback, correction_share,
                                           conversation_share) for _ in range(concurrency)))  # fmt: skip
    return dict(report)


def make_calls(
    requests: int, seed: int, task_types: Sequence[str] = TASK_TYPES, drift_share: float = 0.0
) -> list[tuple[str, str, str, str]]:
    """``(task_type, user_id, prompt, reference answer)`` for ``requests`` calls, reproducible from ``seed``.

    ``drift_share`` of the calls ask about drifted entities (:data:`ftops_dev.drift.DRIFT_TASKS`), drawn from a
    source of their own: the other calls are those of a run without drift.
    """
    rng = random.Random(seed)
    drift = random.Random(f"drift/{seed}")
    users = [u for u in USER_IDS if u != GAMER_USER_ID]
    calls = []
    for _ in range(requests):
        task_type = rng.choice(list(task_types))
        kind = task_type if task_type in TASKS else TASK_TYPES[0]  # another task type: the first one's prompts
        prompt, answer, _ = TASKS[kind][0](rng)
        if drift_share and drift.random() < drift_share:
            prompt, answer, _ = DRIFT_TASKS[kind][0](drift)
        calls.append((task_type, rng.choice(users), prompt, reference_response(kind, answer)))
    return calls


def simulate_traffic(
    base_url: str, *, api_key: str = "ftops-local", requests: int = 200, concurrency: int = 4, seed: int = 0,
    task_types: Sequence[str] | None = None, max_tokens: int = 48, feedback: bool = True, drift_share: float = 0.0,
    correction_share: float = 0.0, conversation_share: float = 0.0,
) -> TrafficReport:  # fmt: skip
    """Send ``requests`` simulated calls through a gateway at ``concurrency`` and rate the answers.

    Args:
        base_url: The gateway's OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: A key the gateway accepts (any text when it needs none).
        requests: Calls in all, spread uniformly over ``task_types``.
        concurrency: Simulated users calling at the same time.
        seed: Seeds prompts, users and ratings.
        task_types: Task types to call (each needs a champion); default: the simulator's task types that the
            gateway serves (``GET /v1/models``), ``support_reply`` included.
        max_tokens: Answer cap per call.
        feedback: Rate answers through ``/v1/feedback``.
        drift_share: Share of the calls that ask about drifted entities (:func:`make_calls`).
        correction_share: Share of the rated wrong answers whose feedback carries the right answer as
            ``correction`` (a gateway that does not take corrections ignores it).
        conversation_share: Share of the calls sent as a conversation (:func:`conversation`).
    """
    import openai

    if task_types is None:
        served = {m.id.removeprefix("ftops/") for m in openai.OpenAI(api_key=api_key, base_url=base_url).models.list()}
        task_types = [t for t in (*TASK_TYPES, *FREE_TEXT_TASK_TYPES) if t in served]
        if not task_types:
            known = [*TASK_TYPES, *FREE_TEXT_TASK_TYPES]
            raise LookupError(f"{base_url} serves none of the simulator's task types {known} yet")
    client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=2, timeout=120)
    started = time.perf_counter()
    calls = make_calls(requests, seed, task_types, drift_share)
    versions = asyncio.run(_drive(client, calls, concurrency, seed, max_tokens, feedback, correction_share,
                                  conversation_share))  # fmt: skip
    return TrafficReport(versions=versions, seconds=time.perf_counter() - started)
