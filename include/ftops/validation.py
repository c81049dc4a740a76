"""Great Expectations suites that judge a batch, as code.

Row-level problems quarantine rows (see :mod:`ftops.curation`); these suites judge whole batches: the raw
batch's schema and size, and the curated dataset's sizes, lengths, uniqueness and absence of PII/secrets.
Expectations pass on empty data, so every suite has a row-count expectation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftops.config import CurationConfig
from ftops.curation import REQUIRED_COLUMNS, examples_of
from ftops.scrub import find_leaks

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class ValidationFailedError(ValueError):
    """A suite failed; the message lists the failed expectations."""


@dataclass(frozen=True)
class ValidationReport:
    suite: str
    success: bool
    evaluated: int
    failed: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "success": self.success, "evaluated": self.evaluated, "failed": self.failed}


def _run_suite(name: str, frame: pd.DataFrame, expectations: Sequence[Any]) -> ValidationReport:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    ctx = gx.get_context(mode="ephemeral")
    batch_def = (
        ctx.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(f"{name}_asset")
        .add_batch_definition_whole_dataframe(f"{name}_batch")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    validation = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_validation", data=batch_def, suite=suite))
    result = validation.run(batch_parameters={"dataframe": frame})
    failed = [
        f"{r.expectation_config.type}({r.expectation_config.kwargs.get('column', '')})"
        for r in result.results
        if not r.success and r.expectation_config is not None
    ]
    report = ValidationReport(name, bool(result.success), len(result.results), failed)
    log.info("Suite %s: %s, %d expectations, failed: %s", name, "passed" if report.success else "FAILED",
             report.evaluated, failed or "none")  # fmt: skip
    return report


def validate_raw(frame: pd.DataFrame, task_type: str, max_rows: int | None = None) -> ValidationReport:
    """Schema and size of a raw batch: required columns present and at least one row."""
    import great_expectations as gx

    expectations: list[Any] = [gx.expectations.ExpectTableRowCountToBeBetween(min_value=1, max_value=max_rows)]
    expectations += [gx.expectations.ExpectColumnToExist(column=c) for c in REQUIRED_COLUMNS]
    expectations.append(gx.expectations.ExpectColumnValuesToBeInSet(column="task_type", value_set=[task_type]))
    return _run_suite(f"raw_{task_type}", frame, expectations)


def validate_curated(
    train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]], cfg: CurationConfig, task_type: str
) -> ValidationReport:
    """Sizes, lengths, uniqueness and no remaining PII/secret in a curated dataset."""
    import great_expectations as gx
    import pandas as pd

    rows = [{"prompt": p, "response": r, "split": "train"} for p, r in examples_of(train)]
    rows += [{"prompt": p, "response": r, "split": "test"} for p, r in examples_of(test)]
    for row in rows:
        # the leak *types* found, never the text, so failure samples in reports show no secret
        row["leaks"] = ",".join(sorted(set(find_leaks(row["prompt"]) + find_leaks(row["response"]))))
    frame = pd.DataFrame(rows, columns=["prompt", "response", "split", "leaks"])
    expectations = [
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=cfg.min_examples, max_value=cfg.target_size),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="prompt"),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="response"),
        gx.expectations.ExpectColumnValuesToBeUnique(column="prompt"),
        gx.expectations.ExpectColumnValueLengthsToBeBetween(
            column="response", min_value=cfg.min_response_chars, max_value=cfg.max_response_chars
        ),
        gx.expectations.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "test"]),
        gx.expectations.ExpectColumnValuesToBeInSet(column="leaks", value_set=[""]),
    ]
    return _run_suite(f"curated_{task_type}", frame, expectations)


def require(report: ValidationReport) -> None:
    """Raise :class:`ValidationFailedError` for a failed report."""
    if not report.success:
        raise ValidationFailedError(f"suite {report.suite} failed: {', '.join(report.failed)}")
