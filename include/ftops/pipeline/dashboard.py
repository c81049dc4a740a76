"""The FT-Ops page in the Airflow UI: :func:`~ftops.pipeline.status.collect_status` and what a page shows beside it.

Per task type, on top of the status (champion and canary with their gate metrics and live metrics, the canary's
ramp): every registered version's accuracy on one eval-set version for the chart of accuracy by version
(``accuracy_by_version``, :func:`~ftops.pipeline.comparison.compare_versions`: each point with the yardstick of
its number and of its gate, the gain's CI, the split, slice and judge figures; each version's own test split,
labelled as not comparable, before any eval-set figure exists), and per version its lineage, latency and cost,
decision and links; the latest dataset versions with their
row accounting and the Data Docs pages of their validations; the live task success of champion and canary over
time, in buckets. Every object that has a page elsewhere carries its link: the Airflow run, the MLflow run, the
DAG whose form starts a fine-tune or a rollback.

Plain JSON, built from the same three sources as the status; the plugin in ``plugins/`` only serves it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ftops.core.airflow_api import AirflowAPI
from ftops.core.config import FtopsConfig, ftops_home
from ftops.pipeline.common import dataset_registry, json_safe, served_model_version
from ftops.pipeline.comparison import compare_versions, version_aliases
from ftops.pipeline.status import collect_status, one_line
from ftops.registry import models as registry

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger(__name__)
MLFLOW_UI_URL = "http://127.0.0.1:5000"  # `mlflow ui`'s default; FTOPS_MLFLOW_UI_URL says where it really is
DAG_OF_DECISION = {"training": "ftops_finetune", "training_request": "ftops_governor",
                   "rollback_request": "ftops_rollback", "erasure": "ftops_erase"}  # fmt: skip
SERIES_BUCKETS = 12
SERIES_MAX_AGE = timedelta(days=30)
VERSIONS_SHOWN = 30
METADATA_KEPT = ("train_rows", "test_rows", "accepted", "accounting", "window", "status", "scrubbed", "capped",
                 "diversity_score", "max_user_share", "source_counts", "accepted_sources",
                 "preference_rows")  # fmt: skip  # never lineage (row ids) or examples


def mlflow_ui_url() -> str:
    """``$FTOPS_MLFLOW_UI_URL`` (where people open the MLflow UI), else ``mlflow ui``'s default address."""
    return (os.environ.get("FTOPS_MLFLOW_UI_URL") or MLFLOW_UI_URL).rstrip("/")


def data_docs_root() -> Path:
    """The folder of the Data Docs site that curation writes (``FTOPS_HOME/data_docs``)."""
    return ftops_home() / "data_docs"


def collect_dashboard(
    cfg: FtopsConfig,
    engine: sa.Engine,
    airflow: AirflowAPI,
    *,
    airflow_ui: str = "",
    mlflow_ui: str | None = None,
    datasets_shown: int = 5,
    metadata_cache: MutableMapping[str, dict[str, Any]] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the FT-Ops page shows, as strict JSON.

    Args:
        cfg: The config.
        engine: The warehouse.
        airflow: The REST API client (with the caller's credentials, so it sees what they may see).
        airflow_ui: The Airflow UI's base path or URL for links (``""``: the page is served by Airflow itself).
        mlflow_ui: The MLflow UI for links (default :func:`mlflow_ui_url`).
        datasets_shown: How many of the newest dataset versions to show per task type.
        metadata_cache: Dataset metadata by tag and content hash (a version never changes; reading it through
            DVC costs a fraction of a second, so a long-lived server keeps it).
        now: The time to measure from (default: now).

    Returns:
        The status of :func:`collect_status` (``models`` replaced by ``task_types``, each with ``versions``,
        ``accuracy_by_version``, ``datasets``, ``live_series`` and ``links``) and ``links`` on runs and decisions.
    """
    now = now or datetime.now(UTC)
    status = collect_status(cfg, engine, airflow, now=now)
    links = _Links(airflow_ui.rstrip("/"), (mlflow_ui or mlflow_ui_url()).rstrip("/"))
    problems: dict[str, str] = status["problems"]
    models = {m["task_type"]: m for m in status.pop("models") or []}
    try:
        dataset_types = dataset_registry(cfg).task_types()
    except Exception as exc:  # noqa: BLE001 - a git or DVC failure: shown, the rest of the page still renders
        problems["datasets"] = one_line(f"dataset registry: {type(exc).__name__}: {exc}")
        dataset_types = []
    task_types = []
    for task_type in sorted(set(models) | set(dataset_types)):
        entry: dict[str, Any] = models.get(task_type) or {"task_type": task_type, "model": None, "champion": None,
                                                         "canary": None}  # fmt: skip
        entry["links"] = {"finetune": links.dag("ftops_finetune"), "rollback": links.dag("ftops_rollback")}
        if "registry" not in problems:
            entry["versions"], comparison = _versions(task_type, links, cfg.gate.confidence, problems)
            if comparison is not None:  # with the gain's CI of gates on a test split, from the runs read here
                entry["accuracy_by_version"] = comparison
            _enrich(entry, entry["versions"])
        entry["datasets"] = _datasets(cfg, task_type, datasets_shown, metadata_cache, problems)
        if "warehouse" not in problems:
            entry["live_series"] = live_series(engine, cfg, task_type, _served(entry), now)
        task_types.append(entry)
    status["task_types"] = task_types
    for run in status.get("active_finetunes") or []:
        run["links"] = {"airflow": links.run("ftops_finetune", run["dag_run_id"]),
                        "mlflow": links.mlflow_run(run.get("mlflow_run_id"), run["task_type"])}  # fmt: skip
    for run in (status.get("recent") or {}).get("runs", []):
        run["links"] = {"airflow": links.run("ftops_finetune", run["dag_run_id"])}
    for d in status.get("decisions") or []:
        dag_id = DAG_OF_DECISION.get(d.get("kind") or "training")
        d["links"] = {"airflow": links.run(dag_id, d["run_id"]) if dag_id and d.get("run_id") else None}
    status["links"] = {"mlflow": links.mlflow, "airflow": links.airflow or "/"}
    status["complete"] = not problems
    return dict(json_safe(status))


class _Links:
    """Addresses of the pages an object has elsewhere (Airflow UI, MLflow UI)."""

    def __init__(self, airflow: str, mlflow: str) -> None:
        self.airflow, self.mlflow = airflow, mlflow
        self._experiments: dict[str, str] = {}

    def dag(self, dag_id: str) -> str:
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}"

    def run(self, dag_id: str, run_id: str) -> str:
        return f"{self.dag(dag_id)}/runs/{quote(run_id, safe='')}"

    def mlflow_run(self, run_id: str | None, task_type: str | None, experiment: str | None = None) -> str | None:
        if not run_id or not task_type:
            return None
        if experiment is None:
            if task_type not in self._experiments:
                self._experiments[task_type] = registry.experiment_id(task_type)
            experiment = self._experiments[task_type]
        return f"{self.mlflow}/#/experiments/{quote(experiment, safe='')}/runs/{quote(run_id, safe='')}"


def _served(entry: dict[str, Any]) -> dict[str, str]:
    """role -> version of the versions in service."""
    return {role: entry[role]["version"] for role in ("champion", "canary") if entry.get(role)}


# -- model versions -----------------------------------------------------------------------------------------
def _versions(
    task_type: str, links: _Links, confidence: float, problems: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The newest registered versions, oldest first (gate metrics, the gain's CI, role and links), and the same
    versions on one yardstick (None when the registry did not answer)."""
    try:
        with registry.store_errors(f"read the versions of {registry.model_name(task_type)}"):
            return _read_versions(task_type, links, confidence)
    except registry.RegistryUnavailableError as exc:
        problems["registry"] = one_line(str(exc))
        return [], None


def _read_versions(task_type: str, links: _Links, confidence: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    c = registry.client()
    found = sorted(registry.versions(task_type), key=lambda mv: int(mv.version))[-VERSIONS_SHOWN:]
    aliases = version_aliases(task_type)  # a search does not return aliases
    run_metrics: dict[str, dict[str, float]] = {}
    out = []
    for mv in found:
        t = dict(mv.tags or {})
        entry: dict[str, Any] = {
            "version": str(mv.version), "aliases": aliases.get(str(mv.version), []),
            "registered_at": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat()
            if mv.creation_timestamp else None,
            "dataset_version": t.get("dataset_version"), "backend": t.get("backend"), "decision": t.get("decision"),
            "deployment": t.get("deployment"), "reason": t.get("reason") or t.get("archive_reason"),
            "baseline": t.get("baseline"), "mlflow_run_id": mv.run_id,
            **{k: _float(t.get(f"metric.{k}")) for k in ("accuracy", "latency_p50_ms", "cost_per_1k_tokens")},
            "baseline_accuracy": _float(t.get("baseline.accuracy")),
        }  # fmt: skip
        experiment = None
        if mv.run_id:
            run = c.get_run(str(mv.run_id))
            experiment = run.info.experiment_id
            m = run_metrics[str(mv.version)] = dict(run.data.metrics)
            if "accuracy_gain_ci_low" in m:
                entry["accuracy_gain"] = {"value": m.get("accuracy_gain"), "ci_low": m["accuracy_gain_ci_low"],
                                          "ci_high": m.get("accuracy_gain_ci_high"),
                                          "confidence": confidence}  # fmt: skip
        entry["links"] = {"mlflow": links.mlflow_run(mv.run_id, task_type, experiment)}
        out.append(entry)
    return out, compare_versions(task_type, found, aliases=aliases, run_metrics=run_metrics, confidence=confidence)


def _enrich(entry: dict[str, Any], versions: list[dict[str, Any]]) -> None:
    """Champion and canary get the gain's CI, latency, cost and links of their version."""
    by_version = {v["version"]: v for v in versions}
    for role in ("champion", "canary"):
        summary = entry.get(role)
        if summary and summary["version"] in by_version:
            v = by_version[summary["version"]]
            summary |= {k: v.get(k) for k in ("accuracy", "baseline_accuracy", "accuracy_gain", "latency_p50_ms",
                                              "cost_per_1k_tokens", "links", "mlflow_run_id", "reason")}  # fmt: skip


# -- dataset versions ---------------------------------------------------------------------------------------
def _datasets(
    cfg: FtopsConfig, task_type: str, shown: int, cache: MutableMapping[str, dict[str, Any]] | None,
    problems: dict[str, str],
) -> list[dict[str, Any]]:
    """The newest dataset versions, newest first, with their accounting and Data Docs pages."""
    cache = {} if cache is None else cache
    try:
        datasets = dataset_registry(cfg)
        out = []
        for version in reversed(datasets.versions(task_type)[-shown:]):
            key = f"{version.tag}@{version.content_hash}"
            if key not in cache:
                cache[key] = _summarise_metadata(datasets.read_metadata(version))
            out.append({"tag": version.tag, "version": f"v{version.version}",
                        "content_hash": version.content_hash[:12], **cache[key]})  # fmt: skip
        return out
    except Exception as exc:  # noqa: BLE001 - DVC or git failed: shown in place of the list
        problems["datasets"] = one_line(f"dataset versions of {task_type}: {type(exc).__name__}: {exc}")
        return []


def _summarise_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    out = {k: meta[k] for k in METADATA_KEPT if k in meta}
    counts = out.get("accounting")
    out["counts"] = None if counts is None else {  # None: published without accounting (by hand, or a test)
        "accepted": counts.get("accepted", 0),
        "filtered": {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("filtered:")},
        "quarantined": {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("quarantined:")},
        "other": {k: v for k, v in counts.items() if k != "accepted" and ":" not in k},
    }
    out["validation"] = {name: {"success": report.get("success"), "evaluated": report.get("evaluated"),
                                "failed": report.get("failed") or [], "docs": _docs_pages(report)}
                         for name, report in (meta.get("validation") or {}).items()}  # fmt: skip
    return out


def _docs_pages(report: dict[str, Any]) -> list[str]:
    """The report's Data Docs pages relative to the site folder (the validation's own pages, else the index)."""
    root = data_docs_root().resolve()
    pages = [str(p) for p in report.get("pages") or []]
    if not pages and report.get("docs_path"):
        try:
            pages = [str(Path(report["docs_path"]).resolve().relative_to(root))]
        except ValueError:  # built on another machine or FTOPS_HOME: not served here
            return []
    return [p for p in pages if not Path(p).is_absolute() and ".." not in Path(p).parts]


# -- live success over time ---------------------------------------------------------------------------------
def live_series(
    engine: sa.Engine, cfg: FtopsConfig, task_type: str, served: dict[str, str], now: datetime,
    *, buckets: int = SERIES_BUCKETS,
) -> dict[str, Any]:
    """Task success rate and requests of each served version per time bucket.

    The window starts at the first call of these versions in the last 30 days (a new canary: its own hours; an
    old champion: 30 days) and is cut into ``buckets`` equal parts.

    Returns:
        ``buckets`` (start times), ``bucket_s`` and per role ``{version, requests[], success_rate[]}``
        (None where a bucket has no call).
    """
    import sqlalchemy as sa

    from ftops.warehouse.schema import log_tables
    from ftops.warehouse.state import live_metrics

    if not served or not sa.inspect(engine).has_table(cfg.interactions_table):
        return {"buckets": [], "bucket_s": None, "series": {}}
    _, t, _, _ = log_tables(cfg.interactions_table)
    names = [served_model_version(task_type, v) for v in served.values()]
    query = sa.select(sa.func.min(t.c.timestamp)).where(
        t.c.task_type == task_type, t.c.model_version.in_(names), t.c.timestamp >= now - SERIES_MAX_AGE)
    with engine.connect() as conn:
        first = conn.execute(query).scalar()
    if first is None:
        return {"buckets": [], "bucket_s": None, "series": {}}
    first = first if first.tzinfo else first.replace(tzinfo=UTC)
    # rounded up (timedelta division truncates to microseconds), so the first bucket starts at or before the first call
    width = max((now - first) / buckets + timedelta(microseconds=1), timedelta(minutes=1))
    starts = [now - (buckets - i) * width for i in range(buckets)]  # the last bucket ends now
    series = {}
    for role, version in served.items():
        name = served_model_version(task_type, version)
        points = [live_metrics(engine, task_type, name, s, cfg.interactions_table, until=s + width,
                               success_min_rating=cfg.canary.success_min_rating) for s in starts]  # fmt: skip
        rates = [p["task_success_rate"] if p["requests"] else None for p in points]
        series[role] = {"version": version, "requests": [p["requests"] for p in points], "success_rate": rates}
    return {"buckets": [s.isoformat() for s in starts], "bucket_s": width.total_seconds(), "series": series}


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None
