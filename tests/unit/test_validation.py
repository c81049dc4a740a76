"""GX batch suites on small frames built here: what passes, what fails and how, and Data Docs without PII."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from ftops.core.config import CurationConfig
from ftops.curation.curate import to_example
from ftops.curation.profiles import curated_profile, raw_profile
from ftops.curation.validation import ValidationFailedError, ValidationReport, require, validate_curated, validate_raw

CFG = CurationConfig(min_examples=10, target_size=200, test_split=0.2, max_malformed_share=0.2)
ANSWER = "Sentiment: positive. The review describes a satisfying experience with the product."
EMAIL = "jane.doe@example.com"
OPENAI_KEY = "sk-proj-" + "Xq7LmN2pRt9vKw4ZbYc8HdJ3sFa6GeUo1iPy5TnQ"  # 48 characters
CARD = "4111 1111 1111 1111"
PLANTED = (EMAIL, OPENAI_KEY, CARD, "jane.doe")


@pytest.fixture(scope="module", autouse=True)
def _gx_imported() -> None:
    """The first import of great_expectations takes ~7 s; pay it once here rather than in the first test."""
    import great_expectations  # noqa: F401


def raw_frame(n: int = 100, task_type: str = "sentiment") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "timestamp": pd.Timestamp("2026-11-01", tz="UTC"),
            "task_type": task_type,
            "prompt": [f"Classify review number {i}: great value" for i in range(n)],
            "response": ANSWER,
            "user_id": [f"u{i % 7}" for i in range(n)],
            "user_feedback": [5] * n,
            "success": True,
            "latency_ms": 300,
            "metadata": None,
        }
    )


def failure_message(report: ValidationReport) -> str:
    with pytest.raises(ValidationFailedError) as caught:
        require(report)
    return str(caught.value)


def examples(n: int, prefix: str = "train") -> list[dict]:
    return [to_example(f"{prefix} question number {i} about the product", ANSWER) for i in range(n)]


# -- raw suite ----------------------------------------------------------------------------------------------
def test_raw_suite_passes_on_a_clean_batch() -> None:
    report = validate_raw(raw_frame(), [None] * 100, "sentiment", CFG)
    require(report)
    assert report.success and report.suite == "raw_sentiment"
    assert report.evaluated >= 6 and report.failed == []
    assert report.docs_path is None
    assert report.details["rows"] == 100 and report.details["malformed_share"] == 0.0
    assert report.as_dict()["details"] == report.details


@pytest.mark.parametrize("malformed", [19, 20])
def test_raw_suite_tolerates_malformed_rows_up_to_the_ceiling(malformed: int) -> None:
    frame = raw_frame()
    frame.loc[: malformed - 1, "prompt"] = None
    reasons = ["null_prompt"] * malformed + [None] * (100 - malformed)
    report = validate_raw(frame, reasons, "sentiment", CFG)
    require(report)
    assert report.details["malformed_share"] == malformed / 100


def test_raw_suite_fails_just_over_the_ceiling() -> None:
    frame = raw_frame()
    frame.loc[:20, "prompt"] = None
    report = validate_raw(frame, ["null_prompt"] * 21 + [None] * 79, "sentiment", CFG)
    assert "malformed share 0.21 > ceiling 0.20 (null_prompt 21)" in failure_message(report)


def test_raw_suite_fails_when_the_malformed_share_exceeds_the_ceiling() -> None:
    frame = raw_frame()
    frame.loc[:29, "prompt"] = None
    frame.loc[30:34, "user_feedback"] = 11
    reasons = ["null_prompt"] * 30 + ["rating_out_of_range"] * 5 + [None] * 65
    report = validate_raw(frame, reasons, "sentiment", CFG)
    assert not report.success
    assert report.details["malformed_share"] == 0.35
    assert report.details["quarantined"] == {"null_prompt": 30, "rating_out_of_range": 5}
    message = failure_message(report)
    assert "suite raw_sentiment failed" in message
    assert "malformed share 0.35 > ceiling 0.20 (null_prompt 30, rating_out_of_range 5)" in message
    # the per-column checks share the ceiling: 30 % prompts missing is over it, 5 % bad ratings is not
    assert "prompt missing, blank or not text in 30.0% of rows > 20.0% allowed" in message
    assert "user_feedback" not in message


def test_raw_suite_fails_on_a_missing_required_column() -> None:
    frame = raw_frame().drop(columns=["response", "latency_ms"])
    report = validate_raw(frame, [None] * 100, "sentiment", CFG)
    assert report.details["missing_columns"] == ["response", "latency_ms"]
    assert "required columns missing: latency_ms, response" in failure_message(report)


def test_raw_suite_fails_on_a_wrong_task_type() -> None:
    frame = raw_frame()
    frame.loc[:4, "task_type"] = "summarise"
    report = validate_raw(frame, [None] * 100, "sentiment", CFG)
    assert "task_type other than 'sentiment' in 5 rows: summarise (5)" in failure_message(report)


def test_raw_suite_fails_on_an_empty_batch_and_checks_reason_count() -> None:
    report = validate_raw(raw_frame(0), [], "sentiment", CFG)
    assert "row count 0 outside at least 1" in failure_message(report)
    with pytest.raises(ValueError, match="3 quarantine reasons for 100 rows"):
        validate_raw(raw_frame(), [None] * 3, "sentiment", CFG)


def test_raw_profile_carries_no_raw_text() -> None:
    frame = raw_frame(4)
    frame["prompt"] = [f"mail {EMAIL}", "  ", 42, None]
    frame["task_type"] = ["sentiment", EMAIL, None, 3]
    frame["user_feedback"] = [5, "5", True, None]
    profile = raw_profile(frame, [None, "empty_prompt", "prompt_not_text", "null_prompt"])
    assert set(profile.columns) == {"task_type", "quarantine_reason", "prompt_chars", "response_chars",
                                    "user_feedback", "latency_ms"}  # fmt: skip
    assert profile["prompt_chars"].tolist()[0] == len(f"mail {EMAIL}")
    assert profile["prompt_chars"].isna().tolist() == [False, True, True, True]
    assert profile["task_type"].tolist() == ["sentiment", "[EMAIL]", None, "<int>"]
    assert profile["user_feedback"].tolist()[0] == 5 and profile["user_feedback"].isna().tolist()[1:] == [True] * 3
    assert EMAIL not in profile.astype(str).to_csv()


def test_curated_profile_masks_text_that_still_leaks() -> None:
    key_block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    train = [to_example(f"Deploy fails, key: {key_block}", ANSWER), to_example("Fine prompt", f"Mail {EMAIL}")]
    profile = curated_profile(train, [])
    assert profile["prompt"].tolist() == ["[PRIVATE_KEY]", "Fine prompt"]
    assert profile["leaks"].tolist() == ["PRIVATE_KEY", "EMAIL"]
    assert "MIIE" not in profile.to_csv() and EMAIL not in profile.to_csv()


# -- curated suite ------------------------------------------------------------------------------------------
def test_curated_suite_passes_on_a_clean_dataset() -> None:
    report = validate_curated(examples(40), examples(10, "test"), CFG, "sentiment", max_cross_split_similarity=0.5)
    require(report)
    assert report.details == {"rows": 50, "train_rows": 40, "test_rows": 10, "test_share": 0.2, "leaks": {},
                              "max_cross_split_similarity": 0.5}  # fmt: skip


def test_curated_suite_fails_on_a_planted_leak_naming_the_type_not_the_value(tmp_path: Path) -> None:
    test = examples(9, "test") + [to_example(f"Why does my key {OPENAI_KEY} fail?", ANSWER)]
    report = validate_curated(examples(40), test, CFG, "sentiment", docs_dir=tmp_path / "docs")
    assert report.details["leaks"] == {"OPENAI_KEY": 1}
    message = failure_message(report)
    assert "PII/secret patterns remain: OPENAI_KEY in 1 row" in message
    assert OPENAI_KEY not in message and "sk-proj" not in message
    pages = [p.read_text(errors="replace") for p in (tmp_path / "docs").rglob("*") if p.is_file()]
    assert (tmp_path / "docs" / "expectations" / "curated_sentiment.html").is_file()
    assert any("OPENAI_KEY" in page for page in pages)
    assert not any("sk-proj" in page for page in pages)


def test_curated_suite_fails_on_a_near_duplicate_across_splits() -> None:
    report = validate_curated(examples(40), examples(10, "test"), CFG, "sentiment", max_cross_split_similarity=0.95)
    message = failure_message(report)
    assert "max cross-split similarity 0.950 >= diversity threshold 0.90" in message
    assert len(report.failed) == 1


def test_curated_suite_fails_on_too_few_rows() -> None:
    report = validate_curated(examples(4), examples(1, "test"), CFG, "sentiment")
    assert "row count 5 outside 10..200" in failure_message(report)


def test_curated_suite_fails_on_an_empty_test_split() -> None:
    report = validate_curated(examples(50), [], CFG, "sentiment")
    message = failure_message(report)
    assert "split missing: test (need both train and test)" in message
    assert "test share 0.000 outside 0.10..0.40" in message


def test_curated_suite_fails_on_duplicate_prompts_and_short_responses() -> None:
    train = examples(40) + [to_example("train question number 0 about the product", "Positive.")]
    message = failure_message(validate_curated(train, examples(10, "test"), CFG, "sentiment"))
    assert "prompt not unique in 2 rows" in message and "question number 0" not in message  # counted, not quoted
    assert "response length outside 50..5000 in 1 row, e.g. 9" in message


# -- Data Docs ----------------------------------------------------------------------------------------------
def test_data_docs_of_a_failed_raw_batch_hold_no_planted_pii(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = 60
    frame = raw_frame(n)
    frame["prompt"] = [f"I am {EMAIL}, my key is {OPENAI_KEY}, card {CARD}" for _ in range(n)]
    frame["response"] = f"Noted {EMAIL} and {CARD}; key {OPENAI_KEY}."
    frame["metadata"] = f'{{"email": "{EMAIL}", "key": "{OPENAI_KEY}", "card": "{CARD}"}}'
    frame["user_id"] = EMAIL
    frame.loc[:29, "response"] = None  # half the batch is malformed
    frame.loc[30:35, "user_feedback"] = 7
    frame.loc[36:37, "task_type"] = EMAIL  # a label is scrubbed before GX may show it
    frame.loc[38:39, "latency_ms"] = -5
    reasons = ["null_response"] * 30 + ["rating_out_of_range"] * 6 + [None] * (n - 36)
    docs_dir = tmp_path / "docs"

    with caplog.at_level(logging.INFO, logger="ftops.curation.validation"):
        report = validate_raw(frame, reasons, "sentiment", CFG, docs_dir=docs_dir)

    assert not report.success
    index = docs_dir / "index.html"
    assert report.docs_path == str(index) and index.is_file()
    assert f"Data Docs: {index.as_uri()}" in caplog.text
    message = failure_message(report)
    assert "malformed share 0.60 > ceiling 0.20" in message and index.as_uri() in message
    assert "[EMAIL] (2)" in message
    files = [p for p in docs_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".html" and "raw_sentiment" in str(p) for p in files)
    assert any("[EMAIL]" in p.read_text(errors="replace") for p in files if p.suffix == ".html")
    for path in files:
        content = path.read_bytes().decode("utf-8", errors="replace")
        leaked = [value for value in PLANTED if value in content]
        assert not leaked, f"{path} holds {leaked}"
    assert not any(value in message or value in caplog.text for value in PLANTED)


def test_data_docs_keep_earlier_validations(tmp_path: Path) -> None:
    docs_dir = tmp_path / "docs"
    first = validate_raw(raw_frame(), [None] * 100, "sentiment", CFG, docs_dir=docs_dir)
    other = validate_raw(raw_frame(task_type="city"), [None] * 100, "city", CFG, docs_dir=docs_dir)
    again = validate_raw(raw_frame(), [None] * 100, "sentiment", CFG, docs_dir=docs_dir)
    assert first.success and other.success and again.success
    assert first.docs_path == other.docs_path == again.docs_path == str(docs_dir / "index.html")
    pages = sorted(p.relative_to(docs_dir).parts[1] for p in (docs_dir / "validations").rglob("*.html"))
    # each raw validation writes two pages: the header's column check and the profile's suite
    assert pages == ["raw_city", "raw_city_columns"] + ["raw_sentiment"] * 2 + ["raw_sentiment_columns"] * 2
    index = (docs_dir / "index.html").read_text()
    assert index.count("validations/raw_sentiment/") == 2 and "validations/raw_city/" in index
    # each report names its own pages, relative to the site (the FT-Ops page links them)
    assert {Path(p).parts[:2] for p in other.pages} == {("validations", "raw_city"), ("validations", "raw_city_columns")}
    assert all((docs_dir / p).is_file() for p in first.pages + again.pages) and set(first.pages).isdisjoint(again.pages)
    assert again.as_dict()["pages"] == again.pages
