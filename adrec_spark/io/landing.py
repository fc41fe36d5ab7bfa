"""Reading raw inputs from the landing area: ``<root>/date=YYYY-MM-DD/`` folders of JSON Lines, CSV or Parquet.

Every raw row comes back as strings plus ``payload`` (the original record, for rejected rows),
``malformed`` (true when the record could not be parsed at all), ``ds`` (the landing date) and
``source_file``. Typing and validation happen later, in pure transforms.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from adrec_spark import schema as S
from adrec_spark.errors import InputDataError

log = logging.getLogger(__name__)

_CORRUPT = "_corrupt_record"
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


def _fs_and_path(spark: SparkSession, root: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(root)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path


def list_landing_dates(spark: SparkSession, root: str) -> list[dt.date]:
    """Dates that have a ``date=YYYY-MM-DD`` folder under ``root`` (any Hadoop file system)."""
    fs, path = _fs_and_path(spark, root)
    if not fs.exists(path):
        return []
    out = []
    for status in fs.listStatus(path):
        m = _DATE_DIR.match(status.getPath().getName())
        if status.isDirectory() and m:
            out.append(dt.date.fromisoformat(m.group(1)))
    return sorted(out)


def _has_files(spark: SparkSession, folder: str) -> bool:
    fs, path = _fs_and_path(spark, folder)
    if not fs.exists(path):
        return False
    return any(
        s.isFile() and not s.getPath().getName().startswith(("_", ".")) and s.getLen() > 0
        for s in fs.listStatus(path)
    )


def landing_folders(spark: SparkSession, root: str, dates: Sequence[dt.date], *, what: str,
                    allow_missing: bool = False) -> list[str]:
    """The non-empty landing folders for ``dates``; a clear error when one (or, in a backfill, all) lack data."""
    folders: list[str] = []
    missing: list[dt.date] = []
    for d in dates:
        folder = f"{root.rstrip('/')}/date={d.isoformat()}"
        if _has_files(spark, folder):
            folders.append(folder)
        else:
            missing.append(d)
    if missing and not allow_missing:
        raise InputDataError(
            f"no {what} for {', '.join(str(d) for d in missing)}: expected non-empty files under "
            f"{root.rstrip('/')}/date=YYYY-MM-DD/")
    if missing:
        log.warning("no %s for %d of %d dates (skipped): %s", what, len(missing), len(dates),
                    ", ".join(str(d) for d in missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if not folders:
        raise InputDataError(f"no {what} for any of the {len(dates)} dates under {root}")
    return folders


def _all_string_schema(columns: Sequence[str], with_corrupt: bool) -> T.StructType:
    fields = [T.StructField(c, T.StringType(), True) for c in columns]
    if with_corrupt:
        fields.append(T.StructField(_CORRUPT, T.StringType(), True))
    return T.StructType(fields)


def _with_landing_columns(df: DataFrame) -> DataFrame:
    return (df.withColumn(S.DS, F.to_date(F.regexp_extract("source_file", r"date=(\d{4}-\d{2}-\d{2})", 1)))
            .drop("date"))


def read_raw(spark: SparkSession, folders: Sequence[str], fmt: str, columns: Sequence[str],
             *, required: Sequence[str] = ()) -> DataFrame:
    """Read landing ``folders`` as all-string ``columns`` + payload/malformed/ds/source_file.

    ``required`` columns must exist in a CSV header or Parquet schema (JSON objects may omit keys: those
    rows are rejected one by one later, with a reason).
    """
    folders = list(folders)
    if fmt == "json":
        # JSON whitespace is spaces and tabs within a line (F.trim alone strips spaces only).
        stripped = F.btrim(F.col("line"), F.lit(" \t"))
        lines = (spark.read.text(folders).select(F.col("value").alias("line"),
                                                 F.col("_metadata.file_path").alias("source_file"))
                 .where(stripped != ""))
        parsed = F.from_json("line", _all_string_schema(columns, True),
                             {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT})
        df = lines.select("line", "source_file", parsed.alias("r"))
        # A JSON value that is not an object (a number, a list) parses to a row of nulls: malformed too.
        is_object = stripped.startswith("{")
        malformed = F.col(f"r.{_CORRUPT}").isNotNull() | F.col("r").isNull() | ~is_object
        out = df.select(*[F.col(f"r.{c}").alias(c) for c in columns],
                        F.col("line").alias(S.PAYLOAD), malformed.alias("malformed"), "source_file")
    elif fmt == "csv":
        header = spark.read.option("header", True).csv(folders).columns
        _require(header, required, folders)
        known = [c for c in header if c in columns]
        file_schema = _all_string_schema(header, True)
        raw = (spark.read.option("header", True).option("mode", "PERMISSIVE")
               .option("columnNameOfCorruptRecord", _CORRUPT).option("multiLine", False)
               .schema(file_schema).csv(folders)
               .withColumn("source_file", F.col("_metadata.file_path")))
        payload = F.coalesce(F.col(_CORRUPT), F.to_json(F.struct(*[F.col(c) for c in header])))
        out = raw.select(*[F.col(c) if c in known else F.lit(None).cast("string").alias(c) for c in columns],
                         payload.alias(S.PAYLOAD), F.col(_CORRUPT).isNotNull().alias("malformed"),
                         "source_file")
    elif fmt == "parquet":
        raw = spark.read.parquet(*folders).withColumn("source_file", F.col("_metadata.file_path"))
        present = [c for c in raw.columns if c not in ("source_file", "date")]
        _require(present, required, folders)
        payload = F.to_json(F.struct(*[F.col(c) for c in present]))
        out = raw.select(*[(F.col(c).cast("string") if c in present else F.lit(None).cast("string")).alias(c)
                           for c in columns],
                         payload.alias(S.PAYLOAD), F.lit(False).alias("malformed"), "source_file")
    else:
        raise InputDataError(f"unknown input format {fmt!r}: use json, csv or parquet")
    return _with_landing_columns(out)


def _require(present: Sequence[str], required: Sequence[str], folders: Sequence[str]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise InputDataError(
            f"input {folders[0]}{' ...' if len(folders) > 1 else ''} lacks required column(s) "
            f"{', '.join(missing)}; it has: {', '.join(present)}")


def read_events(spark: SparkSession, root: str, dates: Sequence[dt.date], fmt: str, *,
                allow_missing: bool = False) -> DataFrame:
    folders = landing_folders(spark, root, dates, what="events", allow_missing=allow_missing)
    return read_raw(spark, folders, fmt, S.RAW_EVENT_COLUMNS,
                    required=(S.EVENT_ID, S.USER_ID, S.EVENT_TYPE, S.EVENT_TIME))


def latest_catalog_date(spark: SparkSession, root: str, as_of: dt.date,
                        snapshots: Sequence[dt.date] | None = None) -> dt.date:
    """The newest ad-catalog snapshot on or before ``as_of`` (among ``snapshots`` when given)."""
    dates = [d for d in (list_landing_dates(spark, root) if snapshots is None else snapshots) if d <= as_of]
    if not dates:
        raise InputDataError(f"no ad catalog snapshot on or before {as_of} under {root}/date=YYYY-MM-DD/")
    return max(dates)


def catalog_snapshots(spark: SparkSession, root: str, dates: Sequence[dt.date]) -> dict[dt.date, dt.date]:
    """For each date, the catalog snapshot it uses: the newest on or before it."""
    available = list_landing_dates(spark, root)
    return {d: latest_catalog_date(spark, root, d, available) for d in sorted(set(dates))}


def read_ads(spark: SparkSession, root: str, as_of: dt.date | Sequence[dt.date], fmt: str) -> DataFrame:
    """The catalog as of each date: for every date in ``as_of``, the rows of the newest snapshot on or before
    it, with ``ds`` set to that date (point in time: a backfill sees each day's own prices, texts and
    flights). Each snapshot is read once."""
    serves = catalog_snapshots(spark, root, [as_of] if isinstance(as_of, dt.date) else as_of)
    dates = sorted(serves)
    snapshots = sorted(set(serves.values()))
    folders = landing_folders(spark, root, snapshots, what="ad catalog")
    for d in dates:
        log.info("ad catalog snapshot %s for %s", serves[d], d)
    raw = read_raw(spark, folders, fmt, (*S.RAW_AD_COLUMNS, *S.OPTIONAL_AD_COLUMNS),
                   required=(S.AD_ID, S.TITLE))
    mapping = spark.createDataFrame([(snap, d) for d, snap in serves.items()], "_snapshot date, _serves date")
    return (raw.join(F.broadcast(mapping), raw[S.DS] == mapping["_snapshot"], "inner")
            .withColumn(S.DS, F.col("_serves")).drop("_snapshot", "_serves"))
