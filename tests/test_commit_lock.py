"""Commits to one Delta table from several processes on the local file system (issue 15, item 3).

Delta's log store commits a version on a Hadoop file system by checking that its file is missing and then
renaming a temporary file onto it; Hadoop's local rename replaces an existing file, so two processes can both
take the same version (seen once in the same-date race of test_reliability.py: a commit file and its checksum
from different runs). ``tables.commit_lock`` serialises the commits with an OS file lock beside the table.

The race is rare with Spark's own timing, so the first test widens the window between the check and the rename
in a plain folder: without a lock writers lose commits, with ``file_lock`` none. The slow test then runs several
real Spark writers (``write_partitions``, the path every job uses) against one table and checks that every
version in its log is one writer's whole commit.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adrec_spark.io import tables
from tests.conftest import ROOT

SCRIPT = ROOT / "tests" / "scripts" / "commit_race.py"


def _race(tmp: Path, mode: str, target: Path, *, writers: int, commits: int, extra: list[str],
          timeout_s: float) -> list[tuple[str, str]]:
    """Start ``writers`` processes of the race script at once; their stdout and stderr (fails the test if one
    fails).
    Their output goes to files: a writer blocked on a full pipe while it holds the lock would stall the rest."""
    ready = tmp / f"ready-{target.name}"
    ready.mkdir()
    logs = [(tmp / f"{target.name}-{w}.out", tmp / f"{target.name}-{w}.err") for w in range(writers)]
    procs = []
    for w, (out, err) in enumerate(logs):
        with out.open("wb") as o, err.open("wb") as e:
            procs.append(subprocess.Popen(
                [sys.executable, str(SCRIPT), mode, str(target), "--writer", str(w), "--commits", str(commits),
                 "--writers", str(writers), "--ready-dir", str(ready), *extra], stdout=o, stderr=e, cwd=tmp))
    deadline = time.monotonic() + timeout_s
    try:
        for w, p in enumerate(procs):
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, f"writer {w} exited {p.returncode}:\n{logs[w][1].read_text()[-3000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(out.read_text(), err.read_text(errors="replace")) for out, err in logs]


def _rename_race(tmp: Path, name: str, *, lock: bool) -> tuple[list[list[int]], dict[int, dict]]:
    folder = tmp / name
    folder.mkdir()
    outs = _race(tmp, "rename", folder, writers=3, commits=8, timeout_s=120,
                 extra=["--window", "0.02", *(["--lock"] if lock else [])])
    claimed = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    files = {int(p.stem): json.loads(p.read_text()) for p in folder.glob("*.json")}
    return claimed, files


def _lost(claimed: list[list[int]], files: dict[int, dict]) -> list[tuple[int, int]]:
    """(writer, version) of each commit a writer believes it made whose file holds another writer's commit."""
    return [(w, v) for w, versions in enumerate(claimed) for seq, v in enumerate(versions)
            if files[v] != {"writer": w, "seq": seq}]


def test_check_then_rename_loses_commits_without_a_lock_and_none_with_the_file_lock(tmp_path) -> None:
    claimed, files = _rename_race(tmp_path, "unlocked", lock=False)
    assert _lost(claimed, files), "the widened window did not make the unlocked writers collide"  # the race is real

    claimed, files = _rename_race(tmp_path, "locked", lock=True)
    assert _lost(claimed, files) == []
    assert sorted(files) == list(range(3 * 8))  # contiguous versions, one per commit
    assert sorted((f["writer"], f["seq"]) for f in files.values()) == [(w, s) for w in range(3) for s in range(8)]


def test_file_lock_excludes_another_thread_and_is_reentrant_in_its_own(tmp_path) -> None:
    lock = str(tmp_path / "sub" / "x.lock")
    events: list[str] = []

    def other() -> None:
        with tables.file_lock(lock):
            events.append("other")

    with tables.file_lock(lock):
        with tables.file_lock(lock):  # nested in the same thread: no self-deadlock
            events.append("nested")
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.3)
        events.append("released")
    t.join(timeout=10)
    assert events == ["nested", "released", "other"]


def test_commit_lock_is_taken_for_local_paths_and_file_uris_only(spark, tmp_path) -> None:
    plain = tmp_path / "lake" / "t"
    assert tables.local_table_dir(spark, str(plain)) == str(plain)
    assert tables.local_table_dir(spark, plain.as_uri()) == str(plain)  # file:///...
    assert tables.local_table_dir(spark, "file:" + str(plain)) == str(plain)
    assert tables.local_table_dir(spark, "s3a://bucket/lake/t") is None
    with tables.commit_lock(spark, "s3a://bucket/lake/t"):  # no lock, nothing touched, no S3 client needed
        pass
    with tables.commit_lock(spark, plain.as_uri()):
        assert (plain / tables.COMMIT_LOCK_FILE).is_file()
        with pytest.raises(BlockingIOError):  # another holder would wait
            import fcntl
            import os

            fd = os.open(plain / tables.COMMIT_LOCK_FILE, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)


def test_the_lock_file_lives_in_the_table_folder_and_delta_ignores_it(spark, cfg) -> None:
    """Written with the lock, read, vacuumed with no retention: the table is intact and the lock file stays."""
    df = spark.createDataFrame([("a", 1), ("b", 2)], "id string, p int")
    tables.write_partitions(df, cfg.storage, "t", partition_col="p", values=[1, 2])
    tables.write_partitions(df.where("p = 2"), cfg.storage, "t", partition_col="p", values=[2])
    folder = Path(cfg.storage.table_path("t"))
    assert (folder / tables.COMMIT_LOCK_FILE).is_file()
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        from delta.tables import DeltaTable

        DeltaTable.forPath(spark, str(folder)).vacuum(0.0)
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    assert (folder / tables.COMMIT_LOCK_FILE).is_file()
    assert sorted(tuple(r) for r in tables.read_table(spark, cfg.storage, "t").collect()) == [("a", 1), ("b", 2)]


# --- real Spark writers ---------------------------------------------------------------------------------------

WRITERS, COMMITS = 3, 4


def check_delta_log(table: Path, writers: int, commits: int) -> None:
    """Every version in the table's log is one writer's whole commit: versions 0..N-1 with no gap, each commit
    file parses, names one writer and sequence number in its userMetadata and touches only that writer's
    partition; the table state it leads to (files and bytes replayed from the log) is what the version's
    checksum file says; and every writer's commits are all there, once each."""
    log = table / "_delta_log"
    versions = sorted(int(p.stem) for p in log.glob("*.json"))
    assert versions == list(range(writers * commits)), versions
    live: dict[str, int] = {}
    seen: list[tuple[int, int]] = []
    for v in versions:
        actions = [json.loads(line) for line in (log / f"{v:020d}.json").read_text().splitlines() if line.strip()]
        infos = [a["commitInfo"] for a in actions if "commitInfo" in a]
        assert len(infos) == 1, f"version {v}: {len(infos)} commitInfo actions"
        m = re.fullmatch(r"writer (\d+) seq (\d+)", infos[0].get("userMetadata", ""))
        assert m, f"version {v}: userMetadata {infos[0].get('userMetadata')!r}"
        writer, seq = int(m[1]), int(m[2])
        seen.append((writer, seq))
        adds = [a["add"] for a in actions if "add" in a]
        removes = [a["remove"] for a in actions if "remove" in a]
        assert adds, f"version {v}: no files added"
        assert all(f["partitionValues"] == {"writer": str(writer)} for f in adds + removes), f"version {v}"
        for f in removes:
            assert f["path"] in live, f"version {v} removes {f['path']}, which no earlier version added"
            del live[f["path"]]
        live.update({f["path"]: int(f["size"]) for f in adds})
        crc = log / f"{v:020d}.crc"
        if crc.is_file():
            state = json.loads(crc.read_text())
            assert (state["numFiles"], state["tableSizeBytes"]) == (len(live), sum(live.values())), f"version {v}"
            if "txnId" in state and "txnId" in infos[0]:
                assert state["txnId"] == infos[0]["txnId"], f"version {v}: checksum of another commit"
    assert sorted(seen) == [(w, s) for w in range(writers) for s in range(commits)]


@pytest.mark.slow
def test_spark_writers_in_several_processes_each_commit_whole_versions(spark, tmp_path) -> None:
    """WRITERS processes, each its own Spark driver, replace their own partition of one table COMMITS times at
    once through ``write_partitions``: the log has every commit, each whole, and the table each writer's last
    rows. The writers' logs show they did wait for each other's commits (not vacuous)."""
    table = tmp_path / "lake" / "race"
    outs = _race(tmp_path, "spark", table, writers=WRITERS, commits=COMMITS, timeout_s=600,
                 extra=["--lock", "--jars", str(ROOT / ".jars")])
    check_delta_log(table, WRITERS, COMMITS)
    assert any("waiting for another writer's commit" in err for _, err in outs), "the writers never overlapped"
    assert spark.read.text(str(table / "_delta_log" / "*.json")).count() > 0  # Hadoop verifies each .crc
    rows = sorted(tuple(r) for r in spark.read.format("delta").load(str(table)).collect())
    assert rows == sorted((w, COMMITS - 1, i) for w in range(WRITERS) for i in range(3))
