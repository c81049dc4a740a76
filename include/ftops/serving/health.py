"""What ``GET /healthz`` answers: built from the gateway's memory only, never the registry or a file.

Without a valid key (when keys are configured) a caller learns only ``{"status": "ok" | "degraded"}``; with one
(or from loopback when no keys are configured) also the loaded versions and their queues, the versions that
failed to load, each task type's routing and its age, and the spool's numbers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftops.serving.batcher import ModelPool
    from ftops.serving.interaction_log import InteractionLogger
    from ftops.serving.router import Router


def gateway_health(router: Router, pool: ModelPool, logger: InteractionLogger, detailed: bool) -> dict[str, Any]:
    """``/healthz``'s body.

    "degraded": a version an alias routes to cannot be loaded, a routing is older than ``max(3 × ttl, 30 s)``
    and its last refresh failed (the registry is unreachable, the gateway serves on the last aliases), the spool
    is full, or its last flush failed (the warehouse is down or refuses the table: rows wait in the spool).
    """
    now = time.monotonic()
    routings = router.served()
    unavailable = router.unavailable()
    stale = max(3 * router.ttl_s, 30.0)
    ages = {t: round(now - r.read_at, 1) for t, r in routings.items()}
    routed_out = [(t, v) for (t, v) in unavailable if t in routings and v in (routings[t].champion, routings[t].canary)]
    spool = logger.health()  # running counts: no file is read
    # an idle gateway reads no aliases, so age alone says nothing: stale means old *and* the last read failed
    failing = router.failing()
    old = any(a > stale and t in failing for t, a in ages.items())
    degraded = routed_out or old or spool["spool_full"] or spool["flush_error"]
    status = "degraded" if degraded else "ok"
    if not detailed:
        return {"status": status}
    return {
        "status": status, "loaded": pool.loaded(), "routing_age_s": ages,
        "routing": {t: {"champion": r.champion, "canary": r.canary, "canary_percent": r.canary_percent}
                    for t, r in routings.items()},
        "unavailable": [f"{t}/{v}: {why}" for (t, v), why in unavailable.items()],
        **spool,
    }  # fmt: skip
