"""The training split: cut-offs over the whole training data (fraction, days, dates, a window), the same on
pandas, recorded as version tags, and the gate's rows that neither model trained on."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import SplitConfig
from adrec_spark.training import split as sp

DAY0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc).timestamp()
H = 3600.0


def _rows() -> pd.DataFrame:
    """12 impressions over 4 days (3 a day at 06:00, 12:00, 18:00); two share a second (tie broken by user)."""
    out = []
    for day in range(4):
        for j, hour in enumerate((6, 12, 18)):
            out.append((DAY0 + day * 24 * H + hour * H, f"u{(day * 3 + j) % 5}", f"a{j}", f"e{day}{j}"))
    out[10] = (out[9][0], "u0", "a9", "e31b")  # same second as row 9, user u0 < u4: sorts before it
    return pd.DataFrame(out, columns=list(sp.SPLIT_KEY))


@pytest.fixture(scope="module")
def rows(spark):
    pdf = _rows()
    return pdf, spark.createDataFrame(pdf).withColumn(S.SPLIT, F.lit("stale"))  # a stale column is replaced


def _spark_split(df, cfg: SplitConfig, window_days=None) -> tuple[dict[str, str], sp.SplitCutoffs]:
    cut = sp.compute_cutoffs(df, cfg, window_days=window_days)
    got = {r[S.EVENT_ID]: r[S.SPLIT] for r in sp.assign_split(df, cut).collect()}
    return got, cut


def _pandas_split(pdf, cfg: SplitConfig, window_days=None) -> dict[str, str]:
    out = sp.split_pandas(pdf, cfg, window_days=window_days)
    return dict(zip(out[S.EVENT_ID], out[S.SPLIT], strict=True))


def test_fraction_is_by_key_rank_over_all_rows(rows) -> None:
    pdf, df = rows
    cfg = SplitConfig(valid_fraction=0.25, test_fraction=0.25)
    got, cut = _spark_split(df, cfg)
    order = ["e00", "e01", "e02", "e10", "e11", "e12", "e20", "e21", "e22", "e31b", "e30", "e32"]
    # rows 9 and 10 of _rows(): e30 at 06:00 (u4) and e31b at 06:00 (u0): e31b sorts first
    assert sorted(got, key=order.index) == order
    want = {e: "train" for e in order[:6]} | {e: "valid" for e in order[6:9]} | {e: "test" for e in order[9:]}
    assert got == want
    assert cut.test_from == (DAY0 + 3 * 24 * H + 6 * H, "u0", "a9", "e31b")
    assert _pandas_split(pdf, cfg) == want


def test_days_are_the_last_calendar_days(rows) -> None:
    pdf, df = rows
    cfg = SplitConfig(method="days", valid_days=2, test_days=1)
    got, cut = _spark_split(df, cfg)
    want = {e: ("test" if e.startswith("e3") else "valid" if e[1] in "12" else "train") for e in got}
    assert got == want
    assert cut.test_from == (DAY0 + 3 * 24 * H, "", "", "")
    assert _pandas_split(pdf, cfg) == want


def test_dates_and_a_retraining_window(rows) -> None:
    pdf, df = rows
    cfg = SplitConfig(method="dates", valid_start="2024-03-03", test_start="2024-03-04")
    got, _ = _spark_split(df, cfg)
    want = {e: ("test" if e.startswith("e3") else "valid" if e.startswith("e2") else "train") for e in got}
    assert got == want and _pandas_split(pdf, cfg) == want
    # the last 2 days: rows after 2024-03-02 18:00 (the latest is 03-04 18:00), split inside the window
    cfg = SplitConfig(valid_fraction=0.25, test_fraction=0.25)
    got, cut = _spark_split(df, cfg, window_days=2)
    assert got == {"e20": "train", "e21": "train", "e22": "train", "e31b": "valid", "e30": "test", "e32": "test"}
    assert cut.window_start == DAY0 + 3 * 24 * H + 18 * H - 2 * 24 * H
    assert _pandas_split(pdf, cfg, window_days=2) == got


def test_cutoffs_round_trip_through_version_tags() -> None:
    cut = sp.SplitCutoffs(valid_from=(1.5, "u", "a", "e"), test_from=(2.0, "", "", ""), window_start=0.25,
                          method="days")
    tags = cut.to_tags()
    assert all(isinstance(v, str) for v in tags.values())
    assert sp.SplitCutoffs.from_tags({**tags, "table_version": "3"}) == cut
    assert sp.SplitCutoffs.from_tags({"table_version": "3"}) is None  # a version from before the tags


def test_gate_rows_are_the_test_rows_neither_model_trained_on(rows) -> None:
    """A window re-split puts rows in the challenger's test set that the champion trained (or early-stopped)
    on: the gate keeps only those at or after the champion's own test cut-off."""
    _, df = rows
    champion = sp.compute_cutoffs(df, SplitConfig(valid_fraction=0.1, test_fraction=0.1))
    assert champion.valid_from[3] == "e31b" and champion.test_from[3] == "e30"  # champion's test: e30 e32
    cut = sp.compute_cutoffs(df, SplitConfig(valid_fraction=0.1, test_fraction=0.5), window_days=2)
    split = sp.assign_split(df, cut)
    test = {r[S.EVENT_ID] for r in split.where(F.col(S.SPLIT) == S.TEST).collect()}
    assert test == {"e31b", "e30", "e32"}  # the last half of the window's 6 rows: e31b was champion's valid
    gate = {r[S.EVENT_ID] for r in sp.rows_neither_trained_on(split, champion).collect()}
    assert gate == {"e30", "e32"}
    assert {r[S.EVENT_ID] for r in sp.rows_neither_trained_on(split, None).collect()} == test
