"""How close the simulator's labelled eval-set prompts lie to its logged prompts, under the curation embedder.

Eval-set prompts, and their paraphrases, are to be kept out of every training split by a cosine threshold on
the packaged all-MiniLM-L6-v2 embeddings. This measures what a threshold would do on the simulator's data:

* the share of (distinct, scrubbed) log prompts whose max cosine to any eval-set prompt is ≥ each threshold;
* what those matches are: each log prompt's content (the review, the sentence, the kilometres: the *question*,
  without its template and small talk) is parsed out, so a log prompt either asks a question the eval set
  also asks (a paraphrase: same question, other template or decoration, the same answer) or a question it
  does not ask; per threshold, the share of paraphrases caught (recall) and of other questions caught too
  (collateral: training rows lost);
* example pairs in the 0.90-0.95 band and at ≥ 0.97;
* paraphrases made on purpose from ``--variant-rows`` eval prompts, by kind: the simulator's near-duplicate
  edits (lower case, upper case (*: only the first letter lowered when the prompt is 80 characters or longer), punctuation, doubled spaces, surrounding whitespace), other small talk around
  the same request, and the same content in another of the task type's templates; the share of each kind a
  threshold catches.

Usage::

    . scripts/env.sh && python benchmarks/measure_evalset_overlap.py [--rows 3000] [--seed 0] [--json out.json]

About a minute on 2 cores (3 500 prompts at ~80/s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ftops_dev import task_types as tt
from ftops_dev.evalsets import DEFAULT_ROWS, DEFAULT_SEED, ScriptedRandom, labelled_rows
from ftops_dev.simulate import _near_duplicate, generate_interactions

from ftops.curation.embedding import SentenceEmbedder
from ftops.curation.scrub import scrub

THRESHOLDS = (0.85, 0.90, 0.93, 0.95, 0.97, 0.99)


def _alternation(values: tuple[str, ...]) -> str:
    return "|".join(re.escape(v) for v in sorted(set(values) - {""}, key=len, reverse=True))


def _content_patterns() -> dict[str, list[re.Pattern[str]]]:
    """Per task type, regexes that find a prompt's question: group ``q`` (plus ``aside`` for reviews)."""
    products, asides = _alternation(tt._PRODUCTS), _alternation(tt._REVIEW_ASIDES)
    phrases = _alternation(tt._POSITIVE + tt._NEGATIVE + tt._NEUTRAL)
    review = []
    for shape in tt._REVIEW_SHAPES:
        body = re.escape(shape).replace(r"\{product\}", f"(?:{products})")
        body = body.replace(r"\{phrase\}", f"(?:{phrases})").replace(r"\{Phrase\}", f"(?:{phrases})")
        review.append(re.compile(f"(?P<q>{body}(?:{asides})?)", re.IGNORECASE))
    cities = _alternation(tt.CITIES)
    city = [re.compile("(?P<q>" + re.escape(s).replace(r"\{city\}", f"(?:{cities})") + ")", re.IGNORECASE)
            for s in tt._CITY_SENTENCES]  # fmt: skip
    unit = [re.compile(re.escape(t).replace(r"\{n\}", r"(?P<q>\d+)"), re.IGNORECASE) for t in tt._UNIT_PROMPTS]
    return {"sentiment": review, "city_extraction": city, "unit_conversion": unit}


def question_of(task_type: str, prompt: str, patterns: dict[str, list[re.Pattern[str]]]) -> str | None:
    """The question a prompt asks (the review, the sentence, the kilometres), lower-cased; None if not found."""
    for pattern in patterns[task_type]:
        if m := pattern.search(prompt):
            return " ".join(m.group("q").casefold().split())
    return None


_NEAR_DUP_KINDS = ("lower case", "upper case*", "punctuation", "doubled spaces", "whitespace around")
_TEMPLATES = {"sentiment": (tt._SENTIMENT_PROMPTS, "text"), "city_extraction": (tt._CITY_PROMPTS, "text"),
              "unit_conversion": (tt._UNIT_PROMPTS, "n")}  # fmt: skip


def _decoration(prompt: str) -> tuple[str, str, str]:
    """(opener, body, closer), the longest opener and closer that fit."""
    opener = max((o for o in tt._OPENERS if prompt.startswith(o)), key=len)
    rest = prompt[len(opener) :]
    closer = max((c for c in tt._CLOSERS if rest.endswith(c)), key=len)
    return opener, rest[: len(rest) - len(closer)], closer


def variants(task_type: str, prompt: str, k: int) -> list[tuple[str, str]]:
    """Paraphrases of one prompt that ask the same question, with their kind (``k`` varies the choices)."""
    out = []
    for kind, name in enumerate(_NEAR_DUP_KINDS):  # the simulator's own near-duplicate edits, kind by kind
        edited = _near_duplicate(ScriptedRandom(k, ((("randrange", (5, None, 1)), kind),)), prompt)
        if edited != prompt:
            out.append((name, edited))
    opener, body, closer = _decoration(prompt)
    openers, closers = list(dict.fromkeys(tt._OPENERS)), list(dict.fromkeys(tt._CLOSERS))
    other = (
        openers[(openers.index(opener) + 1 + k) % len(openers)],
        closers[(closers.index(closer) + 1 + k) % len(closers)],
    )
    out.append(("other small talk", other[0] + body + other[1]))
    templates, slot = _TEMPLATES[task_type]
    for i, template in enumerate(templates):
        pattern = re.escape(template).replace(re.escape("{" + slot + "}"), "(?P<c>.+)")
        if m := re.fullmatch(pattern, body, re.DOTALL):
            n = len(templates)
            for step in (1 + k % (n - 1), 1 + (k + n // 2) % (n - 1)):  # two other templates
                again = templates[(i + step) % n].format(**{slot: m.group("c")})
                out.append(("other template", opener + again + closer))
            break
    return out


def _variant_report(evals: dict[str, list[dict[str, str]]], per_type: int, embedder: SentenceEmbedder) -> dict:
    report: dict[str, dict[str, object]] = {}
    for t in tt.TASK_TYPES:
        pairs = [
            (r["prompt"], kind, v) for k, r in enumerate(evals[t][:per_type]) for kind, v in variants(t, r["prompt"], k)
        ]
        a = embedder.embed([p for p, _, _ in pairs])
        b = embedder.embed([v for _, _, v in pairs])
        cos = (a * b).sum(axis=1)
        report[t] = {}
        for kind in dict.fromkeys(k for _, k, _ in pairs):
            c = np.array([x for x, (_, k, _) in zip(cos, pairs, strict=True) if k == kind])
            report[t][kind] = {"pairs": len(c), "min": round(float(c.min()), 4),
                               "q05": round(float(np.quantile(c, 0.05)), 4), "median": round(float(np.median(c)), 4),
                               "caught": {f"{th:.2f}": round(float((c >= th).mean()), 4) for th in THRESHOLDS}}  # fmt: skip
    return report


def _log_prompts(rows: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Distinct scrubbed prompts per task type with their expected answer (None when the row has no metadata)."""
    out: dict[str, dict[str, str | None]] = {t: {} for t in tt.TASK_TYPES}
    for r in generate_interactions(rows, seed=seed):
        prompt = scrub(r["prompt"]).text  # what curation embeds
        expected = json.loads(r["metadata"])["expected"] if r["metadata"] else None
        if out[r["task_type"]].get(prompt) is None:
            out[r["task_type"]][prompt] = expected
    return {t: [{"prompt": p, "expected": e} for p, e in d.items()] for t, d in out.items()}


def _reference_of(task_type: str, expected: str | None) -> str | None:
    return None if expected is None else tt.reference_response(task_type, expected)


def measure(args: argparse.Namespace) -> dict[str, object]:
    patterns = _content_patterns()
    logs = _log_prompts(args.rows, args.seed)
    evals = {t: labelled_rows(t, n=args.eval_rows, seed=args.eval_seed) for t in tt.TASK_TYPES}
    embedder = SentenceEmbedder()
    started = time.perf_counter()
    texts = [r["prompt"] for t in tt.TASK_TYPES for r in logs[t]] + [
        r["prompt"] for t in tt.TASK_TYPES for r in evals[t]
    ]
    vectors = embedder.embed(texts)
    print(f"embedded {len(texts)} prompts in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    offset, log_vec = 0, {}
    for t in tt.TASK_TYPES:
        log_vec[t] = vectors[offset : offset + len(logs[t])]
        offset += len(logs[t])
    eval_vec = {}
    for t in tt.TASK_TYPES:
        eval_vec[t] = vectors[offset : offset + len(evals[t])]
        offset += len(evals[t])

    started = time.perf_counter()
    variant_report = _variant_report(evals, args.variant_rows, embedder)
    print(f"paraphrase variants embedded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    report: dict[str, object] = {"variants": variant_report, "rows": args.rows, "seed": args.seed, "eval_rows": args.eval_rows,
                                 "eval_seed": args.eval_seed, "model": embedder.name, "task_types": {}}  # fmt: skip
    for t in tt.TASK_TYPES:
        sims = log_vec[t] @ eval_vec[t].T
        best, nearest = sims.max(axis=1), sims.argmax(axis=1)
        eval_q = [question_of(t, r["prompt"], patterns) for r in evals[t]]
        assert None not in eval_q, f"{t}: an eval prompt's question was not parsed"
        log_q = [question_of(t, r["prompt"], patterns) for r in logs[t]]
        asked = np.array([q is not None and q in set(eval_q) for q in log_q])
        parsed = np.array([q is not None for q in log_q])
        # the best cosine of each log prompt to an eval prompt asking the same question (paraphrase similarity)
        same_q = np.array([[lq is not None and lq == eq for eq in eval_q] for lq in log_q])
        para = np.where(same_q, sims, -1.0).max(axis=1)
        other = np.where(same_q, -1.0, sims).max(axis=1)
        kinds = []
        for i, j in enumerate(nearest):
            ref = _reference_of(t, logs[t][i]["expected"])
            if log_q[i] is None:
                kinds.append("unparsed")
            elif log_q[i] == eval_q[j]:
                kinds.append("same question")
            elif ref is not None and ref == evals[t][j]["reference"]:
                kinds.append("other question, same answer")
            elif ref is None:
                kinds.append("other question, answer unknown")
            else:
                kinds.append("other question, other answer")
        by_threshold = {}
        for th in THRESHOLDS:
            hit = best >= th
            by_threshold[f"{th:.2f}"] = {
                "share_excluded": round(float(hit.mean()), 4),
                "paraphrase_recall": round(float(hit[asked].mean()), 4) if asked.any() else None,
                "collateral": round(float(hit[parsed & ~asked].mean()), 4) if (parsed & ~asked).any() else None,
                "nearest_kinds": dict(Counter(k for k, h in zip(kinds, hit, strict=True) if h)),
            }
        examples = {}
        for band, (lo, hi) in {"0.90-0.95": (0.90, 0.95), ">=0.97": (0.97, 1.01)}.items():
            idx = [i for i in np.argsort(-best) if lo <= best[i] < hi]
            pick = idx[:: max(1, len(idx) // args.examples)][: args.examples]
            examples[band] = [{"cosine": round(float(best[i]), 4), "kind": kinds[i], "log": logs[t][i]["prompt"][:200],
                               "eval": evals[t][nearest[i]]["prompt"][:200]} for i in pick]  # fmt: skip
        report["task_types"][t] = {  # type: ignore[index]
            "log_prompts": len(logs[t]),
            "parsed": int(parsed.sum()),
            "asking_an_eval_question": int(asked.sum()),
            "max_cosine_quantiles": {q: round(float(np.quantile(best, q)), 4) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
            "paraphrase_cosine_quantiles": (
                {q: round(float(np.quantile(para[asked], q)), 4) for q in (0.05, 0.25, 0.5)} if asked.any() else None
            ),  # fmt: skip
            "other_question_cosine_quantiles": {
                q: round(float(np.quantile(other[parsed], q)), 4) for q in (0.5, 0.75, 0.95)
            },  # fmt: skip
            "by_threshold": by_threshold,
            "examples": examples,
        }
    return report


def _print(report: dict[str, object]) -> None:
    print(f"log rows {report['rows']} (seed {report['seed']}), eval rows {report['eval_rows']} per task type "
          f"(seed {report['eval_seed']}), model {report['model']}")  # fmt: skip
    for t, r in report["task_types"].items():  # type: ignore[attr-defined]
        print(f"\n[{t}] {r['log_prompts']} distinct log prompts, {r['parsed']} parsed, "
              f"{r['asking_an_eval_question']} ask a question the eval set asks")  # fmt: skip
        print(f"  max cosine to an eval prompt, quantiles: {r['max_cosine_quantiles']}")
        print(f"  cosine to an eval paraphrase (same question): {r['paraphrase_cosine_quantiles']}")
        print(f"  best cosine to an eval prompt of another question: {r['other_question_cosine_quantiles']}")
        print("  threshold  excluded  paraphrases caught  other questions caught  nearest eval prompt is")
        for th, row in r["by_threshold"].items():
            print(f"  >= {th}   {row['share_excluded']:8.1%}  {row['paraphrase_recall'] or 0:18.1%}  "
                  f"{row['collateral'] or 0:22.1%}  {row['nearest_kinds']}")  # fmt: skip
        for band, pairs in r["examples"].items():
            print(f"  examples {band}:")
            for p in pairs:
                print(f"    {p['cosine']:.4f} ({p['kind']})\n      log : {p['log']!r}\n      eval: {p['eval']!r}")
        print("  paraphrases made from eval prompts: cosine to the original, and the share caught at each threshold")
        for kind, v in report["variants"][t].items():  # type: ignore[index]
            caught = "  ".join(f"{th}: {share:.0%}" for th, share in v["caught"].items())
            print(
                f"    {kind:18s} n={v['pairs']:3d} min {v['min']:.3f} q05 {v['q05']:.3f} median {v['median']:.3f}  {caught}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000, help="simulated log rows (all task types)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--eval-seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--examples", type=int, default=4, help="example pairs per band")
    parser.add_argument("--variant-rows", type=int, default=60, help="eval prompts per task type to paraphrase")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    report = measure(args)
    _print(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
