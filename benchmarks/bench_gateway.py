"""Benchmark the serving gateway (``ftops serve``): added latency over the model called directly, and
throughput under concurrency.

Usage::

    . scripts/env.sh && python benchmarks/bench_gateway.py [--quick] [--latency-requests 200]
        [--throughput-requests 128] [--concurrency 1,4,16] [--repeat 4] [--max-tokens 32]
        [--finetune-epochs 10] [--batch-wait-ms 5] [--max-batch 16] [--spool-on-tmpfs]
        [--server process|thread] [--threads 1] [--skip-overhead] [--skip-throughput]

Model: the local base model (``local:tiny-gpt2`` under ``FTOPS_HOME``, built first if missing: minutes),
with a LoRA adapter trained here on 400 of the simulator's ``--task`` prompts (``--finetune-epochs``, ~1 min,
merged and cached beside the base model) so that answers follow the reply template and have the task's
length (10-32 tokens for ``city_extraction``); the base model alone answers in ~5 tokens. ``--quick`` serves
the base model (or, when none is built, a 60-step one it builds) with fewer requests: < 2 min.

Set-up, as the unit tests do it: the model registered in a throw-away MLflow SQLite store as a fully
fine-tuned version and made champion; a SQLite warehouse and the spool in a temporary folder (on disk;
``--spool-on-tmpfs``: in ``/dev/shm``, where fsync costs nothing); :func:`ftops.serving.gateway.build_gateway`
with the default ``serving`` config (``--batch-wait-ms`` and ``--max-batch`` override it). The gateway runs
under uvicorn in a child process (``--server process``, as ``ftops serve`` runs beside its clients) or in a
thread of this process (``--server thread``, as the tests run it: client and server share one GIL). The
child wraps ``LocalBackend.complete`` to record each decoded batch's size, start and end; nothing else is
changed. Torch runs on ``--threads`` threads (default 1) in both processes; ``OMP_NUM_THREADS`` matches.

1. Overhead, concurrency 1: for each prompt, the same request (``--max-tokens``, greedy) three ways, the
   order rotated per prompt so load that comes and goes falls on all alike: ``LocalBackend.complete([req])``
   on the same weights loaded in this process (direct, the baseline), the real ``openai`` client through
   the gateway (HTTP, JSON, routing, batcher, spool append + fsync, logging), and the same with
   ``stream=True`` (time to the first content chunk and to the end). Added latency is the per-prompt
   difference gateway - direct. Also the mean CPU time per request of each process, which other load on
   the machine disturbs less than wall time. Answers must be equal (greedy decoding).
2. Throughput: ``--throughput-requests`` requests with the same prompts at each ``--concurrency`` (that many
   workers sharing one ``AsyncOpenAI`` client, each sending its next request when its last is answered: a
   closed loop), ``--repeat`` passes, the order reversed every pass; requests/s against concurrency 1 of
   the same run, the mean batch size from ``/healthz``, and from the server's record the batch sizes, the
   share of the time the decode thread was busy and its idle time between two batches. In the same
   rotation, the same prompts decoded directly in batches of 1 and of the largest concurrency: the
   ceiling batching gives this model on this machine.

Every answered call must be in the warehouse at the end (the gateway logs each before answering).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
sys.path.insert(0, str(ROOT))  # tests.serving_support

TASK = "bench_gw"
MODEL = f"ftops/{TASK}"


def _threads_from_argv() -> str:
    """``--threads`` read before torch is imported (OpenMP reads its variable once, at start)."""
    argv = sys.argv
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return os.environ.get("FTOPS_BENCH_THREADS", "1")


os.environ.setdefault("FTOPS_BENCH_THREADS", _threads_from_argv())  # inherited by the server process
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = os.environ["FTOPS_BENCH_THREADS"]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def pct(values: list[float], q: float) -> float:
    from ftops.core.stats import percentile

    return percentile(values, q)


# -- the server ---------------------------------------------------------------------------------------------
class BatchLog:
    """Sizes and seconds of the batches the local backend decoded (appended from the decode thread)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float, float]] = []  # size, start, end (perf_counter)

    def install(self) -> None:
        from ftops.serving.backends import LocalBackend

        original = LocalBackend.complete
        record = self.batches

        def complete(backend: LocalBackend, requests: Any) -> Any:
            started = time.perf_counter()
            out = original(backend, requests)
            record.append((len(requests), started, time.perf_counter()))
            return out

        LocalBackend.complete = complete  # type: ignore[method-assign]


def make_gateway(work: Path, serving: dict[str, Any], spool_dir: str) -> Any:
    import sqlalchemy as sa

    from ftops.core.config import ServingConfig
    from ftops.serving.gateway import build_gateway

    engine = sa.create_engine(f"sqlite:///{work / 'warehouse.db'}")
    return build_gateway(ServingConfig(**serving), engine, spool_dir=spool_dir)


def serve(conn: Connection, work: str, serving: dict[str, Any], spool_dir: str) -> None:
    """The gateway in a child process: sends its base URL, then answers ``stats`` until ``stop``."""
    import logging

    import torch

    torch.set_num_threads(int(os.environ["FTOPS_BENCH_THREADS"]))
    logging.basicConfig(level=logging.WARNING)
    from tests.serving_support import GatewayServer

    batches = BatchLog()
    batches.install()
    with GatewayServer(make_gateway(Path(work), serving, spool_dir)) as server:
        conn.send(server.base_url)
        while (command := conn.recv()) != "stop":
            assert command == "stats"
            conn.send(list(batches.batches))
    conn.send("stopped")


class Server:
    """The gateway under test, in a child process or in a thread of this one."""

    def __init__(self, mode: str, work: Path, serving: dict[str, Any], spool_dir: str) -> None:
        self.mode, self.work, self.serving, self.spool_dir = mode, work, serving, spool_dir

    def __enter__(self) -> Server:
        if self.mode == "process":
            ctx = mp.get_context("spawn")
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(
                target=serve, args=(child, str(self.work), self.serving, self.spool_dir), daemon=True
            )
            self.proc.start()
            if not self.conn.poll(300):
                raise RuntimeError("the gateway process did not start")
            self.base_url = str(self.conn.recv())
        else:
            from tests.serving_support import GatewayServer

            self.batch_log = BatchLog()
            self.batch_log.install()
            self.inner = GatewayServer(make_gateway(self.work, self.serving, self.spool_dir))
            self.base_url = self.inner.__enter__().base_url
        return self

    def batches(self) -> list[tuple[int, float, float]]:
        if self.mode == "process":
            self.conn.send("stats")
            return list(self.conn.recv())
        return list(self.batch_log.batches)

    def cpu(self) -> float:
        """CPU seconds (user + system, all threads) of the gateway process so far; 0 for a thread server."""
        if self.mode != "process":
            return 0.0
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/healthz", timeout=30) as r:
            return dict(json.loads(r.read()))

    def __exit__(self, *exc: object) -> None:
        if self.mode == "process":
            self.conn.send("stop")
            self.conn.poll(120) and self.conn.recv()
            self.proc.join(60)
        else:
            self.inner.__exit__(*exc)


# -- measurements -------------------------------------------------------------------------------------------
def overhead(server: Server, backend: Any, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    """Interleaved single requests: direct, gateway, gateway streamed; seconds per request and answers."""
    import openai

    from ftops.serving.backends import CompletionRequest

    client = openai.OpenAI(api_key="unused", base_url=server.base_url, max_retries=0, timeout=120)

    def direct(p: str) -> tuple[float, str, float]:
        started = time.perf_counter()
        text = backend.complete([CompletionRequest((("user", p),), max_tokens)])[0].text
        return time.perf_counter() - started, text, 0.0

    def gateway(p: str) -> tuple[float, str, float]:
        started = time.perf_counter()
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}],
                                           max_tokens=max_tokens)  # fmt: skip
        return time.perf_counter() - started, r.choices[0].message.content or "", 0.0

    def streamed(p: str) -> tuple[float, str, float]:
        started, first, parts = time.perf_counter(), 0.0, []
        for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}],
                                                    max_tokens=max_tokens, stream=True):  # fmt: skip
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta and not first:
                first = time.perf_counter() - started
            parts.append(delta or "")
        total = time.perf_counter() - started
        return total, "".join(parts), first or total

    arms: dict[str, Callable[[str], tuple[float, str, float]]] = {
        "direct": direct, "gateway": gateway, "stream": streamed,
    }  # fmt: skip
    for p in prompts[:3]:  # warm-up: connection, lazy initialisation
        for arm in arms.values():
            arm(p)
    out: dict[str, Any] = {
        name: {"s": [], "text": [], "first": [], "cpu_here": 0.0, "cpu_server": 0.0} for name in arms
    }
    names = list(arms)
    for i, p in enumerate(prompts):
        for name in names[i % 3 :] + names[: i % 3]:
            here, there = time.process_time(), server.cpu()
            s, text, first = arms[name](p)
            out[name]["cpu_here"] += time.process_time() - here
            out[name]["cpu_server"] += server.cpu() - there
            out[name]["s"].append(s)
            out[name]["text"].append(text)
            out[name]["first"].append(first)
    return out


async def _pass(base_url: str, prompts: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
    import openai

    queue = list(enumerate(prompts))
    latencies, tokens, texts = [], [], [""] * len(prompts)
    async with openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0, timeout=300) as client:

        async def worker() -> None:
            while queue:
                i, p = queue.pop(0)
                started = time.perf_counter()
                r = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}],
                                                         max_tokens=max_tokens)  # fmt: skip
                latencies.append(time.perf_counter() - started)
                tokens.append(r.usage.completion_tokens if r.usage else 0)
                texts[i] = r.choices[0].message.content or ""

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "latencies": latencies, "tokens": sum(tokens), "texts": texts}


def throughput(server: Server, backend: Any, prompts: list[str], levels: list[int], repeat: int,
               max_tokens: int) -> tuple[dict[int, list[dict[str, Any]]], dict[int, list[float]], dict[int, list[float]]]:  # fmt: skip
    """Each concurrency ``repeat`` times, with batch counts and sizes per pass; and the seconds of direct
    passes in batches of 1 and of the largest concurrency, in the same rotation (order reversed every repeat)."""
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
    direct: dict[int, list[float]] = {1: [], max(levels): []}
    direct_cpu: dict[int, list[float]] = {1: [], max(levels): []}
    asyncio.run(_pass(server.base_url, prompts[:8], max(levels), max_tokens))  # warm-up
    steps = [("gateway", c) for c in levels] + [("direct", b) for b in direct]
    for r in range(repeat):
        for kind, c in steps if r % 2 == 0 else list(reversed(steps)):
            if kind == "direct":
                here = time.process_time()
                direct[c].append(direct_batched(backend, prompts, c, max_tokens))
                direct_cpu[c].append(time.process_time() - here)
                continue
            before_health = next(iter(server.health()["loaded"].values()))
            before_batches = len(server.batches())
            here, there = time.process_time(), server.cpu()
            result = asyncio.run(_pass(server.base_url, prompts, c, max_tokens))
            result["cpu_here"], result["cpu_server"] = time.process_time() - here, server.cpu() - there
            after_health = next(iter(server.health()["loaded"].values()))
            batches = server.batches()[before_batches:]
            result["batches"] = after_health["batches"] - before_health["batches"]
            result["requests"] = after_health["requests"] - before_health["requests"]
            result["sizes"] = [n for n, _, _ in batches]
            result["decode_s"] = sum(end - start for _, start, end in batches)
            result["gaps"] = [b[1] - a[2] for a, b in zip(batches, batches[1:], strict=False)]
            result["load"] = load()
            runs[c].append(result)
    return runs, direct, direct_cpu


def direct_batched(backend: Any, prompts: list[str], batch: int, max_tokens: int) -> float:
    from ftops.serving.backends import CompletionRequest

    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        backend.complete([CompletionRequest((("user", p),), max_tokens) for p in prompts[i : i + batch]])
    return time.perf_counter() - started


def finetuned(base: Path, task: str, epochs: int, avoid: set[str]) -> Path:
    """The base model with a LoRA adapter trained on 400 of the simulator's prompts (merged and saved), so
    answers follow the reply template and have the task's length; cached under ``FTOPS_HOME/models``."""
    from ftops_dev.simulate import clean_chat_rows

    from ftops.core.config import HuggingFaceBackend
    from ftops.evaluation.generate import load_model
    from ftops.training.hf import fine_tune

    out = base.with_name(f"{base.name}-bench-gateway-{task}-ft{epochs}")
    if (out / "config.json").is_file():
        return out
    rows = [r for r in clean_chat_rows(task, 600, 22, oversample=6, max_prompt_chars=400)
            if r["messages"][0]["content"] not in avoid][:400]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        params = HuggingFaceBackend(epochs=epochs, learning_rate=5e-3, batch_size=16)
        result = fine_tune(str(base), rows, Path(tmp) / "adapter", params)
        print(f"(trained {result.steps} LoRA steps in {result.seconds:.0f} s, loss {result.first_loss:.2f} -> "
              f"{result.final_loss:.2f})")  # fmt: skip
        loaded = load_model(str(base), result.output_dir)
        partial = out.with_name(out.name + ".partial")
        loaded.model.save_pretrained(partial)
        loaded.tokenizer.save_pretrained(partial)
        partial.rename(out)
    return out


def logged_rows(work: Path) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{work / 'warehouse.db'}")
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("select count(*) from interactions").scalar_one())


# -- report -------------------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def report_overhead(out: dict[str, Any], max_tokens: int, tokenizer: Any, mode: str) -> None:
    d, g, st = out["direct"]["s"], out["gateway"]["s"], out["stream"]["s"]
    first = out["stream"]["first"]
    added = [b - a for a, b in zip(d, g, strict=True)]
    added_stream = [b - a for a, b in zip(d, st, strict=True)]
    same = sum(a == b for a, b in zip(out["direct"]["text"], out["gateway"]["text"], strict=True))
    same_stream = sum(a == b for a, b in zip(out["direct"]["text"], out["stream"]["text"], strict=True))
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in out["direct"]["text"]]
    n = len(d)
    print(f"\n### Overhead at concurrency 1: {n} requests each, interleaved, max_tokens {max_tokens} (answers of "
          f"{min(lengths)}-{max(lengths)} text tokens, median {statistics.median(lengths):.0f})\n")  # fmt: skip
    print("| path | p50 ms | p90 ms | p99 ms | mean ms | p50 vs direct | same answers as direct |")
    print("|---|---|---|---|---|---|---|")
    rows = [("direct `LocalBackend.complete([req])` (baseline)", d, "—"),
            ("gateway, `openai` client", g, f"{same}/{n}"),
            ("gateway, `stream=True`: first content chunk", first, "—"),
            ("gateway, `stream=True`: whole answer", st, f"{same_stream}/{n}")]  # fmt: skip
    for name, values, eq in rows:
        print(f"| {name} | {ms(pct(values, 0.5))} | {ms(pct(values, 0.9))} | {ms(pct(values, 0.99))} "
              f"| {ms(statistics.mean(values))} | {pct(values, 0.5) / pct(d, 0.5):.2f}× | {eq} |")  # fmt: skip
    print("\nAdded by the gateway (per prompt, gateway - direct on the same prompt):\n")
    print("| path | added p50 ms | added p99 ms | added p50 / direct p50 |")
    print("|---|---|---|---|")
    for name, values in (("plain", added), ("streamed, whole answer", added_stream)):
        print(f"| {name} | {ms(pct(values, 0.5))} | {ms(pct(values, 0.99))} | {pct(values, 0.5) / pct(d, 0.5):.2f}× |")
    where = ("the gateway process everything of the server (its spool flushing too)" if mode == "process" else
             "the gateway runs in this process too (`--server thread`), so its CPU counts there")  # fmt: skip
    print("\nMean CPU time per request (less sensitive to other load than wall time); *this process* runs the direct "
          f"decode or the `openai` client, {where}:\n")  # fmt: skip
    print("| path | this process ms | gateway process ms | total ms | total vs direct |")
    print("|---|---|---|---|---|")
    direct_cpu = (out["direct"]["cpu_here"] + out["direct"]["cpu_server"]) / n
    for name, key in (("direct (baseline)", "direct"), ("gateway", "gateway"), ("gateway, streamed", "stream")):
        here, there = out[key]["cpu_here"] / n, out[key]["cpu_server"] / n
        print(f"| {name} | {ms(here)} | {ms(there)} | {ms(here + there)} | {(here + there) / direct_cpu:.2f}× |")


def report_throughput(runs: dict[int, list[dict[str, Any]]], direct: dict[int, list[float]],
                      direct_cpu: dict[int, list[float]], n: int, mode: str) -> None:  # fmt: skip
    levels = sorted(runs)
    base = statistics.median(n / r["seconds"] for r in runs[levels[0]])
    repeat = len(runs[levels[0]])
    print(f"\n### Throughput: {n} requests per pass, {repeat} pass(es) per concurrency, median requests/s\n")
    print("| concurrency | requests/s (each pass) | vs concurrency 1 | completion tokens/s | latency p50 / p99 ms "
          "| batches | mean batch | batch sizes (count) | decode thread busy | idle between batches p50 ms "
          "| CPU ms/request: client, gateway | load |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in levels:
        rates = [n / r["seconds"] for r in runs[c]]
        rate = statistics.median(rates)
        lat = [x for r in runs[c] for x in r["latencies"]]
        tokens = statistics.median(r["tokens"] / r["seconds"] for r in runs[c])
        batches = sum(r["batches"] for r in runs[c])
        requests = sum(r["requests"] for r in runs[c])
        sizes = Counter(s for r in runs[c] for s in r["sizes"])
        top = ", ".join(f"{k}×{v}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:6])
        busy = sum(r["decode_s"] for r in runs[c]) / sum(r["seconds"] for r in runs[c])
        loads = "; ".join(r["load"].split()[0] for r in runs[c])
        gaps = [g for r in runs[c] for g in r["gaps"]]
        cpu = f"{ms(sum(r['cpu_here'] for r in runs[c]) / requests)}, " + (
            ms(sum(r["cpu_server"] for r in runs[c]) / requests) if mode == "process" else "(in client)"
        )
        print(f"| {c} | {rate:.2f} ({', '.join(f'{x:.2f}' for x in rates)}) | **{rate / base:.2f}×** | {tokens:.0f} "
              f"| {ms(pct(lat, 0.5))} / {ms(pct(lat, 0.99))} | {batches} | {requests / max(batches, 1):.2f} | {top} "
              f"| {busy:.0%} | {ms(pct(gaps, 0.5))} | {cpu} | {loads} |")  # fmt: skip
    b1 = statistics.median(direct[1])
    print("\nThe same prompts decoded directly in this process (`LocalBackend.complete`, no gateway), in the same "
          "rotation, median requests/s:\n")  # fmt: skip
    print("| batch | requests/s (each pass) | vs batch 1 | vs gateway at concurrency 1 | CPU ms/request |")
    print("|---|---|---|---|---|")
    for b, runs_s in sorted(direct.items()):
        med = statistics.median(runs_s)
        print(f"| {b} | {n / med:.2f} ({', '.join(f'{n / x:.2f}' for x in runs_s)}) | {b1 / med:.2f}× "
              f"| {n / med / base:.2f}× | {ms(sum(direct_cpu[b]) / (n * len(runs_s)))} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (< 2 min with a built base model)")
    parser.add_argument("--latency-requests", type=int, default=200, help="requests per path, concurrency 1")
    parser.add_argument("--throughput-requests", type=int, default=128, help="requests per throughput pass")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--repeat", type=int, default=4, help="throughput passes per concurrency")
    parser.add_argument("--max-tokens", type=int, default=32, help="answer cap of every request")
    parser.add_argument("--task", default="city_extraction", help="the simulator's task type giving the prompts")
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="override serving.batch_wait_ms")
    parser.add_argument("--max-batch", type=int, default=None, help="override serving.max_batch")
    parser.add_argument("--server", choices=["process", "thread"], default="process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, client and server")
    parser.add_argument("--finetune-epochs", type=int, default=10,
                        help="serve the base + a LoRA adapter trained this many epochs (answers of the task's "
                             "length); 0: the base model (short answers); --quick: 0")  # fmt: skip
    parser.add_argument("--spool-on-tmpfs", action="store_true",
                        help="put the gateway's spool in /dev/shm (memory: fsync costs nothing) instead of the "
                             "temporary folder on disk, to show what the per-row fsync costs")  # fmt: skip
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.latency_requests, args.throughput_requests, args.repeat, args.finetune_epochs = 30, 48, 1, 0

    import torch

    torch.set_num_threads(args.threads)
    if not os.environ.get("FTOPS_HOME"):
        os.environ["FTOPS_HOME"] = str(Path(tempfile.gettempdir()) / "ftops-bench-gateway")
    work = Path(tempfile.mkdtemp(prefix="ftops-bench-gw-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["FTOPS_ARTIFACT_ROOT"] = (work / "artifacts").as_uri()
    print(f"load before: {load()}; torch threads: {torch.get_num_threads()}; server: {args.server}; work: {work}")

    from ftops_dev.simulate import clean_chat_rows

    from ftops.core.config import LOCAL_BASE_MODEL, ServingConfig, resolve_base_model
    from ftops.deployment import rollout
    from ftops.evaluation.generate import load_model
    from ftops.serving.backends import LocalBackend
    from ftops.training.basemodel import build_base_model, is_complete
    from tests.serving_support import register_local_version

    started = time.perf_counter()
    full = Path(resolve_base_model(LOCAL_BASE_MODEL))
    if args.quick and not is_complete(full):
        base = build_base_model(full.with_name(full.name + "-quick"), pretrain_steps=60, max_corpus_chars=200_000)
        model_note = "quick base model (60 pre-training steps)"
    else:
        base = build_base_model(full)
        model_note = "base model (build_base_model defaults)"
    n_prompts = max(args.latency_requests, args.throughput_requests)
    rows = clean_chat_rows(args.task, n_prompts, 31, oversample=6, max_prompt_chars=400)
    prompts = [r["messages"][0]["content"] for r in rows]
    if args.finetune_epochs:
        base = finetuned(base, args.task, args.finetune_epochs, set(prompts))
        model_note = f"base + LoRA ({args.finetune_epochs} epochs on 400 {args.task} prompts), merged"
    # The gateway caches downloaded weights under FTOPS_HOME/serving/models/<task>/<version>: a fresh registry
    # numbers its versions from 1 again, so an earlier run's cached weights would be served. Its own home.
    os.environ["FTOPS_HOME"] = str(work / "home")
    version = register_local_version(TASK, base, "bench-gateway")
    assert rollout.deploy(TASK, version, 10) == "champion"
    serving = {k: v for k, v in {"batch_wait_ms": args.batch_wait_ms, "max_batch": args.max_batch}.items()
               if v is not None}  # fmt: skip
    cfg = ServingConfig(**serving)
    spool_dir = (
        tempfile.mkdtemp(prefix="ftops-bench-spool-", dir="/dev/shm") if args.spool_on_tmpfs else str(work / "spool")
    )
    print(f"{model_note} at {base}; set-up {time.perf_counter() - started:.0f} s; {len(prompts)} distinct "
          f"{args.task} prompts; serving: max_batch {cfg.max_batch}, batch_wait_ms {cfg.batch_wait_ms}, "
          f"flush_every_s {cfg.flush_every_s}; spool {spool_dir}")  # fmt: skip

    backend = LocalBackend(load_model(str(base)), "direct")
    calls = 0
    with Server(args.server, work, serving, spool_dir) as server:
        if not args.skip_overhead:
            out = overhead(server, backend, prompts[: args.latency_requests], args.max_tokens)
            calls += 2 * 3 + 2 * args.latency_requests  # warm-up: 3 prompts
            report_overhead(out, args.max_tokens, backend.loaded.tokenizer, args.server)
            print(f"\nload: {load()}")
        if not args.skip_throughput:
            tp = prompts[: args.throughput_requests]
            runs, direct, direct_cpu = throughput(server, backend, tp, args.concurrency, args.repeat, args.max_tokens)
            calls += 8 + len(args.concurrency) * args.repeat * len(tp)
            texts = {c: [r["texts"] for r in rs] for c, rs in runs.items()}
            reference = texts[min(texts)][0]
            report_throughput(runs, direct, direct_cpu, len(tp), args.server)
            same = all(t == reference for ts in texts.values() for t in ts)
            print(f"\nSame answers at every concurrency: {'yes' if same else '**no**'}")
    if args.spool_on_tmpfs:
        shutil.rmtree(spool_dir)
    rows_logged = logged_rows(work)
    print(f"Rows in the warehouse after shutdown: {rows_logged} of {calls} answered calls"
          f"{'' if rows_logged == calls else ' **MISMATCH**'}")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    print(f"load after: {load()}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
