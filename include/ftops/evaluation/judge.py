"""A pairwise LLM judge through any OpenAI-compatible endpoint: is the candidate's answer better than the champion's?

For a free-text task type, exact match against a reference says little: a right answer can be phrased many
ways. Here a judge model reads the question (and the reference, when there is one) and two answers, ``A`` and
``B``, and says which is better, or ``tie``. Each prompt is asked twice with the answers swapped, and an item
counts as a win or a loss only when both orders agree, so a judge that prefers a position (say, always the
first answer) produces ties, not a verdict. From the per-item verdicts:

* win rate = (wins + ties / 2) / n, net win = (wins - losses) / n, and the net win's paired bootstrap
  interval (:func:`ftops.evaluation.metrics.paired_bootstrap` on "candidate won" vs "champion won");
* calls made, verdicts from the cache, tokens and cost (tokens x ``price_per_1m_tokens``).

Calls are cached on disk by a content hash (judge model, template version, question, reference and the two
answers in order: :func:`cache_key`), so re-judging the same answers costs nothing, and budgeted: an
evaluation that needs more than ``max_calls`` new calls fails before its first call. Retries are the
``openai`` client's own (``max_retries``, backoff or Retry-After); a failure names the endpoint and the model,
never a prompt. The cache holds verdicts and token counts only, never text. ``openai`` is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ftops.core.config import JudgeConfig, ftops_home
from ftops.core.openai_api import APIRequestError, RetryableAPIError

if TYPE_CHECKING:
    import openai


log = logging.getLogger(__name__)

TEMPLATE_VERSION = "ftops-judge-v1"
"""Part of every cache key: change it whenever the judge's prompt changes, so old verdicts are not reused."""
JUDGE_SYSTEM_PROMPT = (
    "You are an impartial judge of answers to a user's request. The user message is a JSON object with the "
    '"question", optionally a "reference" answer known to be right, and two candidate answers "A" and "B". '
    "Decide which answer does the job the question asks for better: correctness first (agreement with the "
    "reference in substance, not in wording), then completeness and clarity. Ignore the order in which the "
    "answers are shown and their length. Reply with exactly one token: A, B, or tie."
)
"""The judge's fixed system prompt (the stand-in server recognises judge requests by it)."""
CANDIDATE, CHAMPION, TIE = "candidate", "champion", "tie"
UNPARSEABLE = "unparseable"
_VERDICTS = ("A", "B", "tie")


class JudgeBudgetError(RuntimeError):
    """An evaluation would need more judge calls than ``max_calls`` allows; nothing was spent."""


# -- one judge request -------------------------------------------------------------------------------------------
def judge_messages(
    question: str, answer_a: str, answer_b: str, *, reference: str | None = None, task: str | None = None,
    max_chars: int = 4000,
) -> list[dict[str, str]]:  # fmt: skip
    """The chat messages of one judge request: the fixed system prompt and a JSON user message.

    Args:
        question: The user's prompt.
        answer_a: The answer shown first.
        answer_b: The answer shown second.
        reference: A right answer, when known (an eval set's reference).
        task: The task type, as context for the judge.
        max_chars: Each text is cut to this many characters.
    """
    payload: dict[str, Any] = {"question": question[:max_chars]}
    if task:
        payload["task"] = task
    if reference is not None:
        payload["reference"] = reference[:max_chars]
    payload["answers"] = {"A": answer_a[:max_chars], "B": answer_b[:max_chars]}
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT},
            {"role": "user", "content": json.dumps(payload, ensure_ascii=False)}]  # fmt: skip


def parse_verdict(text: str | None) -> str:
    """``"A"``, ``"B"`` or ``"tie"`` from a judge's reply, else :data:`UNPARSEABLE`.

    Strict: only the token itself, with surrounding whitespace (``tie`` in any case); anything else
    (an explanation, ``"A."``, ``"Answer: A"``) is unparseable and counted as such (it scores as a tie).
    """
    token = (text or "").strip()
    if token in ("A", "B"):
        return token
    return "tie" if token.lower() == "tie" else UNPARSEABLE


def cache_key(model: str, question: str, reference: str | None, answer_a: str, answer_b: str) -> str:
    """SHA-256 of everything that decides a verdict: judge model, template version, texts, answer order."""
    blob = json.dumps([model, TEMPLATE_VERSION, question, reference, answer_a, answer_b], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class VerdictCache:
    """Verdicts on disk, one private file per key (``<root>/<key[:2]>/<key>.json``), written atomically.

    A file holds ``{"verdict": ..., "tokens": ...}``: no text. An unreadable file is a miss.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            verdict = json.loads(self._path(key).read_text())["verdict"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("Judge cache entry %s unreadable (%s): asking again", key[:12], type(exc).__name__)
            return None
        return verdict if verdict in (*_VERDICTS, UNPARSEABLE) else None

    def put(self, key: str, verdict: str, tokens: int) -> None:
        from ftops.core.files import private_dir

        path = self._path(key)
        private_dir(path.parent)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"verdict": verdict, "tokens": tokens}, f)
        os.replace(tmp, path)


def default_cache(cfg: JudgeConfig) -> VerdictCache:
    """The configured cache folder, or ``FTOPS_HOME/cache/judge``."""
    return VerdictCache(cfg.cache_dir or ftops_home() / "cache" / "judge")


@dataclass(frozen=True)
class Request:
    """One judge call to make: its cache key and its messages."""

    key: str
    messages: list[dict[str, str]]


@dataclass
class Usage:
    """What a batch of judge requests spent."""

    calls: int = 0
    cached: int = 0
    tokens: int = 0
    seconds: float = 0.0


def run_requests(client: openai.OpenAI, cfg: JudgeConfig, requests: Sequence[Request],
                 cache: VerdictCache | None = None) -> tuple[list[str], Usage]:  # fmt: skip
    """Verdicts (``A``/``B``/``tie``/:data:`UNPARSEABLE`) of requests, from the cache or the judge.

    Identical requests are asked once. Before any call, the new calls needed are counted against
    ``cfg.max_calls``.

    Args:
        client: An ``openai.OpenAI`` client for the judge's endpoint (its retries and timeout are replaced by
            ``cfg.max_retries`` and ``cfg.timeout_s``).
        cfg: The judge settings.
        requests: The requests, in order.
        cache: Where verdicts are kept (default :func:`default_cache`).

    Returns:
        One verdict per request, in order, and the usage.

    Raises:
        JudgeBudgetError: More than ``cfg.max_calls`` new calls would be needed (nothing is spent).
        RetryableAPIError: The judge stayed unavailable (429, 5xx, timeout) after the client's retries.
        APIRequestError: The judge refused the request (bad key, unknown model).
    """
    cache = cache or default_cache(cfg)
    known: dict[str, str] = {}
    todo: dict[str, Request] = {}
    for r in requests:
        if r.key in known or r.key in todo:
            continue
        hit = cache.get(r.key)
        if hit is None:
            todo[r.key] = r
        else:
            known[r.key] = hit
    endpoint = str(client.base_url)
    if len(todo) > cfg.max_calls:
        raise JudgeBudgetError(
            f"judging needs {len(todo)} new calls to {cfg.model} at {endpoint} ({len(requests)} requests, "
            f"{len(requests) - len(todo)} answered by the cache or repeated), more than evaluation.judge.max_calls "
            f"= {cfg.max_calls}: raise the budget or judge fewer prompts; nothing was spent"
        )
    usage = Usage(calls=len(todo), cached=len(requests) - len(todo))
    judge = client.with_options(max_retries=cfg.max_retries, timeout=cfg.timeout_s)
    started = time.perf_counter()
    lock = threading.Lock()
    every, hits = max(1, len(todo) // 10), len(known)

    def ask(r: Request) -> None:
        verdict, tokens = _ask(judge, cfg, endpoint, r.messages)
        cache.put(r.key, verdict, tokens)
        with lock:
            known[r.key] = verdict
            usage.tokens += tokens
            done = len(known) - hits
        if done % every == 0 and done < len(todo):
            rate = done / max(time.perf_counter() - started, 1e-9)
            log.info("Judge %s: %d/%d calls (%.1f/s)", cfg.model, done, len(todo), rate)

    if todo:
        pool = ThreadPoolExecutor(max_workers=min(cfg.concurrency, len(todo)), thread_name_prefix="judge")
        try:
            for future in [pool.submit(ask, r) for r in todo.values()]:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # no more spending; the verdicts received so far stay cached
            raise
        pool.shutdown()
        usage.seconds = time.perf_counter() - started
        log.info("Judge %s: %d calls in %.1f s (%.1f/s), %d from the cache, %d tokens", cfg.model, usage.calls,
                 usage.seconds, usage.calls / max(usage.seconds, 1e-9), usage.cached, usage.tokens)  # fmt: skip
    return [known[r.key] for r in requests], usage


def _ask(judge: openai.OpenAI, cfg: JudgeConfig, endpoint: str, messages: list[dict[str, str]]) -> tuple[str, int]:
    """One judge call; errors name the endpoint and model, never the request's text (so ``from None``)."""
    import openai

    where = f"judge {cfg.model!r} at {endpoint}"
    try:
        response = judge.chat.completions.create(model=cfg.model, messages=cast(Any, messages), temperature=0,
                                                 max_tokens=8)  # fmt: skip
    except openai.APIStatusError as exc:
        status, code = exc.status_code, f" ({exc.code})" if exc.code else ""
        if status in (408, 409, 429) or status >= 500:
            raise RetryableAPIError(f"{where} answered HTTP {status}{code} after {cfg.max_retries} retries",
                                    status_code=status, code=exc.code) from None  # fmt: skip
        raise APIRequestError(f"{where} refused the request: HTTP {status}{code}", status_code=status,
                              code=exc.code) from None  # fmt: skip
    except openai.APITimeoutError:
        raise RetryableAPIError(f"{where} timed out ({cfg.timeout_s:g} s, {cfg.max_retries} retries)") from None
    except openai.APIConnectionError:
        raise RetryableAPIError(f"{where} cannot be reached ({cfg.max_retries} retries)") from None
    text = response.choices[0].message.content if response.choices else None
    return parse_verdict(text), response.usage.total_tokens if response.usage else 0


def cost(cfg: JudgeConfig, tokens: int) -> float:
    """What ``tokens`` judge tokens cost at ``cfg.price_per_1m_tokens``."""
    return tokens * cfg.price_per_1m_tokens / 1_000_000


# -- candidate vs champion ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeResult:
    """The judge's comparison of candidate and champion answers to the same prompts.

    ``verdicts[i]`` is ``candidate``, ``champion`` or ``tie`` for prompt ``i``; ``net_win_ci`` and
    ``win_rate_ci`` are ``(low, high)`` at ``confidence`` (win rate = (1 + net win) / 2 exactly).
    """

    model: str
    n: int
    wins: int
    losses: int
    ties: int
    win_rate: float
    net_win: float
    net_win_ci: tuple[float, float]
    win_rate_ci: tuple[float, float]
    confidence: float
    calls: int
    cached: int
    unparseable: int
    tokens: int
    cost: float
    verdicts: tuple[str, ...]

    def metrics(self) -> dict[str, float]:
        """MLflow run metrics (CONTRACT.md names)."""
        return {"judge_win_rate": self.win_rate, "judge_net_win": self.net_win,
                "judge_net_win_ci_low": self.net_win_ci[0], "judge_net_win_ci_high": self.net_win_ci[1],
                "judge_calls": float(self.calls), "judge_cost": self.cost}  # fmt: skip

    def tags(self, kappa: float | None) -> dict[str, str]:
        """Model-version tags (CONTRACT.md): ``judge.model``, ``metric.judge_*`` and the ``judge.kappa`` relied on."""
        tags = {"judge.model": self.model, "judge.kappa": "none" if kappa is None else f"{kappa:.4f}"}
        tags |= {f"metric.{k}": f"{v:.4f}" for k, v in self.metrics().items()}
        tags["metric.judge_calls"] = str(self.calls)
        tags["metric.judge_cost"] = f"{self.cost:.6f}"  # a few calls cost fractions of a cent
        return tags


def compare_answers(
    client: openai.OpenAI,
    cfg: JudgeConfig,
    prompts: Sequence[str],
    candidate: Sequence[str],
    champion: Sequence[str],
    *,
    references: Sequence[str | None] | None = None,
    task_type: str | None = None,
    cache: VerdictCache | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> JudgeResult:
    """Judge candidate against champion on the same prompts, each asked in both answer orders.

    An item is a win (loss) when both orders prefer the candidate (champion); anything else is a tie,
    including a judge that said ``tie``, or gave no parseable verdict, in either order. Two identical answers
    (up to surrounding whitespace) are a tie without a call.

    Args:
        client: An ``openai.OpenAI`` client for the judge's endpoint.
        cfg: The judge settings (``evaluation.judge``).
        prompts: The questions.
        candidate: The candidate's answers, one per prompt.
        champion: The champion's answers to the same prompts.
        references: A right answer per prompt (None where unknown), shown to the judge.
        task_type: Shown to the judge as context.
        cache: Verdict cache (default :func:`default_cache`).
        confidence: Two-sided level of the net win's interval.
        resamples: Bootstrap resamples.
        seed: Seed of the bootstrap (fixed: the same verdicts give the same interval).

    Returns:
        The result (win rate, net win and its interval, calls, cache hits, cost).

    Raises:
        ValueError: No prompts, or sequences of different lengths.
        JudgeBudgetError: More than ``cfg.max_calls`` new calls would be needed (nothing is spent).
        RetryableAPIError: The judge stayed unavailable after the client's retries.
        APIRequestError: The judge refused the request.
    """
    from ftops.evaluation.metrics import paired_bootstrap

    refs = list(references) if references is not None else [None] * len(prompts)
    if not prompts or not len(prompts) == len(candidate) == len(champion) == len(refs):
        raise ValueError(f"need equally many prompts, answers and references, got {len(prompts)}, {len(candidate)}, "
                         f"{len(champion)}, {len(refs)}")  # fmt: skip
    asked = [
        i for i, (cand, champ) in enumerate(zip(candidate, champion, strict=True)) if cand.strip() != champ.strip()
    ]
    requests = []
    for i in asked:  # the same answer from both models is a tie without asking
        q, cand, champ, ref = prompts[i], candidate[i], champion[i], refs[i]
        for a, b in ((cand, champ), (champ, cand)):  # the candidate first, then second
            messages = judge_messages(q, a, b, reference=ref, task=task_type, max_chars=cfg.max_answer_chars)
            requests.append(Request(cache_key(cfg.model, q, ref, a, b), messages))
    answers, usage = run_requests(client, cfg, requests, cache)
    verdicts = [TIE] * len(prompts)
    for i, first, second in zip(asked, answers[0::2], answers[1::2], strict=True):
        as_first = {"A": CANDIDATE, "B": CHAMPION}.get(first, TIE)
        as_second = {"A": CHAMPION, "B": CANDIDATE}.get(second, TIE)
        verdicts[i] = as_first if as_first == as_second else TIE
    n = len(verdicts)
    wins, losses = verdicts.count(CANDIDATE), verdicts.count(CHAMPION)
    net, low, high = paired_bootstrap([v == CANDIDATE for v in verdicts], [v == CHAMPION for v in verdicts],
                                      resamples=resamples, confidence=confidence, seed=seed)  # fmt: skip
    result = JudgeResult(
        model=cfg.model, n=n, wins=wins, losses=losses, ties=n - wins - losses, win_rate=(wins + (n - wins - losses) / 2) / n,
        net_win=net, net_win_ci=(low, high), win_rate_ci=((1 + low) / 2, (1 + high) / 2), confidence=confidence,
        calls=usage.calls, cached=usage.cached, unparseable=answers.count(UNPARSEABLE), tokens=usage.tokens,
        cost=cost(cfg, usage.tokens), verdicts=tuple(verdicts),
    )  # fmt: skip
    log.info("Judge %s on %d prompts: %d wins, %d ties, %d losses (win rate %.3f, net win %+.3f, %.0f%% CI "
             "[%+.3f, %+.3f]); %d calls, %d cached, %d unparseable, cost %.4f", cfg.model, n, wins, result.ties,
             losses, result.win_rate, net, confidence * 100, low, high, usage.calls, usage.cached,
             result.unparseable, result.cost)  # fmt: skip
    return result
