"""Time-based train/valid/test split on the sort key (event time, user, ad, event id)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.frames import require_columns

SPLIT_KEY = (S.EVENT_TS, S.USER_ID, S.AD_ID, S.EVENT_ID)

Key = tuple[float, str, str, str]


@dataclass(frozen=True)
class SplitCutoffs:
    """Rows with key >= ``test_from`` are test, else >= ``valid_from`` valid, else train (None: no such rows)."""

    valid_from: Key | None
    test_from: Key | None


def _key_lit(key: Key) -> Column:
    return F.struct(*[F.lit(v).alias(n) for v, n in zip(key, SPLIT_KEY, strict=True)])


def assign_split(df: DataFrame, cutoffs: SplitCutoffs) -> DataFrame:
    """Add ``split`` from the cut-offs."""
    require_columns(df, SPLIT_KEY, "assign_split")
    key = F.struct(*[F.col(c).cast("double" if c == S.EVENT_TS else "string").alias(c) for c in SPLIT_KEY])
    split = F.lit(S.TRAIN)
    if cutoffs.valid_from is not None:
        split = F.when(key >= _key_lit(cutoffs.valid_from), F.lit(S.VALID)).otherwise(split)
    if cutoffs.test_from is not None:
        split = F.when(key >= _key_lit(cutoffs.test_from), F.lit(S.TEST)).otherwise(split)
    return df.withColumn(S.SPLIT, split)


def date_cutoffs(valid_start: str, test_start: str) -> SplitCutoffs:
    """Cut-offs at midnight UTC of two dates."""
    def at(day: str) -> Key:
        ts = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp()
        return (float(ts), "", "", "")

    return SplitCutoffs(valid_from=at(valid_start), test_from=at(test_start))


def fraction_cutoffs(df: DataFrame, *, valid_fraction: float, test_fraction: float) -> SplitCutoffs:
    """Exact cut-offs so that the first ``1 - valid - test`` of rows by key are train, then valid, then test.

    A distributed sort and ``zipWithIndex``; only the two boundary keys reach the driver. Call it on a
    persisted DataFrame: it runs two Spark jobs over it.
    """
    require_columns(df, SPLIT_KEY, "fraction_cutoffs")
    keys = df.select(F.col(S.EVENT_TS).cast("double"), *[F.col(c).cast("string") for c in SPLIT_KEY[1:]])
    n = keys.count()
    k_valid = int(n * (1.0 - valid_fraction - test_fraction))
    k_test = int(n * (1.0 - test_fraction))
    wanted = {k for k in (k_valid, k_test) if k < n}
    found: dict[int, Key] = {}
    if wanted:
        indexed = keys.orderBy(*SPLIT_KEY).rdd.zipWithIndex()
        for row, idx in indexed.filter(lambda x: x[1] in wanted).collect():
            found[idx] = (float(row[0]), str(row[1]), str(row[2]), str(row[3]))
    return SplitCutoffs(valid_from=found.get(k_valid) if valid_fraction > 0 else None,
                        test_from=found.get(k_test) if test_fraction > 0 else None)
