"""The train/valid/test split of the training data, decided where the model is trained.

The split is a property of the training data as a whole (one pinned version of ``training_examples``), not
of the ETL run that wrote a day: cut-offs on the sort key (event time, user, ad, event id) computed over all
the rows a model trains from, so nightly ETL runs and a backfill of the same days give the same split and
every test row is later than every valid row, which is later than every train row.

Methods (``train.split.method``):

* ``fraction``: the first ``1 - valid - test`` of rows by key are train, the next ``valid_fraction`` valid,
  the last ``test_fraction`` test.
* ``days``: the last ``test_days`` calendar days (UTC) of event time are test, the ``valid_days`` before
  them valid.
* ``dates``: fixed cut-offs at midnight UTC of ``valid_start`` and ``test_start``.

With ``train.window_days`` only the latest days of examples are kept (periodic retraining) and the split is
computed inside that window. The cut-offs are recorded on the registered model version (:meth:`SplitCutoffs.
to_tags`), so the evaluation job and the promotion gate re-apply exactly the split the model was trained with.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import SplitConfig
from adrec_spark.errors import ModelResolutionError
from adrec_spark.frames import require_columns

log = logging.getLogger(__name__)

SPLIT_KEY = (S.EVENT_TS, S.USER_ID, S.AD_ID, S.EVENT_ID)

Key = tuple[float, str, str, str]

DAY = 86400.0
TAG_PREFIX = "split."


@dataclass(frozen=True)
class SplitCutoffs:
    """Rows with ``event_ts <= window_start`` are outside the training data (None: no window); of the rest,
    key >= ``test_from`` is test, else key >= ``valid_from`` valid, else train (None: no such rows)."""

    valid_from: Key | None
    test_from: Key | None
    window_start: float | None = None
    method: str = ""

    def to_tags(self) -> dict[str, str]:
        """Registry version tags that :meth:`from_tags` reads back."""
        def enc(key: Key | None) -> str:
            return "" if key is None else json.dumps(list(key))

        return {f"{TAG_PREFIX}method": self.method, f"{TAG_PREFIX}valid_from": enc(self.valid_from),
                f"{TAG_PREFIX}test_from": enc(self.test_from),
                f"{TAG_PREFIX}window_start": "" if self.window_start is None else repr(self.window_start)}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> SplitCutoffs | None:
        """The cut-offs recorded on a model version; None for a version trained before they were recorded."""
        if f"{TAG_PREFIX}test_from" not in tags:
            return None

        def dec(name: str) -> Key | None:
            raw = tags.get(f"{TAG_PREFIX}{name}", "")
            if not raw:
                return None
            try:
                ts, user, ad, event = json.loads(raw)
                return (float(ts), str(user), str(ad), str(event))
            except (ValueError, TypeError) as e:
                raise ModelResolutionError(f"model version tag '{TAG_PREFIX}{name}' = {raw!r} is not a split "
                                           "cut-off ([event_ts, user_id, ad_id, event_id])") from e

        window = tags.get(f"{TAG_PREFIX}window_start", "")
        return cls(valid_from=dec("valid_from"), test_from=dec("test_from"),
                   window_start=float(window) if window else None, method=tags.get(f"{TAG_PREFIX}method", ""))

    def describe(self) -> str:
        def at(key: Key | None) -> str:
            if key is None:
                return "none"
            return dt.datetime.fromtimestamp(key[0], dt.timezone.utc).isoformat(timespec="seconds")

        window = "all" if self.window_start is None else f"after {at((self.window_start, '', '', ''))}"
        return f"{self.method or 'split'}: rows {window}; valid from {at(self.valid_from)}, test from " \
               f"{at(self.test_from)}"


def _key_col() -> Column:
    return F.struct(*[F.col(c).cast("double" if c == S.EVENT_TS else "string").alias(c) for c in SPLIT_KEY])


def _key_lit(key: Key) -> Column:
    return F.struct(*[F.lit(v).cast("double" if n == S.EVENT_TS else "string").alias(n)
                      for v, n in zip(key, SPLIT_KEY, strict=True)])


def key_at_least(key: Key) -> Column:
    """True where the row's sort key is >= ``key`` (later than or at the cut-off)."""
    return _key_col() >= _key_lit(key)


def assign_split(df: DataFrame, cutoffs: SplitCutoffs) -> DataFrame:
    """Keep the rows of the training window and set ``split`` from the cut-offs (replacing any such column)."""
    require_columns(df, SPLIT_KEY, "assign_split")
    if cutoffs.window_start is not None:
        df = df.where(F.col(S.EVENT_TS).cast("double") > F.lit(cutoffs.window_start))
    split = F.lit(S.TRAIN)
    if cutoffs.valid_from is not None:
        split = F.when(key_at_least(cutoffs.valid_from), F.lit(S.VALID)).otherwise(split)
    if cutoffs.test_from is not None:
        split = F.when(key_at_least(cutoffs.test_from), F.lit(S.TEST)).otherwise(split)
    return df.withColumn(S.SPLIT, split)


def rows_neither_trained_on(df: DataFrame, other: SplitCutoffs | None) -> DataFrame:
    """This split's test rows that another model (the champion) never trained or early-stopped on: those at or
    after its own test cut-off. ``other`` None (cut-offs unknown): all test rows."""
    require_columns(df, (*SPLIT_KEY, S.SPLIT), "rows_neither_trained_on")
    test = df.where(F.col(S.SPLIT) == S.TEST)
    if other is None or other.test_from is None:
        return test
    return test.where(key_at_least(other.test_from))


def _midnight(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc).timestamp()


def date_cutoffs(valid_start: str, test_start: str) -> tuple[Key, Key]:
    """Cut-offs at midnight UTC of two dates."""
    return ((_midnight(dt.date.fromisoformat(valid_start)), "", "", ""),
            (_midnight(dt.date.fromisoformat(test_start)), "", "", ""))


def day_cutoffs(latest_ts: float, *, valid_days: int, test_days: int) -> tuple[Key, Key]:
    """The last ``test_days`` calendar days (UTC) up to the day of ``latest_ts`` are test, the ``valid_days``
    before them valid."""
    last_day = dt.datetime.fromtimestamp(latest_ts, dt.timezone.utc).date()
    test_from = _midnight(last_day) - (test_days - 1) * DAY
    return (test_from - valid_days * DAY, "", "", ""), (test_from, "", "", "")


def window_start(latest_ts: float | None, window_days: int | None) -> float | None:
    """Rows after this event time form the retraining window of the latest ``window_days`` (None: all rows)."""
    if window_days is None or latest_ts is None:
        return None
    return float(latest_ts) - window_days * DAY


def _fraction_ranks(n: int, cfg: SplitConfig) -> tuple[int, int]:
    return int(n * (1.0 - cfg.valid_fraction - cfg.test_fraction)), int(n * (1.0 - cfg.test_fraction))


def _cutoffs(cfg: SplitConfig, latest: float | None, start: float | None,
             keys_at_ranks: Callable[[], tuple[Key | None, Key | None]]) -> SplitCutoffs:
    """The cut-offs of ``cfg`` given the latest event time, the window start, and (for ``fraction``) a function
    that finds the keys at the validation and test ranks of the windowed rows."""
    if cfg.method == "dates":
        valid, test = date_cutoffs(str(cfg.valid_start), str(cfg.test_start))
    elif cfg.method == "days":
        if latest is None:
            return SplitCutoffs(None, None, start, cfg.method)
        valid, test = day_cutoffs(latest, valid_days=cfg.valid_days, test_days=cfg.test_days)
    else:
        valid, test = keys_at_ranks()
        valid, test = (valid if cfg.valid_fraction > 0 else None), (test if cfg.test_fraction > 0 else None)
    return SplitCutoffs(valid_from=valid, test_from=test, window_start=start, method=cfg.method)


def compute_cutoffs(df: DataFrame, cfg: SplitConfig, *, window_days: int | None = None) -> SplitCutoffs:
    """The cut-offs of ``cfg`` over all rows of ``df`` (the pinned training data), within the retraining window.

    Runs Spark jobs over ``df`` (a max, and for ``fraction`` a count and a distributed sort with
    ``zipWithIndex``; only the boundary keys reach the driver): pass a persisted DataFrame.
    """
    require_columns(df, SPLIT_KEY, "compute_cutoffs")
    latest = df.agg(F.max(F.col(S.EVENT_TS).cast("double"))).first()[0]
    start = window_start(latest, window_days)
    if start is not None:
        df = df.where(F.col(S.EVENT_TS).cast("double") > F.lit(start))
    return _cutoffs(cfg, latest, start, lambda: _keys_at_ranks(df, cfg))


def _keys_at_ranks(df: DataFrame, cfg: SplitConfig) -> tuple[Key | None, Key | None]:
    keys = df.select(F.col(S.EVENT_TS).cast("double"), *[F.col(c).cast("string") for c in SPLIT_KEY[1:]])
    n = keys.count()
    k_valid, k_test = _fraction_ranks(n, cfg)
    wanted = {k for k in (k_valid, k_test) if k < n}
    found: dict[int, Key] = {}
    if wanted:
        indexed = keys.orderBy(*SPLIT_KEY).rdd.zipWithIndex()
        for row, idx in indexed.filter(lambda x: x[1] in wanted).collect():
            found[idx] = (float(row[0]), str(row[1]), str(row[2]), str(row[3]))
    return found.get(k_valid), found.get(k_test)


# --- the same split on pandas (benchmarks and tools that read the table without Spark) -------------------


def _key_ge_pandas(df: pd.DataFrame, key: Key) -> np.ndarray:
    ts = df[S.EVENT_TS].astype("float64").to_numpy()
    cols = [df[c].astype(str).to_numpy() for c in SPLIT_KEY[1:]]
    out = np.zeros(len(df), dtype=bool)
    equal = np.ones(len(df), dtype=bool)
    for values, bound in zip([ts, *cols], key, strict=True):
        out |= equal & (values > bound)
        equal &= values == bound
    return out | equal


def compute_cutoffs_pandas(df: pd.DataFrame, cfg: SplitConfig, *, window_days: int | None = None) -> SplitCutoffs:
    """:func:`compute_cutoffs` on a pandas frame of the training data."""
    missing = [c for c in SPLIT_KEY if c not in df.columns]
    if missing:
        raise KeyError(f"compute_cutoffs_pandas: missing columns {missing}")
    latest = float(df[S.EVENT_TS].max()) if len(df) else None
    start = window_start(latest, window_days)
    if start is not None:
        df = df[df[S.EVENT_TS].astype("float64") > start]

    def keys_at_ranks() -> tuple[Key | None, Key | None]:
        keys = pd.DataFrame({S.EVENT_TS: df[S.EVENT_TS].astype("float64"),
                             **{c: df[c].astype(str) for c in SPLIT_KEY[1:]}})
        keys = keys.sort_values(list(SPLIT_KEY), kind="stable").reset_index(drop=True)

        def at(k: int) -> Key | None:
            if k >= len(keys):
                return None
            row = keys.iloc[k]
            return (float(row[S.EVENT_TS]), str(row[S.USER_ID]), str(row[S.AD_ID]), str(row[S.EVENT_ID]))

        k_valid, k_test = _fraction_ranks(len(keys), cfg)
        return at(k_valid), at(k_test)

    return _cutoffs(cfg, latest, start, keys_at_ranks)


def assign_split_pandas(df: pd.DataFrame, cutoffs: SplitCutoffs) -> pd.DataFrame:
    """:func:`assign_split` on a pandas frame."""
    if cutoffs.window_start is not None:
        df = df[df[S.EVENT_TS].astype("float64") > cutoffs.window_start]
    split = np.full(len(df), S.TRAIN, dtype=object)
    if cutoffs.valid_from is not None:
        split[_key_ge_pandas(df, cutoffs.valid_from)] = S.VALID
    if cutoffs.test_from is not None:
        split[_key_ge_pandas(df, cutoffs.test_from)] = S.TEST
    return df.assign(**{S.SPLIT: split})


def split_pandas(df: pd.DataFrame, cfg: SplitConfig | None = None, *, window_days: int | None = None) -> pd.DataFrame:
    """The training job's split of a pandas frame of ``training_examples`` (default: the default
    ``train.split``), for tools that read the table without Spark."""
    cfg = cfg or SplitConfig()
    return assign_split_pandas(df, compute_cutoffs_pandas(df, cfg, window_days=window_days))
