"""Great Expectations suites that judge a batch, as code, with Data Docs that never show raw PII.

Row-level problems (a null prompt, a rating out of range) are quarantined by :mod:`ftops.curation` and are not
a reason to stop; these suites judge whole batches:

* ``raw_<task type>``: the raw batch as read from the warehouse. Its text holds raw PII and secrets, so GX
  never sees it: the column check runs on the frame's header only (zero rows), everything else on a
  *profile* of the batch (text lengths, coerced numbers, PII-scrubbed labels and each row's quarantine
  reason). Expectations: at least one row; the required columns exist; every row has the expected task
  type; the share of malformed (quarantined) rows is at most ``max_malformed_share``; and, on that same
  tolerance, prompts and responses are non-blank text, ratings lie in 1..5 and latencies are not negative.
* ``curated_<task type>``: the curated dataset (already scrubbed text). Expectations: total size within
  ``min_examples``..``target_size``; both splits present and the test share within half to twice
  ``test_split``; prompts present and unique; response lengths within the configured bounds; no PII or
  secret pattern left (the *types* found by :func:`ftops.scrub.find_leaks`, never the text); and, when given,
  the highest test-to-train similarity below ``diversity_threshold``.

Expectations pass on empty data, so each suite has a row-count expectation.

Data Docs: with ``docs_dir``, results and suites are kept in ``docs_dir/gx_store`` and the HTML site is
``docs_dir/index.html``; every validation adds its pages, so docs of earlier runs and other task types stay
(the index links the newest 100 results: it reads each one on every build).
Unexpected-value samples come only from the profile (raw suite) or from re-scrubbed text (curated suite).
Everything runs on an in-process ephemeral GX context: no project files elsewhere, no analytics, no network.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ftops.core.config import CurationConfig
from ftops.curation.profiles import curated_profile, raw_profile
from ftops.curation.validation_messages import SAMPLES, describe_failure, result_entry, rows_text
from ftops.warehouse.schema import REQUIRED_COLUMNS

if TYPE_CHECKING:
    import pandas as pd


log = logging.getLogger(__name__)
for _noisy in ("great_expectations._docs_decorators", "great_expectations.expectations.registry"):  # ~150 INFO lines
    logging.getLogger(_noisy).setLevel(logging.WARNING)  # on import, in every curation task log
_SITE = "local_site"
_STORE_DIR = "gx_store"  # JSON suites and results under docs_dir that the HTML pages are built from
_INDEX_LIMIT = 100  # newest results linked from index.html (~5 ms each per build); older pages stay on disk


class ValidationFailedError(ValueError):
    """A suite failed; the message lists the failed expectations."""


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of one suite.

    Attributes:
        suite: Suite name (``raw_<task type>`` or ``curated_<task type>``).
        success: Whether every expectation passed.
        evaluated: Expectations evaluated.
        failed: One sentence per failed expectation, with its observed value.
        docs_path: The Data Docs ``index.html`` holding this validation; None when no docs were built.
        details: Small JSON-able facts about the batch (rows, malformed share, leak types, ...).
        pages: This validation's own Data Docs pages, relative to the site folder (the FT-Ops page links them).
    """

    suite: str
    success: bool
    evaluated: int
    failed: list[str]
    docs_path: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    pages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able values (for XCom and dataset metadata)."""
        return {
            "suite": self.suite,
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": list(self.failed),
            "docs_path": self.docs_path,
            "details": dict(self.details),
            "pages": list(self.pages),
        }


# -- running suites ---------------------------------------------------------------------------------------
def _suite_name(prefix: str, task_type: str) -> str:
    # the name becomes a folder and file name of the docs site
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', task_type)[:80]}"


def _context(docs_dir: Path | None) -> Any:
    """An in-process GX context; with ``docs_dir``, suites and results persist there and feed its site."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    if docs_dir is not None:
        store = docs_dir / _STORE_DIR
        for name, class_name, folder in (
            (config.expectations_store_name, "ExpectationsStore", "expectations"),
            (config.validation_results_store_name, "ValidationResultsStore", "validations"),
        ):
            config.stores[name] = {  # type: ignore[index]
                "class_name": class_name,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(store / folder)},
            }
        config.data_docs_sites = {
            _SITE: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {
                    "class_name": "DefaultSiteIndexBuilder",
                    "validation_results_limit": _INDEX_LIMIT,
                },
            }
        }
    return gx.get_context(mode="ephemeral", project_config=config)


def _validate(ctx: Any, suite_name: str, frame: pd.DataFrame, expectations: list[Any], run_id: Any) -> tuple[Any, Any]:
    """Run one suite on one frame; returns (result, its ValidationResultIdentifier)."""
    import great_expectations as gx
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    batch = (
        ctx.data_sources.add_pandas(f"{suite_name}_source")
        .add_dataframe_asset(suite_name)
        .add_batch_definition_whole_dataframe("batch")
    )
    # add_or_update: a file-backed store already holds the suite from an earlier run
    suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": frame}, run_id=run_id)
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite_name),
        run_id=run_id,
        batch_identifier=result.batch_id,
    )
    return result, key


def _run(
    suite: str,
    parts: list[tuple[str, pd.DataFrame, list[Any]]],
    docs_dir: Path | None,
    details: dict[str, Any],
    hints: dict[str, str],
) -> ValidationReport:
    """Validate each (suite name, frame, expectations) part, build Data Docs once, and report them as one."""
    docs_root = docs_dir.resolve() if docs_dir is not None else None
    if docs_root is None:
        return _run_locked(suite, parts, None, details, hints)
    docs_root.mkdir(parents=True, exist_ok=True)
    # Task types curate in parallel; their suites and results share one file store and one site index, so
    # one validation at a time writes them (an advisory lock on this machine's Data Docs folder).
    with open(docs_root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _run_locked(suite, parts, docs_root, details, hints)


def _site_path(url: str, docs_root: Path) -> str | None:
    """A page's path relative to the site folder (None if GX reports one outside it: then it is not linked)."""
    path = Path(unquote(urlparse(url).path)).resolve()
    return str(path.relative_to(docs_root)) if path.is_relative_to(docs_root) else None


def _run_locked(
    suite: str,
    parts: list[tuple[str, pd.DataFrame, list[Any]]],
    docs_root: Path | None,
    details: dict[str, Any],
    hints: dict[str, str],
) -> ValidationReport:
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    started = time.perf_counter()
    ctx = _context(docs_root)
    run_id = RunIdentifier(run_time=datetime.datetime.now(datetime.UTC))
    results, keys = [], []
    for name, frame, expectations in parts:
        result, key = _validate(ctx, name, frame, expectations, run_id)
        results.append(result)
        keys.append(key)
    checked = time.perf_counter()

    docs_path, relative = None, []
    if docs_root is not None:
        suite_keys = [ExpectationSuiteIdentifier(name=name) for name, _, _ in parts]
        ctx.build_data_docs(site_names=[_SITE], resource_identifiers=[*keys, *suite_keys])
        docs_path = str(docs_root / "index.html")
        pages = [u["site_url"] for k in keys for u in ctx.get_docs_sites_urls(resource_identifier=k, site_name=_SITE)]
        log.info("Data Docs: %s (this validation: %s)", Path(docs_path).as_uri(), ", ".join(map(str, pages)))
        relative = [r for r in (_site_path(str(p), docs_root) for p in pages) if r]

    failed = [describe_failure(r, hints) for result in results for r in result.results if not r.success]
    evaluated = sum(len(result.results) for result in results)
    report = ValidationReport(suite, not failed, evaluated, failed, docs_path, details, relative)
    log.info(
        "Suite %s: %s, %d expectations in %.2f s (+%.2f s docs)%s",
        suite, "passed" if report.success else "FAILED", evaluated, checked - started,
        time.perf_counter() - checked, "".join(f"\n  - {f}" for f in failed),
    )  # fmt: skip
    return report


# -- the suites ---------------------------------------------------------------------------------------------
def validate_raw(
    frame: pd.DataFrame,
    reasons: Sequence[str | None],
    task_type: str,
    cfg: CurationConfig,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Judge a raw batch (schema, size, task type, share of malformed rows, value types) without its text.

    Args:
        frame: The raw batch as read from the warehouse (any dtypes; raw PII inside).
        reasons: Quarantine reason of each row from curation, or None for a well-formed row.
        task_type: The task type the batch was read for.
        cfg: Curation settings (``max_malformed_share``).
        docs_dir: Folder of the Data Docs site to add this validation to; None builds no docs.

    Returns:
        The report; ``details`` holds rows, malformed share, quarantine counts and missing columns.

    Raises:
        ValueError: ``reasons`` does not have one entry per row.
    """
    import great_expectations as gx
    import pandas as pd

    suite = _suite_name("raw", task_type)
    profile = raw_profile(frame, reasons)
    ceiling = cfg.max_malformed_share
    # GX passes when the good share >= mostly; the epsilon keeps a share exactly at the ceiling passing where
    # float rounding differs (1 malformed row of 3 under a ceiling of 1/3: 2/3 < 1 - 1/3 in floating point)
    mostly = min(1.0, max(0.0, 1.0 - ceiling - 1e-9))
    quarantined = Counter(r for r in profile["quarantine_reason"] if r is not None)
    malformed = sum(quarantined.values())
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    details = {
        "rows": len(frame),
        "malformed_share": round(malformed / len(frame), 4) if len(frame) else 0.0,
        "quarantined": dict(quarantined.most_common()),
        "missing_columns": missing,
    }
    hints = {"malformed_share": ", ".join(f"{reason} {n}" for reason, n in quarantined.most_common(SAMPLES))}
    gxe = gx.expectations
    tolerance = f"Tolerates max_malformed_share={ceiling} of rows, which curation quarantines."
    columns = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(REQUIRED_COLUMNS),
            exact_match=False,
            meta=result_entry("columns"),
            notes="Checked on the raw batch's header only (no rows); extra columns are fine.",
        ),
    ]
    checks = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=result_entry("rows")),
        gxe.ExpectColumnValuesToBeInSet(
            column="task_type", value_set=[task_type], meta=result_entry("task_type", f"task_type other than {task_type!r}")
        ),
        gxe.ExpectColumnValuesToBeNull(
            column="quarantine_reason",
            mostly=mostly,
            meta=result_entry("malformed_share", ceiling=ceiling),
            notes=f"Rows quarantined as malformed are at most max_malformed_share={ceiling} of the batch.",
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="prompt_chars",
            mostly=mostly,
            meta=result_entry("tolerance", "prompt missing, blank or not text", ceiling=ceiling),
            notes=tolerance,
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="response_chars",
            mostly=mostly,
            meta=result_entry("tolerance", "response missing, blank or not text", ceiling=ceiling),
            notes=tolerance,
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="user_feedback",
            min_value=1,
            max_value=5,
            mostly=mostly,
            meta=result_entry("tolerance", "user_feedback outside 1..5", ceiling=ceiling),
            notes=tolerance + " Missing ratings are fine.",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="latency_ms",
            min_value=0,
            mostly=mostly,
            meta=result_entry("tolerance", "negative latency_ms", ceiling=ceiling),
            notes=tolerance,
        ),
    ]
    header = pd.DataFrame(columns=[str(c) for c in frame.columns])  # names only: no value reaches GX
    return _run(suite, [(f"{suite}_columns", header, columns), (suite, profile, checks)], docs_dir, details, hints)


def validate_curated(
    train: Sequence[dict[str, Any]],
    test: Sequence[dict[str, Any]],
    cfg: CurationConfig,
    task_type: str,
    *,
    max_cross_split_similarity: float | None = None,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Judge a curated dataset: size, split, uniqueness, lengths, no PII/secret left, no cross-split near dup.

    Args:
        train: Training chat examples (``{"messages": [...]}``).
        test: Test chat examples.
        cfg: Curation settings (sizes, ``test_split``, response lengths, ``diversity_threshold``).
        task_type: The task type of the dataset.
        max_cross_split_similarity: Highest cosine similarity of a test prompt to a training prompt, if known.
        docs_dir: Folder of the Data Docs site to add this validation to; None builds no docs.

    Returns:
        The report; ``details`` holds row counts, the test share and the leak types found by row count.
    """
    import great_expectations as gx

    suite = _suite_name("curated", task_type)
    profile = curated_profile(train, test, max_cross_split_similarity)
    leaks = Counter(kind for found in profile["leaks"] if found for kind in found.split(","))
    rows = len(profile)
    details: dict[str, Any] = {
        "rows": rows,
        "train_rows": len(train),
        "test_rows": len(test),
        "test_share": round(len(test) / rows, 4) if rows else 0.0,
        "leaks": dict(sorted(leaks.items())),
    }
    if max_cross_split_similarity is not None:
        details["max_cross_split_similarity"] = round(float(max_cross_split_similarity), 4)
    hints = {"leaks": ", ".join(f"{kind} in {rows_text(n)}" for kind, n in sorted(leaks.items()))}
    gxe = gx.expectations
    checks = [
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_examples, max_value=cfg.target_size, meta=result_entry("rows")),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="split", value_set=["test", "train"], meta=result_entry("splits")),
        gxe.ExpectColumnMeanToBeBetween(
            column="is_test",
            min_value=cfg.test_split / 2,
            max_value=min(1.0, cfg.test_split * 2),
            meta=result_entry("test_share"),
            notes=f"Share of test rows: half to twice test_split={cfg.test_split}.",
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="prompt", meta=result_entry("prompt_null", "prompt missing")),
        gxe.ExpectColumnValuesToBeUnique(column="prompt", meta=result_entry("prompt_unique", "prompt not unique")),
        gxe.ExpectColumnValuesToNotBeNull(column="response_chars", meta=result_entry("response_null", "response missing")),
        gxe.ExpectColumnValuesToBeBetween(
            column="response_chars",
            min_value=cfg.min_response_chars,
            max_value=cfg.max_response_chars,
            meta=result_entry(
                "response_chars", f"response length outside {cfg.min_response_chars}..{cfg.max_response_chars}"
            ),
        ),
        gxe.ExpectColumnValuesToBeNull(
            column="leaks",
            meta=result_entry("leaks", "PII/secret patterns remain"),
            notes="Types of PII/secret that scrub() still finds in prompt or response; the text shown is re-scrubbed.",
        ),
    ]
    if max_cross_split_similarity is not None:
        checks.append(
            gxe.ExpectColumnMaxToBeBetween(
                column="cross_split_similarity",
                max_value=cfg.diversity_threshold,
                strict_max=True,
                meta=result_entry("near_duplicates"),
                notes="Highest cosine similarity of a test prompt to a training prompt, below diversity_threshold.",
            )
        )
    return _run(suite, [(suite, profile, checks)], docs_dir, details, hints)


def require(report: ValidationReport) -> None:
    """Raise :class:`ValidationFailedError` for a failed report.

    Raises:
        ValidationFailedError: The suite failed; the message names the suite, each failed expectation with its
            observed value, and the Data Docs page.
    """
    if report.success:
        return
    docs = f"\nData Docs: {Path(report.docs_path).as_uri()}" if report.docs_path else ""
    failures = "".join(f"\n  - {failure}" for failure in report.failed)
    raise ValidationFailedError(
        f"suite {report.suite} failed {len(report.failed)} of {report.evaluated} expectations:{failures}{docs}"
    )
