"""Measure whether a second cycle learns drifted entities from corrections and teacher answers (issue 21).

Not a speed benchmark: it answers "can the tiny local base model show a real gain under the SHIPPED gate, and
from how many corrected/teacher examples?" before an integration test and the demo are built on it. No
Airflow, no warehouse: the library's own trainer, evaluator, bootstrap and gate, called directly.

Usage::

    . scripts/env.sh && python benchmarks/measure_learning.py [--task-types city_extraction sentiment] \
        [--seeds 0 1] [--cycle1-rows 300] [--traffic-rows 600] [--drift-share 0.3] [--correction-share 0.15] \
        [--teacher-accuracy 0.95] [--weights 3 2 1] [--epochs 10] [--no-teacher]

Per task type and seed:

1. Cycle 1: ``--cycle1-rows`` clean simulator rows (``clean_chat_rows``: right answers, no drift) train the
   champion from the base model with the shipped ``training.backend`` (``fine_tune`` after
   ``split_validation``, as ``ftops.pipeline.finetune`` does).
2. Day-2 traffic: ``generate_interactions(--traffic-rows, days=1, drift_from_day=1, drift_share, correction_share)``
   (every row is drift-eligible: it stands for one day of traffic after the drift day).
3. Two cycle-2 datasets, each with cycle 1's rows, trained from the BASE model (the pipeline fine-tunes from
   ``training.backend.base_model``, never from the champion):
   * control: the day-2 rows curation keeps today (``malformed_reason`` and ``filter_reason`` of the shipped
     curation config: rated ≥ 4, successful, no error text, ...), their served answer as target;
   * treatment: the same (minus rows that have a correction) plus corrections (target = the correction) and
     teacher answers for failed / low-rated rows without one (right with ``--teacher-accuracy``, else a wrong
     answer the simulator would make), repeated ``--weights`` times (correction, teacher, served).
4. The champion and both candidates answer the labelled eval set (``labelled_rows(n=180, drift_share)``, as the
   demo imports it) with the gate's evaluator; paired bootstrap and ``apply_gate`` with the shipped ``gate:``,
   the trivial baseline included, as ``evaluate_candidate`` does.

Prints one table row per (task type, seed, model): training examples by source, training seconds, eval
accuracy overall / drifted / not drifted, gain and CI against the champion, the gate's decision and the
criteria that failed; then a few answers of each model to drifted eval prompts. Champions are cached in
``FTOPS_HOME/measure_learning`` (keyed by task type, seed, rows and epochs), so variations reuse them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from ftops_dev import known_truth  # noqa: E402
from ftops_dev.drift import DRIFT_TASKS  # noqa: E402
from ftops_dev.evalsets import labelled_rows  # noqa: E402
from ftops_dev.simulate import clean_chat_rows, generate_interactions  # noqa: E402
from ftops_dev.task_types import TASKS, reference_response  # noqa: E402

from ftops.core.config import FtopsConfig, ftops_home, load_config, resolve_base_model  # noqa: E402
from ftops.curation.rules import filter_reason, malformed_reason  # noqa: E402
from ftops.datasets.evalsets import as_example  # noqa: E402

log = logging.getLogger("measure_learning")


def chat(prompt: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def train(cfg: FtopsConfig, rows: list[dict[str, Any]], out: Path, epochs: int | None) -> float:
    """Train from the base model as the train stage does; return the training seconds (cached in ``out``)."""
    from ftops.training.data import split_validation
    from ftops.training.hf import fine_tune

    done = out / "seconds.txt"
    if done.exists():
        return float(done.read_text())
    backend = cfg.training.backend
    if epochs is not None:
        backend = backend.model_copy(update={"epochs": epochs})
    split = split_validation(rows, backend.validation_share)
    with tempfile.TemporaryDirectory() as tmp:
        result = fine_tune(resolve_base_model(backend.base_model), split.train, out / "full_model", backend,
                           validation_rows=split.validation, checkpoint_dir=Path(tmp))  # fmt: skip
    log.info("Trained %d rows (+%d validation) in %.1f s, best epoch %s", len(split.train), len(split.validation),
             result.seconds, result.best_epoch)  # fmt: skip
    done.write_text(f"{result.seconds:.1f}")
    return result.seconds


def day2_arms(task: str, args: argparse.Namespace, seed: int, cfg: FtopsConfig) -> dict[str, Any]:
    """The day-2 rows per target source: ``served`` (what curation keeps), ``correction``, ``teacher``."""
    traffic = generate_interactions(args.traffic_rows, seed=1000 + seed, task_types=[task], days=1,
                                    drift_share=args.drift_share, drift_from_day=1,
                                    correction_share=args.correction_share)  # fmt: skip
    teacher_rng = random.Random(f"teacher/{seed}")
    served, corrections, teacher, served_kept_wrong = [], [], [], 0
    for row in traffic:
        if malformed_reason(row, cfg.curation, None):
            continue
        reason = filter_reason(row, cfg.curation)
        if row["correction"] is not None:
            corrections.append(chat(row["prompt"], row["correction"]))
            continue  # the served answer was wrong: the correction replaces it
        if reason is None:
            served.append(chat(row["prompt"], row["response"]))
            expected = known_truth.expected_answer(task, row["prompt"])
            served_kept_wrong += expected is not None and not known_truth.is_right(task, row["prompt"], row["response"])
        elif reason in ("low_rating", "failed_call") and not args.no_teacher:
            expected = known_truth.expected_answer(task, row["prompt"])
            if expected is None:
                continue
            if teacher_rng.random() >= args.teacher_accuracy:
                wrong = (DRIFT_TASKS if known_truth.is_drifted(task, row["prompt"]) else TASKS)[task][1]
                expected = wrong(teacher_rng, expected)
            teacher.append(chat(row["prompt"], reference_response(task, expected)))
    drifted = {name: sum(is_drift(task, r) for r in rows)
               for name, rows in (("served", served), ("correction", corrections), ("teacher", teacher))}  # fmt: skip
    return {"served": served, "correction": corrections, "teacher": teacher, "drifted": drifted,
            "served_wrong": served_kept_wrong}  # fmt: skip


def is_drift(task: str, row: dict[str, Any]) -> bool:
    try:
        return known_truth.is_drifted(task, row["messages"][0]["content"])
    except LookupError:
        return False


def evaluate_all(cfg: FtopsConfig, models: dict[str, Path], test: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluate each model on ``test`` as ``evaluate_versions`` does (latency timed together, interleaved)."""
    from ftops.evaluation.evaluate import evaluate
    from ftops.evaluation.generate import load_model, time_single_requests

    base = resolve_base_model(cfg.training.backend.base_model)
    loaded = {name: load_model(base, path / "full_model") for name, path in models.items()}
    results = {name: evaluate(m, test, cost_per_hour=cfg.gate.compute_cost_per_hour, latency_sample=0)
               for name, m in loaded.items()}  # fmt: skip
    for result, latency in zip(results.values(), time_single_requests(list(loaded.values()), test), strict=True):
        result.metrics.update(latency)
    return results


def gate(cfg: FtopsConfig, cand: Any, champ: Any, train_rows: list[dict[str, Any]], test: list[dict[str, Any]]) -> Any:
    """The shipped gate against the champion, with the trivial baseline, as ``evaluate_candidate`` applies it."""
    from ftops.deployment.gate import TrivialComparison, apply_gate
    from ftops.evaluation.baselines import best_trivial, trivial_baselines
    from ftops.evaluation.metrics import paired_bootstrap

    g = cfg.gate
    ci = paired_bootstrap(cand.correct, champ.correct, resamples=g.bootstrap_resamples, confidence=g.confidence, seed=0)
    trivial = best_trivial(trivial_baselines(train_rows, test))
    versus = None
    if trivial is not None:
        tci = paired_bootstrap(cand.correct, trivial.correct, resamples=g.bootstrap_resamples,
                               confidence=g.confidence, seed=0)  # fmt: skip
        versus = TrivialComparison(trivial.name, trivial.accuracy, tci)
    return ci, apply_gate(cand.metrics, champ.metrics, g, ci, trivial=versus)


def acc(correct: list[bool], mask: list[bool], want: bool) -> float:
    picked = [c for c, m in zip(correct, mask, strict=True) if m == want]
    return sum(picked) / len(picked) if picked else float("nan")


def run_one(task: str, seed: int, args: argparse.Namespace, cfg: FtopsConfig) -> list[str]:
    root = ftops_home() / "measure_learning"
    cycle1 = clean_chat_rows(task, args.cycle1_rows, seed=seed, max_prompt_chars=cfg.curation.max_prompt_chars)
    champ_dir = root / f"{task}-s{seed}-c1_{args.cycle1_rows}-e{args.epochs}"
    secs = {"champion": train(cfg, cycle1, champ_dir, args.epochs)}
    day2 = day2_arms(task, args, seed, cfg)
    wc, wt, ws = args.weights
    arms = {
        "control": cycle1 + day2["served"],
        "treatment": cycle1 + day2["served"] * ws + day2["correction"] * wc + day2["teacher"] * wt,
    }
    if args.matched:  # as many rows as the treatment, all served: is the gain the new targets or more steps?
        served = day2["served"] or cycle1
        extra = len(arms["treatment"]) - len(cycle1)
        arms["control_matched"] = cycle1 + [served[i % len(served)] for i in range(extra)]
    dirs = {"champion": champ_dir}
    for arm, rows in arms.items():
        key = hashlib.sha256(json.dumps([rows, args.epochs], sort_keys=True).encode()).hexdigest()[:12]
        dirs[arm] = root / f"{task}-s{seed}-{arm}-{key}"
        secs[arm] = train(cfg, rows, dirs[arm], args.epochs)
    test = [as_example(r) for r in labelled_rows(task, n=args.eval_rows, drift_share=args.eval_drift_share)]
    drift_mask = [is_drift(task, r) for r in test]
    results = evaluate_all(cfg, dirs, test)
    champ = results["champion"]
    lines = []
    sources = (f"served {len(day2['served'])} (drifted {day2['drifted']['served']}, wrong {day2['served_wrong']}), "
               f"corrections {len(day2['correction'])} (drifted {day2['drifted']['correction']}), "
               f"teacher {len(day2['teacher'])} (drifted {day2['drifted']['teacher']})")  # fmt: skip
    print(f"\n{task} seed {seed}: cycle 1 {len(cycle1)} rows; day 2 {args.traffic_rows} calls: {sources}")
    for name, res in results.items():
        c = res.correct
        row = (f"| {task} | {seed} | {name} | {len(arms.get(name, cycle1))} | {secs[name]:.0f} | "
               f"{res.metrics['accuracy']:.3f} | {acc(c, drift_mask, True):.3f} | {acc(c, drift_mask, False):.3f} | "
               f"{len(set(res.outputs))} |")  # fmt: skip
        if name == "champion":
            row += " — | — | — |"
        else:
            ci, decision = gate(cfg, res, champ, arms[name], test)
            failed = "; ".join(r.split(": ", 1)[1].split(" (")[0] for r in decision.reasons if r.startswith("FAIL"))
            row += (
                f" {ci[0]:+.3f} | [{ci[1]:+.3f}, {ci[2]:+.3f}] | {'PASS' if decision.passed else 'fail: ' + failed} |"
            )
        lines.append(row)
        print(row)
    print(f"answers to the first drifted eval prompts (the last 34 characters; reference | {' | '.join(results)}):")
    shown = 0
    for i, (ex, drifted) in enumerate(zip(test, drift_mask, strict=True)):
        if drifted and shown < args.show:
            shown += 1
            print(f"  {ex['messages'][0]['content'][:70]!r}\n    ref {ex['messages'][-1]['content']!r} | "
                  + " | ".join(repr(results[m].outputs[i][-34:]) for m in results))  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-types", nargs="+", default=["city_extraction", "sentiment"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--cycle1-rows", type=int, default=300)
    parser.add_argument("--traffic-rows", type=int, default=600, help="day-2 calls per task type")
    parser.add_argument("--drift-share", type=float, default=0.3)
    parser.add_argument("--correction-share", type=float, default=0.15)
    parser.add_argument("--teacher-accuracy", type=float, default=0.95)
    parser.add_argument("--no-teacher", action="store_true", help="treatment with corrections only")
    parser.add_argument("--weights", nargs=3, type=int, default=[3, 2, 1], metavar=("CORRECTION", "TEACHER", "SERVED"))
    parser.add_argument("--epochs", type=int, default=None, help="default: the shipped training.backend.epochs")
    parser.add_argument("--eval-rows", type=int, default=180)
    parser.add_argument("--eval-drift-share", type=float, default=0.3)
    parser.add_argument(
        "--matched",
        action="store_true",
        help="also train control_matched: the served rows repeated to the treatment's row count",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--show", type=int, default=4, help="drifted eval answers printed per run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    import torch

    torch.set_num_threads(args.threads)
    cfg = load_config()
    print(
        f"settings: {vars(args)}; shipped gate: +{cfg.gate.min_accuracy_gain} gain, CI low > "
        f"{cfg.gate.min_lower_bound_gain}, perplexity rise ≤ {cfg.gate.max_perplexity_increase}"
    )
    lines = []
    started = time.perf_counter()
    for task in args.task_types:
        for seed in args.seeds:
            lines += run_one(task, seed, args, cfg)
    print(
        "\n| task type | seed | model | train rows | train s | eval acc | drifted | not drifted | distinct answers "
        "| gain | 95 % CI | shipped gate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
