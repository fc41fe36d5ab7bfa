"""The ETL job end to end on generated logs and on MovieLens: real files in, real Delta tables out."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.errors import InputDataError
from adrec_spark.etl.pipeline import RejectedFractionError, run_etl
from adrec_spark.samples.generator import GeneratorSpec, generate
from tests.conftest import make_config, movielens_or_skip

START = dt.date(2024, 1, 1)
SPEC = GeneratorSpec(n_users=60, n_ads=40, n_events=3000, n_days=4, start=START, seed=5)


def _input_lines(folder: Path) -> int:
    """Non-blank lines of the landing files, counted without Spark."""
    return sum(1 for f in folder.glob("*.jsonl") for line in f.read_text().splitlines() if line.strip())


def _rows(spark, path: str, order: list[str]) -> list[tuple]:
    df = spark.read.format("delta").load(path)
    return [tuple(r) for r in df.orderBy(*order).collect()]


@pytest.fixture(scope="module")
def backfilled(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("etl")
    cfg = make_config(tmp)
    generate(SPEC, tmp / "raw")
    result = run_etl(spark, cfg, START, START + dt.timedelta(days=SPEC.n_days - 1))
    return tmp, cfg, result


def test_accounting_identity_and_reasons(spark, backfilled) -> None:
    tmp, cfg, result = backfilled
    clean = spark.read.format("delta").load(cfg.storage.table_path(S.EVENTS_CLEAN))
    rejected = spark.read.format("delta").load(cfg.storage.table_path(S.EVENTS_REJECTED))
    runs = {str(r[S.DS]): r for r in spark.read.format("delta").load(cfg.storage.table_path(S.ETL_RUNS)).collect()}
    assert sorted(runs) == [(START + dt.timedelta(days=i)).isoformat() for i in range(SPEC.n_days)]
    for ds, run in runs.items():
        n_in = _input_lines(tmp / "raw" / "events" / f"date={ds}")
        n_clean = clean.where(F.col(S.DS) == ds).count()
        n_rej = rejected.where((F.col(S.DS) == ds) & (F.col(S.SOURCE) == "events")).count()
        assert n_clean + n_rej + run["duplicate_rows"] == n_in, ds
        assert (run["input_rows"], run["clean_rows"], run["rejected_rows"]) == (n_in, n_clean, n_rej)
        # the generator plants one of each of these per day, and one exact duplicate
        reasons = sorted(r[S.REASON] for r in rejected.where((F.col(S.DS) == ds)
                                                             & (F.col(S.SOURCE) == "events")).collect())
        assert reasons == sorted(["malformed_record", "missing_user_id", "unknown_event_type", "unknown_ad",
                                  "future_event_time"])
        assert run["duplicate_rows"] == 1
        assert run["rejected_rows"] / run["input_rows"] < 0.2  # the generator's data passes the default guard
    # each date's catalog (here the one snapshot of the first day) is checked as a nightly run checks it
    ad_reasons = sorted((str(r[S.DS]), r[S.REASON]) for r in rejected.where(F.col(S.SOURCE) == "ads").collect())
    assert ad_reasons == [(ds, reason) for ds in sorted(runs)
                          for reason in ("duplicate_ad_id", "missing_title", "negative_price")]
    assert result.ads_clean == SPEC.n_ads


def test_rejected_rows_keep_their_payload(spark, backfilled) -> None:
    _, cfg, _ = backfilled
    rejected = spark.read.format("delta").load(cfg.storage.table_path(S.EVENTS_REJECTED))
    malformed = rejected.where(F.col(S.REASON) == "malformed_record").first()
    assert malformed[S.PAYLOAD].startswith('{"event_id": "broken-')
    assert malformed["source_file"].endswith("events-0.jsonl")
    unknown = json.loads(rejected.where(F.col(S.REASON) == "unknown_ad").first()[S.PAYLOAD])
    assert unknown["ad_id"] == "ad-does-not-exist"


def test_personal_data_never_reaches_a_table(spark, backfilled) -> None:
    _, cfg, _ = backfilled
    for table in (S.EVENTS_CLEAN, S.EVENTS_REJECTED, S.USER_PROFILES, S.TRAINING_EXAMPLES):
        df = spark.read.format("delta").load(cfg.storage.table_path(table))
        text = df.select(F.to_json(F.struct(*df.columns)).alias("j"))
        assert text.where(F.col("j").contains("jane.doe") | F.col("j").contains("555-123-4567")).count() == 0
    clean = spark.read.format("delta").load(cfg.storage.table_path(S.EVENTS_CLEAN))
    scrubbed = clean.where(F.col(S.EVENT_ID).startswith("pii-")).select(S.TEXT).first()[0]
    assert scrubbed == "call me at [phone] or mail [email]"


def test_training_examples_split_and_tables(spark, backfilled) -> None:
    _, cfg, result = backfilled
    ex = spark.read.format("delta").load(cfg.storage.table_path(S.TRAINING_EXAMPLES))
    n = ex.count()
    imps = spark.read.format("delta").load(cfg.storage.table_path(S.EVENTS_CLEAN)) \
        .where(F.col(S.EVENT_TYPE) == S.IMPRESSION).count()
    assert n == imps == result.training_examples
    assert S.SPLIT not in ex.columns  # the training job splits the whole training data (training/split.py)
    assert ex.where(F.col(S.LABEL) == 1).count() > 0
    for table in (S.EVENTS_CLEAN, S.EVENTS_REJECTED, S.ADS, S.USER_PROFILES, S.TRAINING_EXAMPLES, S.ETL_RUNS):
        assert (Path(cfg.storage.table_path(table)) / "_delta_log").is_dir(), table


def test_tables_read_without_spark(spark, backfilled) -> None:
    deltalake = pytest.importorskip("deltalake")
    _, cfg, result = backfilled
    table = deltalake.DeltaTable(cfg.storage.table_path(S.USER_PROFILES))
    assert table.to_pyarrow_table().num_rows == result.users_profiled > 0
    examples = deltalake.DeltaTable(cfg.storage.table_path(S.TRAINING_EXAMPLES)).to_pyarrow_table()
    assert examples.num_rows == result.training_examples


def test_table_version_matches_the_delta_history(spark, backfilled) -> None:
    from delta.tables import DeltaTable

    from adrec_spark.io import tables

    _, cfg, _ = backfilled
    for table in (S.EVENTS_CLEAN, S.TRAINING_EXAMPLES, S.ETL_RUNS):
        history = DeltaTable.forPath(spark, cfg.storage.table_path(table)).history(1).collect()[0]
        assert tables.table_version(spark, cfg.storage, table) == history["version"], table
    assert tables.table_version(spark, cfg.storage, "no_such_table") is None


# Each nightly table's rows, in a fixed order
TABLE_KEYS = {S.EVENTS_CLEAN: [S.EVENT_ID], S.EVENTS_REJECTED: [S.DS, S.PAYLOAD], S.TRAINING_EXAMPLES: [S.EVENT_ID],
              S.USER_PROFILES: [S.DS, S.USER_ID], S.ADS: [S.DS, S.AD_ID], S.ETL_RUNS: [S.DS]}


def _two_nightly_runs(spark, tmp_path: Path):
    """Generated logs for two days and the ETL run for each, night after night: (config, day 2)."""
    cfg = make_config(tmp_path)
    generate(GeneratorSpec(n_users=30, n_ads=20, n_events=800, n_days=2, start=START, seed=1), tmp_path / "raw")
    day2 = START + dt.timedelta(days=1)
    run_etl(spark, cfg, START)
    run_etl(spark, cfg, day2)
    return cfg, day2


def test_nightly_rerun_leaves_the_same_tables(spark, tmp_path) -> None:
    cfg, day2 = _two_nightly_runs(spark, tmp_path)
    keys = {t: k for t, k in TABLE_KEYS.items() if t != S.ETL_RUNS}  # its run_seconds differ
    before = {t: _rows(spark, cfg.storage.table_path(t), k) for t, k in keys.items()}
    run_etl(spark, cfg, day2)
    after = {t: _rows(spark, cfg.storage.table_path(t), k) for t, k in keys.items()}
    for table in keys:
        assert after[table] == before[table], table
    runs = spark.read.format("delta").load(cfg.storage.table_path(S.ETL_RUNS))
    assert runs.count() == 2


def test_a_failed_rerun_puts_back_every_table_it_already_wrote(spark, tmp_path, monkeypatch) -> None:
    """The ETL writes six tables, one commit each. A rerun that fails at the fifth (the ad snapshot) puts the
    four it already replaced back as they were; the next rerun completes the date."""
    from delta.tables import DeltaTable

    from adrec_spark.etl import features

    cfg, day2 = _two_nightly_runs(spark, tmp_path)
    keys = TABLE_KEYS
    before = {t: _rows(spark, cfg.storage.table_path(t), k) for t, k in keys.items()}
    # a late event lands for day 2, so the rerun has new rows to write
    landing = tmp_path / "raw" / "events" / f"date={day2.isoformat()}" / "events-0.jsonl"
    late = json.loads(next(line for line in landing.read_text().splitlines() if '"impression"' in line))
    late["event_id"] = "late-impression-1"
    landing.write_text(landing.read_text() + json.dumps(late) + "\n")

    def boom(*args, **kwargs):
        raise RuntimeError("injected: ad snapshot failed")

    monkeypatch.setattr(features, "ad_snapshots", boom)
    with pytest.raises(RuntimeError, match="injected: ad snapshot failed"):
        run_etl(spark, cfg, day2)
    after = {t: _rows(spark, cfg.storage.table_path(t), k) for t, k in keys.items()}
    for table in keys:
        assert after[table] == before[table], table
    # not vacuous: the failed run had replaced the first four tables (events_clean with the late event), and
    # each was put back by a commit of its own; the last two were never written
    for table in (S.EVENTS_CLEAN, S.EVENTS_REJECTED, S.TRAINING_EXAMPLES, S.USER_PROFILES):
        last = DeltaTable.forPath(spark, cfg.storage.table_path(table)).history(2).orderBy("version").collect()
        assert (last[1]["userMetadata"] or "").startswith("restore "), table
    failed_version = DeltaTable.forPath(spark, cfg.storage.table_path(S.EVENTS_CLEAN)).history(2).collect()[-1]
    failed = spark.read.format("delta").option("versionAsOf", failed_version["version"]).load(
        cfg.storage.table_path(S.EVENTS_CLEAN))
    assert failed.where(F.col(S.EVENT_ID) == "late-impression-1").count() == 1
    for table in (S.ADS, S.ETL_RUNS):
        last = DeltaTable.forPath(spark, cfg.storage.table_path(table)).history(1).collect()[0]
        assert not (last["userMetadata"] or "").startswith("restore "), table

    monkeypatch.undo()
    run_etl(spark, cfg, day2)
    clean = spark.read.format("delta").load(cfg.storage.table_path(S.EVENTS_CLEAN))
    assert clean.where(F.col(S.EVENT_ID) == "late-impression-1").count() == 1
    # the latest version read from the log's file names is the history's: 2 runs, the failed write, the
    # restore, the rerun
    from adrec_spark.io import tables

    latest = DeltaTable.forPath(spark, cfg.storage.table_path(S.EVENTS_CLEAN)).history(1).collect()[0]["version"]
    assert tables.table_version(spark, cfg.storage, S.EVENTS_CLEAN) == latest == 4


def test_duplicate_of_an_earlier_day_is_counted_not_kept(spark, tmp_path) -> None:
    cfg = make_config(tmp_path)
    generate(GeneratorSpec(n_users=20, n_ads=15, n_events=500, n_days=2, start=START, seed=2,
                           bad_rows_per_day=0), tmp_path / "raw")
    day1 = tmp_path / "raw" / "events" / f"date={START.isoformat()}" / "events-0.jsonl"
    day2 = tmp_path / "raw" / "events" / f"date={(START + dt.timedelta(days=1)).isoformat()}" / "events-0.jsonl"
    first_line = day1.read_text().splitlines()[0]
    day2.write_text(day2.read_text() + first_line + "\n")
    run_etl(spark, cfg, START)
    result = run_etl(spark, cfg, START + dt.timedelta(days=1))
    assert result.duplicate_rows == 1
    clean = spark.read.format("delta").load(cfg.storage.table_path(S.EVENTS_CLEAN))
    assert clean.where(F.col(S.EVENT_ID) == json.loads(first_line)["event_id"]).count() == 1


def test_missing_or_empty_input_is_a_clear_error_and_writes_nothing(spark, tmp_path) -> None:
    cfg = make_config(tmp_path)
    generate(GeneratorSpec(n_users=20, n_ads=15, n_events=300, n_days=1, start=START, seed=2), tmp_path / "raw")
    with pytest.raises(InputDataError, match=r"no events for 2024-01-05: expected non-empty files under"):
        run_etl(spark, cfg, dt.date(2024, 1, 5))
    empty = tmp_path / "raw" / "events" / "date=2024-01-06"
    empty.mkdir(parents=True)
    (empty / "events-0.jsonl").write_text("")
    with pytest.raises(InputDataError, match="no events for 2024-01-06"):
        run_etl(spark, cfg, dt.date(2024, 1, 6))
    assert not Path(cfg.storage.table_path(S.EVENTS_CLEAN)).exists()
    early = tmp_path / "raw" / "events" / "date=2023-12-31"
    early.mkdir(parents=True)
    (early / "events-0.jsonl").write_text(
        (tmp_path / "raw" / "events" / f"date={START.isoformat()}" / "events-0.jsonl").read_text())
    with pytest.raises(InputDataError, match="no ad catalog snapshot on or before 2023-12-31"):
        run_etl(spark, make_config(tmp_path), dt.date(2023, 12, 31))


def test_a_mostly_rejected_day_fails_with_its_top_reasons_or_warns(spark, tmp_path, caplog) -> None:
    generate(GeneratorSpec(n_users=20, n_ads=15, n_events=200, n_days=1, start=START, seed=2), tmp_path / "raw")
    day = tmp_path / "raw" / "events" / f"date={START.isoformat()}" / "events-0.jsonl"
    n_good = _input_lines(day.parent)
    hover = {"user_id": "u1", "ad_id": "ad-001", "event_type": "hover", "event_time": "2024-01-01T10:00:00Z"}
    day.write_text(day.read_text() + "{broken\n" * 400
                   + "".join(json.dumps({**hover, "event_id": f"h{i}"}) + "\n" for i in range(300)))
    cfg = make_config(tmp_path)
    with pytest.raises(RejectedFractionError, match=(
            rf"2024-01-01: 70[0-9] of {n_good + 700} input rows rejected \(.*%\); top reasons "
            r"malformed_record 40[0-9], unknown_event_type 30[0-9]")):
        run_etl(spark, cfg, START)
    assert not Path(cfg.storage.table_path(S.EVENTS_CLEAN)).exists()
    assert not Path(cfg.storage.table_path(S.EVENTS_REJECTED)).exists()
    with caplog.at_level("WARNING", logger="adrec_spark.etl.pipeline"):
        result = run_etl(spark, make_config(tmp_path, "etl.on_rejected_excess=warn"), START)
    assert result.input_rows == n_good + 700 and result.rejected_rows >= 700
    assert any("max_rejected_fraction" in r.getMessage() for r in caplog.records)
    # a generous limit: no warning, no error
    caplog.clear()
    with caplog.at_level("WARNING", logger="adrec_spark.etl.pipeline"):
        run_etl(spark, make_config(tmp_path, "etl.max_rejected_fraction=0.9"), START)
    assert not any("max_rejected_fraction" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_inputs(spark, tmp_path, fmt) -> None:
    cfg = make_config(tmp_path, f"storage.input_format={fmt}")
    generate(GeneratorSpec(n_users=20, n_ads=15, n_events=400, n_days=1, start=START, seed=4, fmt=fmt),
             tmp_path / "raw")
    result = run_etl(spark, cfg, START)
    assert result.input_rows == result.clean_rows + result.rejected_rows + result.duplicate_rows
    # no broken-JSON row in these formats: the other four bad rows are rejected, one duplicate
    assert result.days[START.isoformat()].rejected_by_reason == {
        "missing_user_id": 1, "unknown_event_type": 1, "unknown_ad": 1, "future_event_time": 1}
    assert result.duplicate_rows == 1


def test_csv_without_a_required_column_names_it(spark, tmp_path) -> None:
    cfg = make_config(tmp_path, "storage.input_format=csv")
    generate(GeneratorSpec(n_users=10, n_ads=12, n_events=100, n_days=1, start=START, fmt="csv"), tmp_path / "raw")
    f = next((tmp_path / "raw" / "events").glob("date=*/events-0.csv"))
    df = pd.read_csv(f).drop(columns=["user_id"])
    df.to_csv(f, index=False)
    with pytest.raises(InputDataError, match=r"lacks required column.*user_id"):
        run_etl(spark, cfg, START)


@pytest.mark.slow
@pytest.mark.movielens
def test_movielens_end_to_end(spark, tmp_path) -> None:
    from adrec_spark.config import load_config
    from adrec_spark.samples.movielens import write_landing

    src = movielens_or_skip()
    summary = write_landing(src, tmp_path / "raw")
    root = Path(__file__).resolve().parents[1]
    cfg = make_config(tmp_path)
    ml = load_config([root / "conf" / "movielens.yaml"])
    cfg = make_config(tmp_path, *[f"etl.{k}={v}" for k, v in (
        ("lookback_days", ml.etl.lookback_days), ("dedup_lookback_days", 0), ("attribution_hours", 0.0),
        ("rate_prior", ml.etl.rate_prior), ("rate_prior_strength", ml.etl.rate_prior_strength))])
    result = run_etl(spark, cfg, dt.date.fromisoformat(summary["first_day"]),
                     dt.date.fromisoformat(summary["last_day"]))
    ratings = pd.read_parquet(src / "ratings.parquet")
    assert result.rejected_rows == 0 and result.duplicate_rows == 0
    assert result.input_rows == len(ratings) + int((ratings["rating"] >= 4).sum())
    ex = spark.read.format("delta").load(cfg.storage.table_path(S.TRAINING_EXAMPLES))
    assert ex.count() == len(ratings) == 100_000
    assert ex.agg(F.sum(S.LABEL)).first()[0] == int((ratings["rating"] >= 4).sum())
    from adrec_spark.training.split import assign_split, compute_cutoffs

    ex = assign_split(ex, compute_cutoffs(ex, ml.train.split))  # the training job's split
    by_split = {r[S.SPLIT]: r["count"] for r in ex.groupBy(S.SPLIT).count().collect()}
    assert by_split == {"train": 80_000, "valid": 10_000, "test": 10_000}
    # the protocol's split: sort by (timestamp, user, movie); the first 80% are train
    order = ratings.sort_values(["timestamp", "user_id", "movie_id"], kind="stable").reset_index(drop=True)
    test_keys = {(f"u{u:04d}", f"m{m:04d}") for u, m in order.iloc[90_000:][["user_id", "movie_id"]].to_numpy()}
    got = {(r[S.USER_ID], r[S.AD_ID]) for r in ex.where(F.col(S.SPLIT) == "test").select(S.USER_ID, S.AD_ID)
           .collect()}
    assert got == test_keys
    # a user's first rating has no history; the ad text follows the protocol
    first = ex.where(F.col(S.USER_ID) == "u0001").orderBy(S.EVENT_TS, S.AD_ID).first()
    assert first[S.HISTORY_TEXT] == "" and first["user_impressions"] == 0
    toy = ex.where(F.col(S.AD_ID) == "m0001").select(S.AD_TEXT).first()[0]
    assert toy == "Toy Story (1995) | Genres: Animation, Children's, Comedy"


@pytest.fixture(scope="module")
def nightly(spark, tmp_path_factory):
    """The same generated days as ``backfilled``, one ETL run per night."""
    tmp = tmp_path_factory.mktemp("nightly")
    cfg = make_config(tmp)
    generate(SPEC, tmp / "raw")
    for i in range(SPEC.n_days):
        run_etl(spark, cfg, START + dt.timedelta(days=i))
    return tmp, cfg


def _training_split(spark, cfg) -> pd.DataFrame:
    """The split the training job uses (train.split over the whole table), as it would export it."""
    from adrec_spark.training.pipeline import split_training_data

    ex = spark.read.format("delta").load(cfg.storage.table_path(S.TRAINING_EXAMPLES))
    out, _ = split_training_data(ex, cfg.train.split, window_days=cfg.train.window_days)
    return out.select(S.EVENT_ID, S.EVENT_TS, S.SPLIT).toPandas().sort_values(S.EVENT_ID).reset_index(drop=True)


def test_nightly_runs_and_a_backfill_give_one_leak_free_training_split(spark, backfilled, nightly) -> None:
    """The split is decided over the whole training data where the model is trained: after nightly runs every
    test example is later than every train example, and the split is the backfill's."""
    night = _training_split(spark, nightly[1])
    back = _training_split(spark, backfilled[1])
    n = len(night)
    assert n == len(back) > 0
    assert night[S.SPLIT].value_counts().to_dict() == {"train": int(n * 0.8), "valid": int(n * 0.9) - int(n * 0.8),
                                                        "test": n - int(n * 0.9)}
    last_train = night.loc[night[S.SPLIT] == "train", S.EVENT_TS].max()
    first_valid = night.loc[night[S.SPLIT] == "valid", S.EVENT_TS].min()
    first_test = night.loc[night[S.SPLIT] == "test", S.EVENT_TS].min()
    assert last_train <= first_valid and night.loc[night[S.SPLIT] == "valid", S.EVENT_TS].max() <= first_test
    pd.testing.assert_frame_equal(night, back)


def _jsonl(folder: Path, name: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _ad(ad_id: str, title: str, price: float, category: str = "travel") -> dict:
    return {"ad_id": ad_id, "title": title, "description": f"About {title}", "category": category,
            "advertiser_id": f"adv-{ad_id}", "price": price}


POINT_IN_TIME_COLUMNS = [S.DS, S.EVENT_ID, S.USER_ID, S.AD_ID, S.EVENT_TS, S.LABEL, S.RELEVANCE, S.HISTORY_TEXT,
                         S.AD_TEXT, S.CATEGORY, S.ADVERTISER_ID, *S.NUMERIC_FEATURES, "user_impressions",
                         "user_clicks", "ad_impressions", "ad_clicks", "history_events", *S.HISTORY_ITEM_TEXTS]


@pytest.mark.parametrize("steady", [False, True], ids=["changing", "steady"])
def test_backfill_equals_nightly_runs_with_a_changing_catalog(spark, tmp_path, caplog, steady) -> None:
    """Catalog snapshots on D1 and D3 (D3: ad A's price and text change, C leaves, D arrives); events on
    D1..D3, one landing a day late. A backfill of D1..D3 and nightly runs D1, D2, D3 give the same ``ads``
    and ``training_examples``; each date uses its own snapshot and its own one-day look-back. ``steady``:
    one snapshot, nothing late, a wide look-back: the backfill computes all dates in one pass, same rows."""
    d1, d2, d3 = START, START + dt.timedelta(days=1), START + dt.timedelta(days=2)
    raw = tmp_path / "raw"
    _jsonl(raw / "ads" / f"date={d1}", "ads-0.jsonl",
           [_ad("A", "Alpha tent", 10.0), _ad("B", "Beta boots", 20.0), _ad("C", "Gamma map", 5.0, "books")])
    if not steady:
        _jsonl(raw / "ads" / f"date={d3}", "ads-0.jsonl",
               [_ad("A", "Alpha tent XL", 15.0), _ad("B", "Beta boots", 20.0), _ad("D", "Delta stove", 30.0)])
    n = iter(range(10_000))

    def ev(day: dt.date, user: str, ad: str | None, kind: str, hh_mm: str, **extra) -> dict:
        return {"event_id": f"e{next(n)}", "user_id": user, "ad_id": ad, "event_type": kind,
                "event_time": f"{day}T{hh_mm}:00Z", **extra}

    d3_ad = "B" if steady else "D"
    events = {
        d1: [ev(d1, "u1", "A", "impression", "09:00"), ev(d1, "u1", "A", "click", "09:01"),
             ev(d1, "u1", "C", "impression", "10:00"), ev(d1, "u1", "C", "click", "10:02"),
             ev(d1, "u2", "B", "impression", "11:00"), ev(d1, "u2", None, "query", "11:30", text="tents"),
             ev(d1, "u2", "A", "impression", "22:50" if steady else "23:50")],
        d2: [ev(d2, "u2", "A", "click", "00:10") if not steady else ev(d1, "u2", "A", "click", "22:55"),
             ev(d2, "u1", "B", "impression", "08:00"), ev(d2, "u1", "C", "impression", "09:00"),
             ev(d2, "u2", "C", "impression", "12:00"), ev(d2, "u2", "C", "click", "12:01")],
        d3: [ev(d3, "u1", "A", "impression", "08:00"), ev(d3, "u1", d3_ad, "impression", "09:00"),
             ev(d3, "u1", d3_ad, "click", "09:05"), ev(d3, "u2", "B", "impression", "10:00"),
             ev(d3 if steady else d2, "u2", "B", "impression", "20:00")],  # landed a day late (not steady)
    }
    if steady:  # nothing lands late: u2's click of D1 lands on D1
        events[d1].append(events[d2].pop(0))
    for day, rows in events.items():
        _jsonl(raw / "events" / f"date={day}", "events-0.jsonl", rows)

    def tables_after(lake: str, runs: list[tuple[dt.date, dt.date | None]]) -> dict[str, list[tuple]]:
        cfg = make_config(tmp_path, f"storage.lakehouse={tmp_path / lake}",
                          f"storage.staging={tmp_path / lake / '_staging'}",
                          "etl.lookback_days=5" if steady else "etl.lookback_days=1", "etl.attribution_hours=1")
        for first, last in runs:
            run_etl(spark, cfg, first, last)
        return {"ads": _rows(spark, cfg.storage.table_path(S.ADS), [S.DS, S.AD_ID]),
                "examples": [tuple(r) for r in spark.read.format("delta")
                             .load(cfg.storage.table_path(S.TRAINING_EXAMPLES)).select(*POINT_IN_TIME_COLUMNS)
                             .orderBy(S.DS, S.EVENT_ID).collect()],
                "rejected": _rows(spark, cfg.storage.table_path(S.EVENTS_REJECTED), [S.DS, S.SOURCE, S.PAYLOAD])}

    with caplog.at_level("INFO", logger="adrec_spark.etl.pipeline"):
        backfill = tables_after("backfill", [(d1, d3)])
    assert any("date by date" in r.getMessage() for r in caplog.records) is not steady
    nightly = tables_after("nightly", [(d1, None), (d2, None), (d3, None)])
    assert backfill == nightly
    assert backfill["rejected"] == []  # C's events are on dates whose catalog holds C: not unknown_ad
    if steady:
        return
    ads = {(str(r[0]), r[1]): r for r in backfill["ads"]}
    cols = spark.read.format("delta").load(str(tmp_path / "backfill" / S.ADS)).columns
    price = cols.index(S.PRICE)
    assert sorted(ads) == [(str(d), a) for d in (d1, d2) for a in "ABC"] + [(str(d3), a) for a in "ABD"]
    assert (ads[(str(d1), "A")][price], ads[(str(d2), "A")][price], ads[(str(d3), "A")][price]) == (10, 10, 15)
    ex = {r[1]: dict(zip(POINT_IN_TIME_COLUMNS, r, strict=True)) for r in backfill["examples"]}
    # by hand: D1's impression of A reads D1's text and price, D3's reads D3's
    assert ex["e0"][S.AD_TEXT] == "Alpha tent | About Alpha tent"
    assert ex["e0"][S.LOG_PRICE] == pytest.approx(math.log1p(10.0))
    d3_a = next(e for e in ex.values() if str(e[S.DS]) == str(d3) and e[S.AD_ID] == "A")
    assert d3_a[S.AD_TEXT] == "Alpha tent XL | About Alpha tent XL"
    assert d3_a[S.LOG_PRICE] == pytest.approx(math.log1p(15.0))
    # one-day look-back anchored at D3: u1's D1 impressions and clicks are out of its window (D2 and D3 only)
    assert (d3_a["user_impressions"], d3_a["user_clicks"]) == (2, 0)  # u1's B and C impressions on D2
    # the impression landed late on D3 is a D3 example; u2's D1 impression is labelled by no D1 click
    assert ex["e6"][S.LABEL] == 0 and ex["e16"][S.DS].isoformat() == str(d3)
