import logging
import math
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from ftops.warehouse.sqlread import read_frame

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _rows() -> list[dict]:
    """Log rows with a null in every nullable column, unicode, empty strings and quotes."""
    rows = []
    for i in range(30):
        rows.append({
            "id": f"r{i:03d}",
            "timestamp": T0 + timedelta(hours=i),
            "task_type": ("qa", "summarize", "naïve ✓")[i % 3],
            "prompt": None if i % 5 == 0 else ("" if i % 7 == 0 else f"Prompt {i}: café 東京 \"quoted\" 'x' %s :p"),
            "response": None if i % 4 == 0 else f"answer {i} — ✓" * (1 + i % 3),
            "model_version": None if i == 3 else f"ftops-qa/{i % 2 + 1}",
            "user_id": None if i % 6 == 0 else f"user-{i}",
            "user_feedback": None if i % 3 == 0 else i % 3 - 1,
            "success": None if i % 8 == 0 else i % 2 == 0,
            "confidence": None if i % 9 == 0 else i / 30,
            "latency_ms": None if i == 5 else 100 + i,
            "tokens_used": 10 * i,
            "metadata": None if i % 2 else '{"k": "ü"}',
        })  # fmt: skip
    return rows


def _log_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_type", sa.Text, nullable=False),
        sa.Column("prompt", sa.Text),
        sa.Column("response", sa.Text),
        sa.Column("model_version", sa.Text),
        sa.Column("user_id", sa.Text),
        sa.Column("user_feedback", sa.Integer),
        sa.Column("success", sa.Boolean),
        sa.Column("confidence", sa.Float),
        sa.Column("latency_ms", sa.Integer),
        sa.Column("tokens_used", sa.Integer),
        sa.Column("metadata", sa.Text),
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    """Both warehouses. On SQLite read_frame *is* pandas.read_sql, so tests on this fixture check the result
    against the source rows themselves, never against read_sql."""
    if request.param == "sqlite":
        yield sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
        return
    yield sa.create_engine(request.getfixturevalue("postgres_url"))


@pytest.fixture
def pg_engine(postgres_url):
    """PostgreSQL only: where read_frame takes its own path (ADBC) and must equal pandas.read_sql."""
    return sa.create_engine(postgres_url)


def _make_table(engine: sa.Engine):
    table = _log_table(f"sqlread_{uuid.uuid4().hex[:10]}")
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(table), _rows())
    yield table
    table.metadata.drop_all(engine)


@pytest.fixture
def log_table(engine):
    yield from _make_table(engine)


@pytest.fixture
def pg_table(pg_engine):
    yield from _make_table(pg_engine)


def _same_value(got, want) -> bool:
    """A read value against the value inserted: None/NaN for NULL, times compared in UTC."""
    if want is None:
        return got is None or (isinstance(got, float) and math.isnan(got))
    if isinstance(want, datetime):
        stamp = pd.Timestamp(got)
        return (stamp.tz_convert(UTC) if stamp.tzinfo else stamp.tz_localize(UTC)) == want
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is bool and got == want
    return got == want


def _read_sql(engine: sa.Engine, query: sa.Select) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(query, conn)


def _assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert dict(got.dtypes) == dict(want.dtypes)
    pd.testing.assert_frame_equal(got, want)
    got_records, want_records = got.to_dict("records"), want.to_dict("records")
    assert len(got_records) == len(want_records)
    for g, w in zip(got_records, want_records, strict=True):
        assert g.keys() == w.keys()
        for key in w:
            a, b = g[key], w[key]
            assert type(a) is type(b), (key, a, b)
            assert a == b or (a is None and b is None) or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def test_every_value_comes_back_as_inserted(engine, log_table) -> None:
    got = read_frame(engine, sa.select(log_table).order_by(log_table.c.id)).to_dict("records")
    want = _rows()
    assert [r["id"] for r in got] == [r["id"] for r in want]
    wrong = [(w["id"], k, g[k], w[k]) for g, w in zip(got, want, strict=True) for k in w if not _same_value(g[k], w[k])]
    assert wrong == []


def test_whole_table_matches_read_sql(pg_engine, pg_table) -> None:
    query = sa.select(pg_table).order_by(pg_table.c.id)
    got = read_frame(pg_engine, query)
    _assert_same(got, _read_sql(pg_engine, query))


def test_the_frame_has_the_types_downstream_code_relies_on(engine, log_table) -> None:
    query = sa.select(log_table).order_by(log_table.c.id)
    got = read_frame(engine, query)
    assert len(got) == 30
    # The contract downstream code relies on, spelled out.
    # SQLAlchemy's SQLite DateTime stores text without the offset, so read_sql (and read_frame) give naive times.
    assert str(got["timestamp"].dtype) == (
        "datetime64[us, UTC]" if engine.dialect.name == "postgresql" else "datetime64[us]"
    )
    assert got["user_feedback"].dtype == "float64" and got["user_feedback"].isna().sum() == 10
    assert got["tokens_used"].dtype == "int64"
    records = got.to_dict("records")
    assert isinstance(records[1]["prompt"], str) and records[7]["prompt"] == "" and "東京" in records[1]["prompt"]
    assert records[0]["success"] is None and records[1]["success"] is False and records[2]["success"] is True


def test_filtered_query_binds_datetime_and_text(engine, log_table, caplog) -> None:
    """Bound parameters (a time, unicode, a quote-laden string, an IN list) select the rows they should."""
    t = log_table.c
    since = T0 + timedelta(hours=4)
    query = (
        sa.select(t.id, t.timestamp, t.prompt, t.user_feedback, t.confidence, t.success)
        .where(t.task_type == "naïve ✓", t.timestamp >= since, t.prompt != "it's; drop table x; --")
        .where(t.id.in_(["r005", "r008", "r011", "r014", "r017"]))
        .order_by(t.timestamp.desc())
    )
    with caplog.at_level(logging.INFO, logger="ftops.warehouse.sqlread"):
        got = read_frame(engine, query)
    if engine.dialect.name == "postgresql":
        _assert_same(got, _read_sql(engine, query))
    assert list(got["id"]) == ["r017", "r014", "r011", "r008"]  # r005 has a null prompt: `!=` drops it
    assert any("read 4 rows" in m for m in caplog.messages)


def test_labels_and_expressions_keep_read_sql_names(pg_engine, pg_table) -> None:
    engine, t = pg_engine, pg_table.c
    query = sa.select(
        t.task_type,
        sa.func.count().label("n"),
        sa.func.avg(t.latency_ms),
        sa.func.max(t.timestamp).label("last_seen"),
        sa.literal_column("1").label("one"),
    ).group_by(t.task_type).order_by(t.task_type)  # fmt: skip
    got = read_frame(engine, query)
    want = _read_sql(engine, query)
    assert list(got.columns) == list(want.columns) == ["task_type", "n", "avg_1", "last_seen", "one"]
    _assert_same(got, want)


def test_aggregates_come_back_with_their_labels(engine, log_table) -> None:
    t = log_table.c
    query = sa.select(t.task_type, sa.func.count().label("n"), sa.func.max(t.tokens_used).label("most"))
    got = read_frame(engine, query.group_by(t.task_type).order_by(t.task_type))
    rows = _rows()
    want = {k: (sum(r["task_type"] == k for r in rows), max(r["tokens_used"] for r in rows if r["task_type"] == k))
            for k in {r["task_type"] for r in rows}}  # fmt: skip
    assert {r["task_type"]: (r["n"], r["most"]) for r in got.to_dict("records")} == want
    assert list(got.columns) == ["task_type", "n", "most"]


def test_empty_result_and_all_null_columns_match_read_sql(pg_engine, pg_table) -> None:
    # read_sql infers dtypes from values: with no rows, or no non-null value in a column, that column is
    # object with None whatever its SQL type. read_frame must not be "better" than that, only the same.
    engine, log_table = pg_engine, pg_table
    t = log_table.c
    empty = sa.select(log_table).where(t.task_type == "nothing")
    got = read_frame(engine, empty)
    assert got.empty
    _assert_same(got, _read_sql(engine, empty))
    all_null = sa.select(log_table).where(t.id.in_(["r000", "r030"]))  # r000: null prompt, feedback, success...
    got = read_frame(engine, all_null)
    _assert_same(got, _read_sql(engine, all_null))
    assert got.to_dict("records")[0]["confidence"] is None


def test_missing_table_is_a_clear_error(engine) -> None:
    missing = _log_table("sqlread_does_not_exist")
    with pytest.raises(LookupError, match="sqlread_does_not_exist.*does not exist"):
        read_frame(engine, sa.select(missing).where(missing.c.task_type == "qa"))


@pytest.mark.postgres
def test_postgres_types_beyond_the_log_match_read_sql(postgres_url) -> None:
    engine = sa.create_engine(postgres_url)
    query = sa.select(
        sa.literal_column("1::int2").label("small"),
        sa.literal_column("1.5::real").label("real"),
        sa.literal_column("1.25::numeric(10, 2)").label("num"),
        sa.literal_column("date '2026-01-01'").label("day"),
        sa.literal_column("'{\"x\": [1, null]}'::jsonb").label("doc"),
        sa.literal_column("'6d0cead2-7d23-48d4-937c-2f598a5c1699'::uuid").label("uid"),
        sa.literal_column("'ab'::bytea").label("raw"),
        sa.literal_column("timestamp '2026-01-01 10:00'").label("naive"),
    )
    _assert_same(read_frame(engine, query), _read_sql(engine, query))


@pytest.mark.postgres
def test_postgres_types_that_would_differ_are_refused(postgres_url) -> None:
    engine = sa.create_engine(postgres_url)
    with pytest.raises(TypeError, match="'span'.*interval"):
        read_frame(engine, sa.select(sa.literal_column("interval '1 day'").label("span")))
