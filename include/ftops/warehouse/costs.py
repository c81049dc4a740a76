"""What a served version's calls cost, from the interaction log.

Each answered call's ``metadata`` carries ``cost`` where the gateway priced it (an upstream version's tokens at
its prices; a local version's share of its batch's decode time at ``gate.compute_cost_per_hour``) and, for a
local version, ``decode_ms``. A local call logged while compute was unpriced is priced here from its
``decode_ms`` when an hourly price is given, so a price set later still reports every call.
"""

from __future__ import annotations

import json
import math
from typing import Any

import sqlalchemy as sa

from ftops.warehouse.schema import log_tables

SAMPLE = 2000  # the latest answered calls of a version that a cost figure rests on


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    return float(value) if ok else None


def cost_per_1k_calls(
    engine: sa.Engine, task_type: str, model_version: str, table: str = "interactions", *,
    cost_per_hour: float = 0.0, sample: int = SAMPLE,
) -> dict[str, Any]:  # fmt: skip
    """The mean cost of a version's latest answered calls, per 1 000 calls.

    Args:
        engine: The warehouse.
        task_type: The task type.
        model_version: The served name, ``ftops-<task_type>/<version>``.
        table: The log table.
        cost_per_hour: Prices a local call logged without a cost from its ``decode_ms`` (0: such calls are
            unpriced).
        sample: How many of the latest answered calls to read.

    Returns:
        ``calls`` (answered calls read), ``priced`` (those with a cost) and ``per_1k_calls`` (None when none is
        priced).
    """
    _, t, _, _ = log_tables(table)
    query = (sa.select(t.c.metadata).where(t.c.task_type == task_type, t.c.model_version == model_version,
                                           t.c.success.is_(True))
             .order_by(t.c.timestamp.desc()).limit(sample))  # fmt: skip
    with engine.connect() as conn:
        texts = conn.scalars(query).all()
    costs = []
    for text in texts:
        try:
            meta = json.loads(text) if text else {}
        except ValueError:
            continue
        if not isinstance(meta, dict):
            continue
        cost, decode_ms = _number(meta.get("cost")), _number(meta.get("decode_ms"))
        if cost is None and decode_ms is not None and cost_per_hour > 0:
            cost = cost_per_hour * decode_ms / 3_600_000
        if cost is not None:
            costs.append(cost)
    mean = sum(costs) / len(costs) * 1000 if costs else None
    return {"calls": len(texts), "priced": len(costs), "per_1k_calls": mean}
