"""Benchmark two fine-tune tasks at once on one thread each against one after the other on every thread.

Usage::

    . scripts/env.sh && python benchmarks/bench_parallel.py [--n 400] [--epochs 4] [--eval 120] [--repeat 2]

What a pool of two ``ftops_training`` slots with ``training.backend.threads: 1`` does on a 2-core worker, against
the shipped one slot and torch's default threads. A *job* is what one ``ftops_finetune`` run does on the CPU:
``fine_tune`` (the shipped settings: full fine-tune, batch 16) on ``--n`` clean simulator examples of one task
type for ``--epochs`` epochs, then greedy answers (the evaluator's ``generate_answers``, batch 32, 48 new tokens)
to ``--eval`` held-out prompts. Two jobs (city_extraction and sentiment) run

* *serial*: one after the other in one child process, torch on its default threads (one per core);
* *parallel*: at the same time, each in its own child process, torch on one thread.

Each arrangement runs ``--repeat`` times, alternating; the report is the median wall time of the pair and the
ratio serial / parallel (above 1: the parallel pair finishes sooner). The local base model is built first when
missing (a few minutes). Timings depend on what else the machine runs; only the ratio within a run counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
TASKS = ("city_extraction", "sentiment")


def job(task: str, n: int, epochs: int, n_eval: int) -> dict[str, float]:
    """One fine-tune and its evaluation's generation, in this process; seconds of each."""
    from ftops_dev.simulate import clean_chat_rows

    from ftops.core.config import LOCAL_BASE_MODEL, HuggingFaceBackend, resolve_base_model
    from ftops.evaluation.generate import generate_answers, load_model, render_prompts
    from ftops.training.hf import fine_tune

    base = resolve_base_model(LOCAL_BASE_MODEL)
    rows = clean_chat_rows(task, n + n_eval, seed=7)
    params = HuggingFaceBackend(method="full", epochs=epochs, batch_size=16, validation_share=0)
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as out:
        start = time.perf_counter()
        fine_tune(base, rows[n_eval:], Path(out), params)
        trained = time.perf_counter()
        model = load_model(base, Path(out))
        generate_answers(model, render_prompts(model, rows[:n_eval]), batch_size=32, max_new_tokens=48)
        done = time.perf_counter()
    return {"train_s": trained - start, "generate_s": done - trained}


def run_children(specs: list[tuple[list[str], int]]) -> float:
    """Start one child per (tasks, threads) at once; wall seconds until the last one ends."""
    start = time.perf_counter()
    procs = []
    for tasks, threads in specs:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cmd = [sys.executable, __file__, "--child", ",".join(tasks), *sys.argv[1:]]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"child failed: {p.args}")
        for line in out.splitlines():
            if line.startswith("{"):
                print("   ", line)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="training examples per job")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--eval", type=int, default=120, help="prompts answered per job")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("FTOPS_HOME", str(Path(tempfile.gettempdir()) / "ftops-bench-parallel"))
    if args.child:
        import torch

        threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads()
        torch.set_num_threads(threads)
        for task in args.child.split(","):
            print(json.dumps({"task": task, "threads": threads, **job(task, args.n, args.epochs, args.eval)}))
        return

    from ftops.core.config import LOCAL_BASE_MODEL, resolve_base_model
    from ftops.training.basemodel import build_base_model

    build_base_model(Path(resolve_base_model(LOCAL_BASE_MODEL)))
    cores = os.cpu_count() or 2
    times: dict[str, list[float]] = {"serial": [], "parallel": []}
    for r in range(args.repeat):
        print(f"repeat {r + 1}: serial ({cores} threads)")
        times["serial"].append(run_children([(list(TASKS), cores)]))
        print(f"repeat {r + 1}: parallel (1 thread each)")
        times["parallel"].append(run_children([([t], 1) for t in TASKS]))
    serial, parallel = (statistics.median(times[k]) for k in ("serial", "parallel"))
    print(f"\n{len(TASKS)} jobs ({args.n} examples x {args.epochs} epochs, {args.eval} answers each), {cores} cores, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"serial, {cores} threads: {serial:.1f} s ({', '.join(f'{t:.1f}' for t in times['serial'])})")
    print(f"parallel, 1 thread each: {parallel:.1f} s ({', '.join(f'{t:.1f}' for t in times['parallel'])})")
    print(f"serial / parallel: {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
