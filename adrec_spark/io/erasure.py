"""The right to be forgotten: erasing users from the lakehouse and from exported training splits (by id, and
by pseudonym where a salt is set: see :mod:`adrec_spark.privacy`).

:func:`forget_users` deletes a set of users from the *current* version of every lakehouse table in one
Delta commit per table. Delta keeps the deleted rows in the data files of older table versions (time
travel) until those files are vacuumed: erasure is complete only after :func:`vacuum_tables` has run with a
retention that covers the forget commit (``adrec forget-users --vacuum``, or the regular VACUUM schedule,
168 hours by default). Tables with deletion vectors are purged (``REORG TABLE ... APPLY (PURGE)``) after the
delete, so that vacuum can remove the rows there too.

It also removes the users' rows from the training splits that a training run exports to ``storage.staging``
(user ids and history text). A run deletes its splits when it ends, so only a killed run leaves any; the
MLflow artifacts hold no user's rows (the pyfunc's input example is synthetic, evaluation logs aggregates).

Known limits: a rejected raw record keeps the user's id only in its ``payload`` text. That text was
scrubbed of e-mail addresses and phone numbers and cut to ``MAX_PAYLOAD_CHARS`` at ingestion, so an id that
looks like a phone number, or one that sits beyond the cut, is no longer in it and cannot be matched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import AppConfig
from adrec_spark.errors import InputDataError
from adrec_spark.frames import require_columns
from adrec_spark.io import fs, tables
from adrec_spark.logs import Stopwatch
from adrec_spark.privacy import pseudonym, pseudonym_salt, pseudonymize

log = logging.getLogger(__name__)

DEFAULT_RETENTION_HOURS = 168.0  # Delta's default delta.deletedFileRetentionDuration (7 days)
_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
_LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"

# Columns of the small frames the deletes join against.
_KEY = "_forget_key"
_NEEDLE = "_forget_needle"
_PAYLOAD_KEY = "_forget_payload"


def _clean_ids(user_ids: Sequence[str]) -> list[str]:
    """Trimmed, distinct, non-empty ids in their given order (the ETL stores ids trimmed)."""
    if isinstance(user_ids, (str, bytes)):
        raise InputDataError("forget_users: pass a list of user ids, not a single string")
    out: dict[str, None] = {}
    for i, uid in enumerate(user_ids):
        if not isinstance(uid, str):
            raise InputDataError(f"forget_users: user id #{i} is a {type(uid).__name__}, expected a string")
        if uid.strip():
            out[uid.strip()] = None
    if not out:
        raise InputDataError("forget_users: no user ids given (empty list or only blank ids)")
    return list(out)


def _quoted_forms(uid: str) -> set[str]:
    """How ``uid`` can appear as a JSON string in a raw record, quotes included."""
    return {f'"{uid}"', json.dumps(uid, ensure_ascii=False), json.dumps(uid)}


def _needles(spark: SparkSession, ids: Sequence[str]) -> tuple[DataFrame, DataFrame | None]:
    """The text between the quotes of each quoted form of an id (for an equi-join against the segments
    between consecutive quotes of a payload), and the rare forms with a quote inside (a substring join)."""
    plain: set[str] = set()
    with_quotes: set[str] = set()
    for uid in ids:
        for form in _quoted_forms(uid):
            inner = form[1:-1]
            if '"' in inner:
                with_quotes.add(form)
            else:
                plain.add(inner)
    plain_df = spark.createDataFrame([(n,) for n in sorted(plain)], f"{_NEEDLE} string")
    quoted_df = (spark.createDataFrame([(n,) for n in sorted(with_quotes)], f"{_NEEDLE} string")
                 if with_quotes else None)
    return plain_df, quoted_df


def payloads_mentioning(rejected: DataFrame, user_ids: Sequence[str]) -> DataFrame:
    """Distinct ``payload`` values of ``rejected`` (as column ``_forget_payload``) that name one of the users.

    A payload names a user when its JSON ``$.user_id`` is one of the ids, or when it merely contains an id
    as a quoted JSON string anywhere (raw or escaped; malformed JSON included). ``"<id>"`` occurs in a text
    exactly when ``<id>`` (free of quotes) is one of the segments between two consecutive quotes, so that
    test is an equi-join of the exploded segments with the ids and scales with their number.
    """
    require_columns(rejected, (S.PAYLOAD,), "payloads_mentioning")
    ids = _clean_ids(user_ids)
    spark = rejected.sparkSession
    id_frame = F.broadcast(spark.createDataFrame([(uid,) for uid in ids], f"{_KEY} string"))
    plain_needles, quoted_needles = _needles(spark, ids)
    payloads = rejected.where(F.col(S.PAYLOAD).isNotNull()).select(S.PAYLOAD).distinct()
    by_json = payloads.join(id_frame, F.get_json_object(S.PAYLOAD, "$.user_id") == F.col(_KEY), "left_semi")
    parts = F.split(F.col(S.PAYLOAD), '"', -1)
    segments = (payloads.select(S.PAYLOAD, F.size(parts).alias("_n"), F.posexplode(parts).alias("_pos", "_seg"))
                .where((F.col("_pos") >= 1) & (F.col("_pos") <= F.col("_n") - 2)))
    by_quote = segments.join(F.broadcast(plain_needles), F.col("_seg") == F.col(_NEEDLE), "left_semi") \
        .select(S.PAYLOAD)
    found = by_json.unionByName(by_quote)
    if quoted_needles is not None:
        by_substring = payloads.join(F.broadcast(quoted_needles),
                                     F.col(S.PAYLOAD).contains(F.col(_NEEDLE)), "left_semi")
        found = found.unionByName(by_substring)
    return found.distinct().select(F.col(S.PAYLOAD).alias(_PAYLOAD_KEY))


def _delete_rejected(table: DeltaTable, user_ids: Sequence[str]) -> int:
    # The matching payloads come from the snapshot the MERGE then rewrites (re-read on every retry).
    matched = payloads_mentioning(table.toDF(), user_ids)
    return _merge_delete(table, matched, f"t.{S.PAYLOAD} = s.{_PAYLOAD_KEY}")


def _merge_delete(table: DeltaTable, source: DataFrame, condition: str) -> int:
    """``MERGE INTO table t USING source s ON condition WHEN MATCHED THEN DELETE``: one commit (none when
    nothing matches); the number of rows it deleted, from the operation's own metrics."""
    metrics = table.alias("t").merge(source.alias("s"), condition).whenMatchedDelete().execute().first()
    return int(metrics["num_deleted_rows"]) if metrics is not None else 0


def _purge_deletion_vectors(spark: SparkSession, table: DeltaTable, path: str, name: str) -> None:
    """Rewrite files that carry deletion vectors, so the deleted rows leave the current files (and go with
    the next vacuum) rather than staying there, merely masked."""
    features = table.detail().select("tableFeatures").first()
    if features is None or "deletionVectors" not in (features[0] or []):
        return
    log.info("%s: purging deletion vectors", name)
    spark.sql(f"REORG TABLE delta.`{path.replace('`', '``')}` APPLY (PURGE)")


def forget_users(spark: SparkSession, cfg: AppConfig, user_ids: Sequence[str]) -> dict[str, int]:
    """Delete the given users from every existing lakehouse table; rows deleted per table.

    Tables of ``schema.ALL_TABLES`` with a ``user_id`` column lose the rows whose ``user_id`` is one of the
    ids or, when a pseudonym salt is available (:func:`pseudonym_salt`), the pseudonym of one (scores and
    recommendations may be written with pseudonyms). ``events_rejected`` loses the rows whose raw
    ``payload`` names one of the users (see :func:`payloads_mentioning`). Each table changes in one atomic
    Delta commit, a ``MERGE ... WHEN MATCHED THEN DELETE`` against a broadcast frame of ids; tables that do
    not exist, or hold no user data, are skipped.

    The deleted rows stay readable in older table versions until :func:`vacuum_tables` removes their files.
    """
    ids = _clean_ids(user_ids)
    salt = pseudonym_salt(cfg.privacy)  # checked before any Spark work
    if salt is None:
        log.warning("no pseudonym salt in $%s: rows keyed by pseudonymous user ids cannot be matched",
                    cfg.privacy.salt_env)
    id_frame = spark.createDataFrame([(uid,) for uid in ids], f"{_KEY} string")
    keys = id_frame
    if salt is not None:
        keys = keys.unionByName(id_frame.select(pseudonymize(_KEY, salt).alias(_KEY)))
    keys = F.broadcast(keys.distinct())
    log.info("forgetting %d user(s)%s in %s", len(ids), " and their pseudonyms" if salt else "",
             cfg.storage.lakehouse)

    deleted: dict[str, int] = {}
    for name in S.ALL_TABLES:
        path = cfg.storage.table_path(name)
        if not tables.is_delta_table(spark, path):
            log.info("%s: no table at %s (skipped)", name, path)
            continue
        table = DeltaTable.forPath(spark, path)
        columns = table.toDF().columns
        action: Callable[[], int]
        if name == S.EVENTS_REJECTED and S.PAYLOAD in columns:
            action = partial(_delete_rejected, table, ids)
        elif S.USER_ID in columns:
            action = partial(_merge_delete, table, keys, f"t.{S.USER_ID} = s.{_KEY}")
        else:
            log.info("%s: no user_id column (skipped)", name)
            continue
        watch = Stopwatch()
        with tables.commit_lock(spark, path, what=name):
            n = tables.with_conflict_retries(action, what=f"{name}: delete", retries=cfg.storage.write_retries,
                                             advice="run forget-users again")
            if n:
                _purge_deletion_vectors(spark, table, path, name)
        deleted[name] = n
        log.info("%s: deleted %d row(s) in %.1fs (now version %s)", name, n, watch.elapsed(),
                 tables.table_version(spark, cfg.storage, name))
    log.info("forgot %d user(s): %d row(s) deleted from %d table(s); older versions keep them until VACUUM",
             len(ids), sum(deleted.values()), len(deleted))
    forget_in_staging(cfg.storage.staging, ids, salt)
    return deleted


def forget_in_staging(staging: str, user_ids: Sequence[str], salt: str | None) -> int:
    """Remove the users' rows (by id or pseudonym) from every Parquet file of exported training splits under
    ``staging/training``; the rows removed. A file is rewritten whole (a temporary file, then a move) only when
    it holds one of them."""
    keys = set(_clean_ids(user_ids))
    if salt is not None:
        keys |= {pseudonym(uid, salt) for uid in list(keys)}
    key_set = pa.array(sorted(keys), pa.string())
    root = fs.join(staging, "training")
    filesystem, _ = fs.filesystem_and_path(root)
    removed = files = 0
    for path in fs.list_files(root):
        name = path.rsplit("/", 1)[-1]
        if not name.endswith(".parquet") or name.startswith((".", "_")):
            continue
        table = pq.read_table(path, filesystem=filesystem)
        if S.USER_ID not in table.column_names:
            continue
        hit = pc.fill_null(pc.is_in(table.column(S.USER_ID).cast(pa.string()), value_set=key_set), False)
        n = int(pc.sum(hit).as_py() or 0)
        if not n:
            continue
        tmp = f"{path.rsplit('/', 1)[0]}/.{name}.forget"
        with filesystem.open_output_stream(tmp) as out:
            pq.write_table(table.filter(pc.invert(hit)), out)
        filesystem.move(tmp, path)
        crc = f"{path.rsplit('/', 1)[0]}/.{name}.crc"  # Hadoop's checksum of the old file: stale now
        if filesystem.get_file_info(crc).type == pafs.FileType.File:
            filesystem.delete_file(crc)
        removed, files = removed + n, files + 1
    log.info("staging: deleted %d row(s) from %d exported training file(s) under %s", removed, files, root)
    return removed


@contextmanager
def _scoped_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Set session confs for this block only, then put the previous values (or none) back."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def vacuum_tables(spark: SparkSession, cfg: AppConfig, retention_hours: float = DEFAULT_RETENTION_HOURS
                  ) -> list[str]:
    """VACUUM every existing lakehouse table: remove data files that no version within the last
    ``retention_hours`` needs. After this, time travel to older versions fails for the removed files.

    A retention below 168 hours is only safe when no other job writes to the lakehouse meanwhile (a running
    writer may still need files that look unreferenced); Delta's safety check is turned off for this call only,
    and so is the default listing parallelism (10000 tasks per stage) unless the session sets its own.
    """
    if retention_hours < 0:
        raise InputDataError(f"vacuum_tables: retention_hours must be >= 0, got {retention_hours}")
    done: list[str] = []
    settings: dict[str, str] = {}
    if retention_hours < DEFAULT_RETENTION_HOURS:
        log.warning("vacuum with a retention of %.1f h (< %.0f h): make sure no job writes to %s meanwhile",
                    retention_hours, DEFAULT_RETENTION_HOURS, cfg.storage.lakehouse)
        settings[_RETENTION_CHECK] = "false"  # else Delta refuses a retention below the table's (7 days)
    if spark.conf.get(_LISTING_PARALLELISM, None) is None:
        # VACUUM lists table folders in stages of this many tasks, 10000 by default: ~170 000 tasks and
        # minutes for even a tiny table on a small machine. A few tasks per core list a large table as fast.
        settings[_LISTING_PARALLELISM] = str(4 * max(1, spark.sparkContext.defaultParallelism))
    with _scoped_conf(spark, settings):
        for name in S.ALL_TABLES:
            path = cfg.storage.table_path(name)
            if not tables.is_delta_table(spark, path):
                log.info("%s: no table at %s (not vacuumed)", name, path)
                continue
            watch = Stopwatch()
            with tables.commit_lock(spark, path, what=name):  # VACUUM commits its start and end to the log
                DeltaTable.forPath(spark, path).vacuum(float(retention_hours))
            log.info("%s: vacuumed (retention %.1f h) in %.1fs", name, retention_hours, watch.elapsed())
            done.append(name)
    return done
