"""What answers a request once the router picked a version: a local Hugging Face model, or an API model.

A registered version is loaded from what its training run left in MLflow: the run's ``base_model`` tag plus
its trained weights (the ``adapter/`` or ``full_model/`` artifact), downloaded once into a cache folder; for
the OpenAI backend, the fine-tuned model's id (``openai.fine_tuned_model``), asked through any
OpenAI-compatible endpoint; for an upstream version (:mod:`ftops.registry.upstream`), the model behind the
connection its run names, whose answers carry their cost from the version's prices. All answer a *list* of
requests in one call, so a gateway can batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ftops.core.config import check_base_model
from ftops.registry import models as registry
from ftops.registry.upstream import CONNECTION_TAG, MODEL_TAG, UPSTREAM, Prices, prices_of

if TYPE_CHECKING:
    import openai

    from ftops.evaluation.generate import LoadedModel

log = logging.getLogger(__name__)

API_MODEL_TAG = "openai.fine_tuned_model"  # the training run's tag naming the API's fine-tuned model


@dataclass(frozen=True)
class CompletionRequest:
    """One chat request as the backends see it: role/content turns and a token cap.

    ``decode_tokens`` (at least ``max_tokens``) is the cap a local model decodes with: the gateway rounds caps up
    to a few buckets so that requests with different caps share a batch; the answer is then cut back to
    ``max_tokens`` (greedy decoding: the first ``max_tokens`` tokens are the same either way).
    """

    messages: tuple[tuple[str, str], ...]
    max_tokens: int
    decode_tokens: int | None = None


@dataclass(frozen=True)
class Completion:
    """One answer: its text, token counts, why it ended (``stop`` or ``length``) and, where priced, its cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    cost: float | None = None
    decode_ms: float | None = None  # a local model's share of its batch's decode time (batch time / batch size)


class Backend(Protocol):
    """Answers a batch of requests, in request order. ``exclusive``: needs the machine's compute alone."""

    name: str
    exclusive: bool

    def complete(self, requests: Sequence[CompletionRequest]) -> list[Completion]: ...


class LocalBackend:
    """A Hugging Face causal LM answering by the evaluation's batched greedy decoding.

    Requests with the same ``max_tokens`` are decoded in one batch; greedy decoding gives each the answer it
    would get alone (see :mod:`ftops.evaluation.generate`), so batching changes throughput, not answers.
    """

    exclusive = True

    def __init__(self, loaded: LoadedModel, name: str, cost_per_hour: float = 0.0) -> None:
        self.loaded, self.name, self.cost_per_hour = loaded, name, cost_per_hour

    def complete(self, requests: Sequence[CompletionRequest]) -> list[Completion]:
        from ftops.core.chat import render_prompt
        from ftops.evaluation.generate import generate_answers

        tokenizer = self.loaded.tokenizer
        prompts = [render_prompt(tokenizer, [{"role": r, "content": c} for r, c in req.messages]) for req in requests]
        out: list[Completion | None] = [None] * len(requests)
        by_cap: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            by_cap.setdefault(max(req.decode_tokens or 0, req.max_tokens), []).append(i)
        for cap, idx in by_cap.items():
            started = time.perf_counter()
            gen = generate_answers(self.loaded, [prompts[i] for i in idx], batch_size=len(idx), max_new_tokens=cap,
                                   progress=False)  # fmt: skip
            share_s = (time.perf_counter() - started) / len(idx)  # each call's share of the machine's time
            cost = self.cost_per_hour * share_s / 3600 if self.cost_per_hour > 0 else None  # unpriced: no cost
            for j, i in enumerate(idx):
                n_prompt = len(tokenizer(prompts[i], add_special_tokens=False)["input_ids"])
                text, count, asked = gen.texts[j], gen.token_counts[j], requests[i].max_tokens
                if count > asked:  # decoded to the bucket's cap: cut back to the request's own
                    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:asked]
                    text, count = str(tokenizer.decode(ids, skip_special_tokens=True)).strip(), asked
                out[i] = Completion(text, n_prompt, count, "length" if count >= asked else "stop", cost=cost,
                                    decode_ms=share_s * 1000)  # fmt: skip
        return [c for c in out if c is not None]


class ApiBackend:
    """A model behind an OpenAI-compatible chat completions endpoint; a batch is sent as parallel requests."""

    exclusive = False

    def __init__(self, client: openai.OpenAI, model: str, name: str, *, parallel: int = 8,
                 prices: Prices | None = None) -> None:  # fmt: skip
        self.client, self.model, self.name, self.prices = client, model, name, prices
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="ftops-api")

    def _one(self, req: CompletionRequest) -> Completion:
        from ftops.core.openai_api import api_errors

        with api_errors(f"chat completion with {self.model}"):
            response = self.client.chat.completions.create(
                model=self.model, messages=[{"role": r, "content": c} for r, c in req.messages],  # type: ignore[misc]
                max_tokens=req.max_tokens, temperature=0,
            )  # fmt: skip
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        prompt_tokens, completion_tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        return Completion(
            text=(choice.message.content or "") if choice else "",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=str(choice.finish_reason) if choice and choice.finish_reason else "stop",
            cost=self.prices.cost(prompt_tokens, completion_tokens) if self.prices else None,
        )

    def complete(self, requests: Sequence[CompletionRequest]) -> list[Completion]:
        if len(requests) == 1:  # the gateway's batcher sends an API model one request at a time
            return [self._one(requests[0])]
        return list(self._pool.map(self._one, requests))


ApiClientFactory = Callable[[], "openai.OpenAI"]
ConnectionClientFactory = Callable[[str], "openai.OpenAI"]  # a connection id -> its client


def connection_client(conn_id: str) -> openai.OpenAI:
    """The client of connection ``conn_id`` from ``AIRFLOW_CONN_<CONN_ID>`` (the gateway runs outside Airflow).

    One retry: a caller waits, so an upstream that is down must fail the call in seconds, not minutes."""
    from ftops.core.openai_api import connection_from_env, make_client

    return make_client(**connection_from_env(conn_id), max_retries=1, timeout=60)


def load_backend(
    task_type: str, version: str, cache_dir: str | Path, api_client: ApiClientFactory | None = None,
    connect: ConnectionClientFactory = connection_client, cost_per_hour: float = 0.0,
) -> Backend:
    """Load a registered version of ``ftops-<task_type>`` for serving.

    Args:
        task_type: The task type.
        version: The registered version.
        cache_dir: Where downloaded weights are kept (``<cache_dir>/<task_type>/<version>``), reused on the next
            load.
        api_client: Makes the OpenAI-compatible client for API-backed versions; None: such versions fail to
            load (with a message saying what to configure).
        connect: Makes the client of an upstream version's connection (default: from ``AIRFLOW_CONN_<ID>``).
        cost_per_hour: The hourly price of the machine a local model runs on (``gate.compute_cost_per_hour``):
            each local answer's cost is its share of the batch's decode time at that price (0: not priced).

    Raises:
        RegistryUnavailableError: The registry failed to answer.
        LookupError: The version, its run or its model cannot be found.
        OSError / ValueError: The weights cannot be loaded.
    """
    c = registry.client()
    name = registry.model_name(task_type)
    run: Any = None
    with registry.store_errors(f"read {name} version {version}", missing_ok=True):
        mv = c.get_model_version(name, str(version))
        run = c.get_run(mv.run_id) if mv.run_id else None
    if run is None:
        raise LookupError(f"{name} version {version} or its training run does not exist")
    tags: dict[str, str] = dict(run.data.tags)
    label = f"{name}/{version}"
    if tags.get("backend") == UPSTREAM:
        conn, model = tags.get(CONNECTION_TAG, ""), tags.get(MODEL_TAG, "")
        if not conn or not model:
            raise LookupError(f"{label}: its run names no upstream connection and model")
        log.info("%s: forwarding to upstream model %s through connection %s", label, model, conn)
        return ApiBackend(connect(conn), model, label, prices=prices_of(tags))
    if tags.get("backend") == "openai":
        model = tags.get(API_MODEL_TAG) or ""
        if not model:
            raise LookupError(f"{label}: its run has no {API_MODEL_TAG!r} tag (the fine-tune did not finish)")
        if api_client is None:
            raise LookupError(f"{label} is served by an API ({model}): start the gateway with an API key "
                              "(FTOPS_OPENAI_API_KEY) and base URL (--openai-base-url)")  # fmt: skip
        log.info("%s: forwarding to API model %s", label, model)
        return ApiBackend(api_client(), model, label)
    # Keyed by run too: a registry recreated under the same FTOPS_HOME numbers its versions from 1 again.
    folder = Path(cache_dir) / task_type / f"{version}-{run.info.run_id}"
    return LocalBackend(_load_local(tags, run.info.artifact_uri, folder), label, cost_per_hour)


def _load_local(tags: dict[str, Any], artifact_uri: str, folder: Path) -> LoadedModel:
    import mlflow

    from ftops.evaluation.generate import load_model

    base_name = tags.get("base_model")
    if not base_name:
        raise LookupError("the training run has no base_model tag")
    base = check_base_model(str(base_name))
    weights = str(tags.get("ftops.weights", "adapter"))
    local = folder / weights
    if not local.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{weights}.partial"
        if partial.exists():
            import shutil

            shutil.rmtree(partial)
        partial.mkdir()
        mlflow.artifacts.download_artifacts(artifact_uri=f"{artifact_uri}/{weights}", dst_path=str(partial))
        (partial / weights).rename(local)  # whole or absent: a crash mid-download leaves only the partial folder
        partial.rmdir()
    return load_model(base, local)
