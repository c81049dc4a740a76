"""Clean chat examples from the simulator, for tests that train: the prompt and the reference reply."""

from __future__ import annotations

import json
from typing import Any

from ftops.simulate import generate_interactions, reference_response


def clean_chat_rows(task_type: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct chat examples whose replies are the simulator's ground truth (no wrong answers)."""
    rows, seen = [], set()
    for r in generate_interactions(4 * n, seed=seed, task_types=[task_type]):
        prompt = r["prompt"].strip()
        if not r["success"] or r["metadata"] is None or prompt in seen:
            continue
        seen.add(prompt)
        answer = reference_response(task_type, json.loads(r["metadata"])["expected"])
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    return rows[:n]
