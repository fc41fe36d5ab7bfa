"""The right to be forgotten, end to end: the real ETL writes the tables, forget_users erases two users from
every one of them, VACUUM removes them from old versions. Expected rows come from Python (json, hashlib)."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from adrec_spark import cli, privacy
from adrec_spark import schema as S
from adrec_spark.config import PrivacyConfig
from adrec_spark.errors import ConfigError, InputDataError
from adrec_spark.etl.pipeline import run_etl
from adrec_spark.io import erasure
from adrec_spark.samples.generator import GeneratorSpec, generate
from adrec_spark.training.pipeline import export_splits, split_training_data
from tests.conftest import make_config
from tests.leaks import files_holding

START = dt.date(2024, 1, 1)
DAY2 = START + dt.timedelta(days=1)
SALT_ENV = "ADREC_TEST_PRIVACY_SALT"
SALT = "test-salt-0123456789-abcdef"
VICTIMS = ("u1", "u2")
USER_TABLES = (S.EVENTS_CLEAN, S.USER_PROFILES, S.TRAINING_EXAMPLES, S.USER_AD_SCORES, S.RECOMMENDATIONS)
UNTOUCHED = (S.ADS, S.ETL_RUNS)
SCORES_SCHEMA = "score_date date, user_id string, ad_id string, score double, model_name string, model_version string"
RECS_SCHEMA = ("score_date date, user_id string, rank int, ad_id string, score double, reason string, "
               "strategy string, model_name string, model_version string")

# Rejected raw lines that name a victim (in valid JSON, in broken JSON, JSON-escaped) and some that only
# look alike (u10 is not u1; an unquoted mention is not an id).
EXTRA_LINES = [
    '{"event_id": "victim-truncated", "user_id": "u1", "ad_',
    '{"event_id": "victim-hover", "user_id": "u2", "event_type": "hover", "event_time": "2024-01-02T10:00:00Z"}',
    '{"event_id": "victim-escaped", "user_id": "\\u0075\\u0031", "event_type": "hover", '
    '"event_time": "2024-01-02T10:00:00Z"}',
    'not json at all, but it names "u2" in quotes',
    '{"event_id": "other-hover", "user_id": "u10", "event_type": "hover", "event_time": "2024-01-02T10:00:00Z", '
    '"text": "ask u1 and u2 about it"}',
    '{"event_id": "other-adid", "user_id": "u12", "ad_id": "u1x", "event_type": "hover", '
    '"event_time": "2024-01-02T10:00:00Z"}',
    '["u11", "a list is malformed"]',
]


def sha_pseudonym(uid: str, salt: str = SALT) -> str:
    return hashlib.sha256(f"{salt}:{uid}".encode()).hexdigest()


def mentions(payload: str | None, ids: tuple[str, ...]) -> bool:
    """The reference for what must leave events_rejected: JSON user_id, or the quoted id anywhere."""
    if payload is None:
        return False
    try:
        record = json.loads(payload)
    except ValueError:
        record = None
    uid = record.get("user_id") if isinstance(record, dict) else None
    return uid in ids or any(f'"{i}"' in payload for i in ids)


def _rows_json(df) -> list[str]:
    # to_json leaves out null fields: rows compare as dicts without them
    return [r[0] for r in df.select(F.to_json(F.struct(*df.columns))).collect()]


def _snapshot(spark, cfg, version: dict[str, int] | None = None) -> dict[str, list[dict]]:
    out = {}
    for table in S.ALL_TABLES:
        path = cfg.storage.table_path(table)
        if not Path(path, "_delta_log").is_dir():
            continue
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version[table])
        out[table] = [json.loads(j) for j in _rows_json(reader.load(path))]
    return out


def _belongs_to_victim(table: str, row: dict) -> bool:
    if table == S.EVENTS_REJECTED:
        return mentions(row.get(S.PAYLOAD), VICTIMS)
    if S.USER_ID in row:
        return row[S.USER_ID] in VICTIMS or row[S.USER_ID] in {sha_pseudonym(v) for v in VICTIMS}
    return False


def _multiset(rows: list[dict]) -> Counter:
    return Counter(json.dumps(r, sort_keys=True) for r in rows)


def _write_outputs(spark, cfg) -> None:
    """Scores and recommendations as the scoring job writes them: plain ids on one date, pseudonyms on the
    next (pseudonymized with hashlib, independently of the code under test)."""
    users = [f"u{i}" for i in range(15)]
    scores, recs = [], []
    for day, ids in ((START, users), (DAY2, [sha_pseudonym(u) for u in users])):
        for uid in ids:
            for k in range(3):
                scores.append((day, uid, f"ad{k:05d}", 0.9 - 0.1 * k, "adrec-relevance", "3"))
                recs.append((day, uid, k + 1, f"ad{k:05d}", 0.9 - 0.1 * k, "similar clicks", "cascade",
                             "adrec-relevance", "3"))
    for table, rows, schema in ((S.USER_AD_SCORES, scores, SCORES_SCHEMA), (S.RECOMMENDATIONS, recs, RECS_SCHEMA)):
        (spark.createDataFrame(rows, schema).write.format("delta").partitionBy(S.SCORE_DATE)
         .save(cfg.storage.table_path(table)))


def _versions(spark, cfg) -> dict[str, int]:
    from delta.tables import DeltaTable

    return {t: int(DeltaTable.forPath(spark, cfg.storage.table_path(t)).history(1).first()["version"])
            for t in _snapshot_tables(cfg)}


def _snapshot_tables(cfg) -> list[str]:
    return [t for t in S.ALL_TABLES if Path(cfg.storage.table_path(t), "_delta_log").is_dir()]


@pytest.fixture(scope="module")
def forgotten(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("privacy")
    cfg = make_config(tmp, "privacy.pseudonymize_user_ids=true", f"privacy.salt_env={SALT_ENV}")
    generate(GeneratorSpec(n_users=15, n_ads=12, n_events=300, n_days=2, start=START, seed=3), tmp / "raw")
    day2 = tmp / "raw" / "events" / f"date={DAY2.isoformat()}" / "events-0.jsonl"
    day2.write_text(day2.read_text() + "".join(line + "\n" for line in EXTRA_LINES))
    run_etl(spark, cfg, START, DAY2)
    # what a training run killed after its export leaves in storage.staging
    examples = spark.read.format("delta").load(cfg.storage.table_path(S.TRAINING_EXAMPLES))
    examples, _ = split_training_data(examples, cfg.train.split, window_days=None)
    export_splits(examples, f"{cfg.storage.staging}/training/killed-run", partitions=2)
    _write_outputs(spark, cfg)
    versions = _versions(spark, cfg)
    before = _snapshot(spark, cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SALT_ENV, SALT)
        deleted = erasure.forget_users(spark, cfg, list(VICTIMS))
    after = _snapshot(spark, cfg)
    return cfg, versions, before, deleted, after


def test_tables_under_test_hold_victim_rows(forgotten) -> None:
    """Guards the other tests against passing vacuously."""
    _, _, before, _, _ = forgotten
    assert set(before) == {*USER_TABLES, S.EVENTS_REJECTED, *UNTOUCHED}
    for table in (*USER_TABLES, S.EVENTS_REJECTED):
        assert any(_belongs_to_victim(table, r) for r in before[table]), table
    pseudo = {sha_pseudonym(v) for v in VICTIMS}
    assert sum(r[S.USER_ID] in pseudo for r in before[S.RECOMMENDATIONS]) == 6
    assert {r[S.PAYLOAD] for r in before[S.EVENTS_REJECTED]} >= set(EXTRA_LINES)


def test_forget_reports_rows_deleted_per_table(forgotten) -> None:
    _, _, before, deleted, _ = forgotten
    expected = {t: sum(_belongs_to_victim(t, r) for r in before[t]) for t in (*USER_TABLES, S.EVENTS_REJECTED)}
    assert deleted == expected
    # generated: u1 has 3 bad rows a day (bad type, unknown ad, future) + 3 extra lines name u1 or u2
    assert deleted[S.EVENTS_REJECTED] == 2 * 3 + 4
    assert deleted[S.USER_AD_SCORES] == deleted[S.RECOMMENDATIONS] == 2 * 2 * 3


def test_victims_are_gone_from_the_current_version(forgotten) -> None:
    _, _, _, _, after = forgotten
    pseudo = {sha_pseudonym(v) for v in VICTIMS}
    for table, rows in after.items():
        text = [json.dumps(r) for r in rows]
        assert not any(_belongs_to_victim(table, r) for r in rows), table
        assert not any(f'"{v}"' in t for t in text for v in (*VICTIMS, *pseudo)), table


def test_training_splits_left_in_staging_lose_the_victims_rows(forgotten) -> None:
    """A killed training run leaves user ids and history text in storage.staging: forget-users removes the
    victims' rows there too, and keeps everyone else's."""
    cfg, _, before, _, _ = forgotten
    keys = set(VICTIMS) | {sha_pseudonym(v) for v in VICTIMS}
    examples = before[S.TRAINING_EXAMPLES]
    others = [r for r in examples if r[S.USER_ID] not in keys]
    texts = {r.get(S.HISTORY_TEXT) for r in examples if r[S.USER_ID] in keys} - \
        {r.get(S.HISTORY_TEXT) for r in others} - {None, ""}
    assert texts and len(others) < len(examples)  # the victims had rows and a history of their own
    staging = Path(cfg.storage.staging)
    assert files_holding(staging, keys, texts) == []
    staged = pq.read_table(staging / "training" / "killed-run")
    assert staged.num_rows == len(others)
    assert Counter(staged.column(S.USER_ID).to_pylist()) == Counter(r[S.USER_ID] for r in others)


def test_everyone_else_is_untouched(forgotten) -> None:
    _, _, before, deleted, after = forgotten
    for table in before:
        kept = [r for r in before[table] if not _belongs_to_victim(table, r)]
        assert len(after[table]) == len(before[table]) - deleted.get(table, 0), table
        assert _multiset(after[table]) == _multiset(kept), table
    assert {r[S.PAYLOAD] for r in after[S.EVENTS_REJECTED]} >= set(EXTRA_LINES[4:])
    assert {r[S.USER_ID] for r in after[S.EVENTS_CLEAN]} >= {"u10", "u11", "u12"}


def test_vacuum_removes_the_deleted_rows_from_old_versions(spark, forgotten) -> None:
    cfg, versions, _, _, _ = forgotten
    old = _snapshot(spark, cfg, versions)  # time travel still shows the victims before VACUUM
    assert any(r[S.USER_ID] in VICTIMS for r in old[S.EVENTS_CLEAN])
    removed = {}
    for table in (*USER_TABLES, S.EVENTS_REJECTED):
        path = Path(cfg.storage.table_path(table))
        commit = path / "_delta_log" / f"{versions[table] + 1:020d}.json"
        actions = [json.loads(line) for line in commit.read_text().splitlines()]
        removed[table] = [path / unquote(a["remove"]["path"]) for a in actions if "remove" in a]
        assert removed[table] and all(f.is_file() for f in removed[table]), table

    key = "spark.databricks.delta.retentionDurationCheck.enabled"
    spark.conf.set(key, "true")
    try:
        vacuumed = erasure.vacuum_tables(spark, cfg, retention_hours=0)
        assert spark.conf.get(key) == "true"  # the check is back on after the call
    finally:
        spark.conf.unset(key)
    assert spark.conf.get("spark.sql.sources.parallelPartitionDiscovery.parallelism", None) is None
    assert vacuumed == [t for t in S.ALL_TABLES if t in old]
    for table, files in removed.items():
        assert not any(f.exists() for f in files), table
    with pytest.raises(Exception, match=r"FILE_NOT_EXIST|FileNotFound|does not exist"):
        spark.read.format("delta").option("versionAsOf", versions[S.EVENTS_CLEAN]) \
            .load(cfg.storage.table_path(S.EVENTS_CLEAN)).collect()
    # the current versions are intact
    current = _snapshot(spark, cfg)
    assert {t: _multiset(rows) for t, rows in current.items()} == \
        {t: _multiset(rows) for t, rows in forgotten[4].items()}


def _live_deletion_vectors(path: str) -> int:
    """Files of the current version that carry a deletion vector, from the JSON commit log."""
    live: dict[str, bool] = {}
    for commit in sorted(Path(path, "_delta_log").glob("*.json")):
        for action in map(json.loads, commit.read_text().splitlines()):
            if "add" in action:
                live[action["add"]["path"]] = bool(action["add"].get("deletionVector"))
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    return sum(live.values())


def test_without_a_salt_pseudonymous_rows_cannot_be_matched(spark, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)
    cfg = make_config(tmp_path, f"privacy.salt_env={SALT_ENV}")
    rows = [(START, "u1", "ad1", 0.5, "m", "1"), (START, sha_pseudonym("u1"), "ad1", 0.5, "m", "1"),
            (START, "u3", "ad1", 0.5, "m", "1"), (START, "u1", "ad2", 0.4, "m", "1")]
    path = cfg.storage.table_path(S.USER_AD_SCORES)
    # one file with deletion vectors on: the delete masks rows in it, the purge must rewrite it
    (spark.createDataFrame(rows, SCORES_SCHEMA).coalesce(1).write.format("delta")
     .option("delta.enableDeletionVectors", "true").save(path))
    with caplog.at_level("INFO", logger="adrec_spark.io.erasure"):
        deleted = erasure.forget_users(spark, cfg, ["u1"])
    assert deleted == {S.USER_AD_SCORES: 2}
    assert "no pseudonym salt" in caplog.text and "events_clean: no table at" in caplog.text
    assert "user_ad_scores: purging deletion vectors" in caplog.text
    assert _live_deletion_vectors(path) == 0
    left = sorted(r[0] for r in spark.read.format("delta").load(path).select(S.USER_ID).collect())
    assert left == sorted([sha_pseudonym("u1"), "u3"])
    # a second run finds nothing more
    assert erasure.forget_users(spark, cfg, ["u1", "nobody"]) == {S.USER_AD_SCORES: 0}


def test_payloads_mentioning_finds_ids_in_json_and_in_quotes(spark) -> None:
    ids = ["u1", "jöse", 'say "hi"', "a\\b", "7"]
    cases = [  # (payload, names one of the ids), by hand
        ('{"user_id": "u1", "event_id": "e"}', True),
        ('{"user_id":"u10"}', False),
        ("u1 without quotes", False),
        ('"u1"', True),
        ('{"a": "x"u1"', True),  # the quoted id straddles another string's closing quote
        ('{"user_id": "jöse"}', True),
        ('{"user_id": "j\\u00f6se"}', True),  # JSON escape, decoded by get_json_object
        ('{"text": "j\\u00f6se", "ad_', True),  # broken JSON: the escaped quoted form
        ('{"user_id": "say \\"hi\\""}', True),
        ('{"user_id": "say \\"hi\\"", "ad_', True),  # broken JSON, an id with quotes: substring join
        ('{"user_id": "say \\"hi', False),  # cut inside the id: no longer there
        ('{"user_id": "say hi"}', False),
        ('{"user_id": "a\\\\b", "ad_', True),
        ('{"user_id": "a\\\\bc"}', False),
        ('{"user_id": 7}', True),  # a JSON number id reads as "7" in the ETL
        ('{"user_id": 70}', False),
        ("", False),
        (None, False),
        ('{"user_id": "U1"}', False),
        ('{"nested": {"user_id": "u1x"}, "other": "u1 "}', False),
    ]
    rejected = spark.createDataFrame([(p,) for p, _ in cases], "payload string")
    got = {r[0] for r in erasure.payloads_mentioning(rejected, ids).collect()}
    assert got == {p for p, named in cases if named}


def test_forget_users_command(spark, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(SALT_ENV, SALT)
    cfg = make_config(tmp_path, "privacy.pseudonymize_user_ids=true", f"privacy.salt_env={SALT_ENV}")
    rows = [(START, u, "ad1", 0.5, "m", "1") for u in ("u1", sha_pseudonym("u2"), "u3", "u4")]
    path = cfg.storage.table_path(S.USER_AD_SCORES)
    spark.createDataFrame(rows, SCORES_SCHEMA).write.format("delta").save(path)
    ids = tmp_path / "ids.txt"
    ids.write_text("u2\n\n  \nu4\n")
    parser = argparse.ArgumentParser()
    cli.add_forget_arguments(parser)
    args = parser.parse_args(["--users", "u1, ,u2", "--users-file", str(ids), "--vacuum", "--retention-hours", "0"])
    assert (args.users_file, args.vacuum, args.retention_hours) == (str(ids), True, 0.0)
    sessions = []
    monkeypatch.setattr("adrec_spark.session.build_spark",
                        lambda cfg, app_name=None: sessions.append(app_name) or spark)
    assert cli.cmd_forget_users(args, cfg) == 0
    assert sessions == ["adrec-forget-users"]
    assert capsys.readouterr().out.splitlines() == [
        "user_ad_scores: deleted 3 row(s)", "user_ad_scores: vacuumed (retention 0 h)"]
    assert [r[0] for r in spark.read.format("delta").load(path).select(S.USER_ID).collect()] == ["u3"]
    defaults = parser.parse_args(["--users", "u1"])
    assert (defaults.users_file, defaults.vacuum, defaults.retention_hours) == (None, False, 168.0)


def test_read_user_ids(tmp_path) -> None:
    f = tmp_path / "ids.txt"
    f.write_text("\ufeffu7\n\nu8 \n u7\n", encoding="utf-8")
    assert cli.read_user_ids("u1,u2, u1", str(f)) == ["u1", "u2", "u7", "u8"]
    assert cli.read_user_ids(None, str(f)) == ["u7", "u8"]
    with pytest.raises(InputDataError, match="no user ids given"):
        cli.read_user_ids(" , ", None)
    with pytest.raises(InputDataError, match="no such file"):
        cli.read_user_ids(None, str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("ids, match", [([], "no user ids"), (["", "  "], "no user ids"),
                                        ("u1", "not a single string"), (["u1", 7], "#1 is a int")])
def test_forget_users_rejects_bad_id_lists_before_any_work(tmp_path, ids, match) -> None:
    with pytest.raises(InputDataError, match=match):
        erasure.forget_users(None, make_config(tmp_path), ids)  # type: ignore[arg-type]


def test_pseudonymize_matches_hashlib(spark) -> None:
    ids = ["u1", "", "jöse 🙂", "a:b", None]
    df = spark.createDataFrame([(i,) for i in ids], "uid string")
    got = [r[0] for r in df.select(privacy.pseudonymize(F.col("uid"), SALT)).collect()]
    assert got == [sha_pseudonym(i) if i is not None else None for i in ids]
    assert got[0] == hashlib.sha256(b"test-salt-0123456789-abcdef:u1").hexdigest()
    with pytest.raises(ValueError, match="salt"):
        privacy.pseudonymize(F.col("uid"), "")


def test_pseudonym_salt(monkeypatch) -> None:
    on = PrivacyConfig(pseudonymize_user_ids=True, salt_env=SALT_ENV)
    off = PrivacyConfig(pseudonymize_user_ids=False, salt_env=SALT_ENV)
    monkeypatch.delenv(SALT_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"environment variable {SALT_ENV} is not set"):
        privacy.pseudonym_salt(on)
    assert privacy.pseudonym_salt(off) is None
    monkeypatch.setenv(SALT_ENV, "x" * 15)
    with pytest.raises(ConfigError, match="has 15 characters; it must have at least 16"):
        privacy.pseudonym_salt(on)
    monkeypatch.setenv(SALT_ENV, "")
    with pytest.raises(ConfigError, match="at least 16"):
        privacy.pseudonym_salt(on)
    assert privacy.pseudonym_salt(off) is None
    monkeypatch.setenv(SALT_ENV, "y" * 16)
    assert privacy.pseudonym_salt(on) == privacy.pseudonym_salt(off) == "y" * 16
    assert os.environ[SALT_ENV] == "y" * 16
