"""What the nightly scoring job guarantees when things go wrong (issue "Reliability at scale").

* a task that fails is retried by Spark and the output still has every row exactly once;
* an error after the scores are committed (the re-rank failing) puts them back: both tables keep the
  previous run's rows;
* a job killed (SIGKILL, the whole process tree) while it writes leaves the previous table version intact,
  and a rerun completes it;
* two jobs at once, for different dates (also while the tables do not exist yet) or for the same date, end
  with one consistent result;
* the Python worker that runs the model keeps a bounded footprint however many rows its partition has.

One module fixture prepares a small lakehouse (generated logs, ETL for two dates, a tiny BERT trained and
registered) and scores both dates in this process: the reference every faulty run is compared with. Each
job under test runs as ``jobs/score.py`` in a subprocess (its own JVM, like a cluster job) on a copy of that
lakehouse, with the fault injection hooks in ``score.chaos``. That a run really met the fault (tasks lost and
retried, files written before the kill, a writer waiting for the other's commit) is checked from its logs and
files, so no test can pass without the failure it is about. Reruns of a date leaving identical tables are covered by
``test_jobs.py`` (scoring) and ``test_etl_pipeline.py`` (ETL), and again here after a kill.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import AppConfig, replace
from adrec_spark.etl.pipeline import run_etl
from adrec_spark.samples.generator import GeneratorSpec, generate
from adrec_spark.scoring.pipeline import run_scoring
from adrec_spark.training.pipeline import run_training
from tests.conftest import ROOT, make_config
from tests.tiny_bert import make_tiny_bert

pytestmark = pytest.mark.slow

START = dt.date(2024, 1, 1)
D1 = START + dt.timedelta(days=1)
D2 = START + dt.timedelta(days=2)
JOB_TIMEOUT_S = 600

TINY = ["model.max_length=64", "train.epochs=1", "train.batch_size=16", "train.eval_batch_size=64",
        "train.max_steps=3", "train.precision=fp32", "train.max_eval_rows=100", "train.zero_shot_baseline=false",
        "score.retrieval_top_n=6", "score.prior_top_n=3", "score.top_k=4", "score.batch_size=32",
        "score.popular_pool=8", "score.precision=fp32",
        # faulty runs on a copy without earlier scores are compared with the reference runs: both full
        # (an incremental night equals a full one to float rounding only: tests/test_incremental.py)
        "score.mode=full",
        # for the subprocess jobs (this process's tests share the conftest session); a one-minute JVM spends
        # more CPU in the C2 JIT compiler than it saves, which matters on a 2-core CI machine
        "spark.shuffle_partitions=2", "spark.driver_memory=1g",
        "spark.conf={'spark.ui.enabled': 'false', "
        "'spark.driver.extraJavaOptions': '-XX:TieredStopAtLevel=1 -XX:+UseSerialGC'}"]
# A wide window for kills and races: small Arrow batches and a pause before each batch is scored.
SLOW_WRITES = ["spark.arrow_max_records_per_batch=16", "score.chaos.sleep_seconds_per_batch=1"]
SCORE_KEY = [S.USER_ID, S.AD_ID]
RECS_KEY = [S.USER_ID, S.RANK]


@dataclass
class Lake:
    tmp: Path
    cfg: AppConfig
    conf_file: Path  # cfg as YAML, for the subprocess jobs
    prepared: Path  # lakehouse after ETL (profiles for D1 and D2) and training, before any scoring
    scored: Path  # the same, then scored for D1 and D2 in this process
    reference: dict[tuple[str, dt.date], pd.DataFrame]

    def copy(self, source: Path, name: str) -> Path:
        dest = self.tmp / name
        shutil.copytree(source, dest)
        return dest

    def cfg_for(self, lakehouse: Path) -> AppConfig:
        return replace(self.cfg, f"storage.lakehouse={lakehouse}", f"storage.staging={lakehouse / '_staging'}")


def _rows(spark, lakehouse: Path, table: str, day: dt.date | None = None) -> pd.DataFrame:
    df = spark.read.format("delta").load(str(lakehouse / table))
    if day is not None:
        df = df.where(F.col(S.SCORE_DATE) == F.lit(day.isoformat()).cast("date"))
    key = [S.SCORE_DATE, *(SCORE_KEY if table == S.USER_AD_SCORES else RECS_KEY)]
    return df.toPandas().sort_values(key).reset_index(drop=True)


def _assert_same_rows(got: pd.DataFrame, want: pd.DataFrame, table: str) -> None:
    """The same rows, each exactly once (a duplicate or a missing row fails), scores equal to 1e-6."""
    key = [S.SCORE_DATE, *(SCORE_KEY if table == S.USER_AD_SCORES else RECS_KEY)]
    assert not got.duplicated(key).any(), f"{table}: duplicate rows"
    assert len(got) == len(want) > 0, f"{table}: {len(got)} rows, expected {len(want)}"
    other = [c for c in want.columns if c != S.SCORE]
    pd.testing.assert_frame_equal(got[other], want[other], check_dtype=False)
    np.testing.assert_allclose(got[S.SCORE].to_numpy(), want[S.SCORE].to_numpy(), atol=1e-6)


def _assert_matches_reference(spark, lake: Lake, lakehouse: Path, day: dt.date) -> None:
    for table in (S.USER_AD_SCORES, S.RECOMMENDATIONS):
        _assert_same_rows(_rows(spark, lakehouse, table, day), lake.reference[table, day], table)


def _commits(lakehouse: Path, table: str) -> list[int]:
    """The versions in the table's Delta log (commit files), oldest first; [] when there is no table."""
    log = lakehouse / table / "_delta_log"
    return sorted(int(p.stem) for p in log.glob("*.json")) if log.is_dir() else []


def _data_files(lakehouse: Path, table: str) -> set[str]:
    root = lakehouse / table
    return {str(p.relative_to(root)) for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}


def _committed_files(spark, lakehouse: Path, table: str) -> set[str]:
    """The data files the table's latest version references, relative to the table folder."""
    root = (lakehouse / table).resolve()
    files = spark.read.format("delta").load(str(root)).inputFiles()
    return {str(Path(unquote(urlparse(f).path)).relative_to(root)) for f in files}


# --- running jobs as subprocesses ------------------------------------------------------------------------------


@dataclass
class Job:
    proc: subprocess.Popen
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_scoring(lake: Lake, lakehouse: Path, day: dt.date, *overrides: str, name: str) -> Job:
    """``jobs/score.py`` for ``day`` on ``lakehouse`` in a new process group (so a kill takes the driver, its
    JVM and the Python workers together, as when a machine is lost)."""
    log = lake.tmp / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if k != "ADREC_CONF"}
    env.update(PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "jobs" / "score.py"), "--conf", str(lake.conf_file), "--date", day.isoformat(),
           "--set", f"storage.lakehouse={lakehouse}", "--set", f"storage.staging={lakehouse / '_staging'}",
           *[a for o in overrides for a in ("--set", o)]]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=lake.tmp, env=env,
                                start_new_session=True)
    return Job(proc, log)


def kill_tree(job: Job) -> None:
    """SIGKILL the job's whole process group and wait until none of it is left."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(job.proc.pid, signal.SIGKILL)
    job.proc.wait(timeout=30)
    wait_until_group_gone(job, "killed")


def wait_until_group_gone(job: Job, what: str, timeout_s: float = 30) -> None:
    """Wait until no process of the job's process group (its JVM, its Python workers) is left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter() if _pgid(p) == job.proc.pid]
        if not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes of the {what} job still running: {left}")


def _pgid(p: psutil.Process) -> int | None:
    """The process group of a live process (None for a zombie: dead, waiting for init to reap it)."""
    try:
        return None if p.status() == psutil.STATUS_ZOMBIE else os.getpgid(p.pid)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return None


def finish(job: Job) -> str:
    """Wait for the job; its output (fails the test, with the end of the log, if it failed)."""
    try:
        job.proc.wait(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(job)
        pytest.fail(f"{job.log.name} still running after {JOB_TIMEOUT_S}s:\n{job.output[-3000:]}")
    out = job.output
    assert job.proc.returncode == 0, f"{job.log.name} exited {job.proc.returncode}:\n{out[-5000:]}"
    return out


def lost_tasks(log: str) -> list[tuple[int, int, int, str]]:
    """(stage, partition, attempt, reason) of every task Spark's scheduler reports lost, from a job's log."""
    out = []
    chunks = re.split(r"(?m)^(?=\d\d/\d\d/\d\d \d\d:\d\d:\d\d |\d\d:\d\d:\d\d )", log)  # one log record each
    for chunk in chunks:
        m = re.search(r"WARN TaskSetManager: Lost task (\d+)\.(\d+) in stage (\d+)\.\d+", chunk)
        if m:
            fault = re.search(r"injected fault: partition \d+ attempt \d+", chunk)
            out.append((int(m[3]), int(m[1]), int(m[2]), fault[0] if fault else chunk[:300]))
    return out


def lock_waits(log: str) -> list[str]:
    """The tables whose commit lock a job waited for (another job was writing them), as logged."""
    return re.findall(r"(\w+): waiting for another writer's commit", log)


# --- the prepared lakehouse ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory) -> Lake:
    tmp = tmp_path_factory.mktemp("reliability")
    cfg = make_config(tmp, f"model.base_model={make_tiny_bert(tmp / 'tiny')}", *TINY)
    generate(GeneratorSpec(n_users=40, n_ads=30, n_events=1500, n_days=3, start=START, seed=3), tmp / "raw")
    run_etl(spark, cfg, START, D1)  # a backfill writes the profiles of its last date: D1
    run_etl(spark, cfg, D2)  # then the nightly run for D2
    profiles = spark.read.format("delta").load(cfg.storage.table_path(S.USER_PROFILES))
    assert {r[0] for r in profiles.select(S.DS).distinct().collect()} >= {D1, D2}
    assert run_training(spark, cfg).promoted
    lakehouse = Path(cfg.storage.lakehouse)
    prepared = tmp / "prepared"
    shutil.copytree(lakehouse, prepared)
    for day in (D1, D2):
        run_scoring(spark, cfg, day)
    reference = {(t, d): _rows(spark, lakehouse, t, d) for t in (S.USER_AD_SCORES, S.RECOMMENDATIONS)
                 for d in (D1, D2)}
    conf_file = tmp / "job.yaml"
    conf_file.write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict()))))
    return Lake(tmp=tmp, cfg=cfg, conf_file=conf_file, prepared=prepared, scored=lakehouse, reference=reference)


# --- 1. task failures ------------------------------------------------------------------------------------------


def test_failed_tasks_are_retried_and_every_row_is_written_once(spark, lake) -> None:
    """With a fault in the first attempt of every other partition of each UDF stage, ``local[2,4]`` (4 attempts
    per task) retries them and the job writes exactly the rows and scores of a run without faults."""
    lakehouse = lake.copy(lake.prepared, "chaos")
    job = start_scoring(lake, lakehouse, D2, "spark.master=local[2,4]",
                        "score.chaos.fail_first_attempt_every_n_partitions=2", name="chaos")
    log = finish(job)
    lost = lost_tasks(log)
    # not vacuous: tasks did fail, each only on its first attempt, and the scoring stage lost several
    assert lost, f"no task failed:\n{log[-3000:]}"
    assert all(reason == f"injected fault: partition {part} attempt 0" and attempt == 0 and part % 2 == 0
               for _, part, attempt, reason in lost), lost
    assert max(sum(1 for s, *_ in lost if s == stage) for stage, *_ in lost) >= 2, lost
    assert "aborting job" not in log
    _assert_matches_reference(spark, lake, lakehouse, D2)
    assert _commits(lakehouse, S.USER_AD_SCORES) == [0]  # one commit: no partial or repeated write


def test_without_task_retries_the_fault_fails_the_job_and_the_tables_stay(spark, lake) -> None:
    """The control for the test above (the shared session is ``local[2]``: one attempt per task): the
    injected fault does fail the job, and the failed job leaves the tables as they were."""
    lakehouse = lake.copy(lake.scored, "chaos-no-retries")
    before = {t: _commits(lakehouse, t) for t in (S.USER_AD_SCORES, S.RECOMMENDATIONS)}
    cfg = replace(lake.cfg_for(lakehouse), "score.chaos.fail_first_attempt_every_n_partitions=2")
    with pytest.raises(Exception, match="injected fault: partition 0 attempt 0"):
        run_scoring(spark, cfg, D2)
    assert {t: _commits(lakehouse, t) for t in before} == before
    for day in (D1, D2):
        _assert_matches_reference(spark, lake, lakehouse, day)


def test_an_error_after_the_scores_are_written_puts_them_back(spark, lake, monkeypatch) -> None:
    """Scores and recommendations are two Delta commits. When the re-rank fails after the scores are in,
    the job puts that date's scores back, so both tables hold the previous run's rows; where the scores table
    did not exist before, the date is left empty."""
    from delta.tables import DeltaTable

    def boom(*args, **kwargs):
        raise RuntimeError("injected: re-rank failed")

    monkeypatch.setattr("adrec_spark.scoring.pipeline.rerank", boom)
    lakehouse = lake.copy(lake.scored, "rerank-fails")
    before = _commits(lakehouse, S.USER_AD_SCORES)
    # `all` candidates: the failed run writes other rows than the stored (cascade) ones for D2
    cfg = replace(lake.cfg_for(lakehouse), "score.candidates=all")
    with pytest.raises(RuntimeError, match="injected: re-rank failed"):
        run_scoring(spark, cfg, D2)
    # not vacuous: the failed run committed its scores, then the restore
    assert _commits(lakehouse, S.USER_AD_SCORES) == [*before, before[-1] + 1, before[-1] + 2]
    history = (DeltaTable.forPath(spark, str(lakehouse / S.USER_AD_SCORES)).history(2)
               .orderBy("version").collect())
    assert f" scores {D2} [unit " in history[0]["userMetadata"]  # the job's commit, with its unit's token
    assert history[1]["userMetadata"].startswith(f"restore score_date IN ('{D2}')")
    assert spark.read.format("delta").option("versionAsOf", before[-1] + 1).load(
        str(lakehouse / S.USER_AD_SCORES)).where(F.col(S.SCORE_DATE) == F.lit(D2.isoformat()).cast("date")
                                                 ).count() > len(lake.reference[S.USER_AD_SCORES, D2])
    for day in (D1, D2):
        _assert_matches_reference(spark, lake, lakehouse, day)

    fresh = lake.copy(lake.prepared, "rerank-fails-first-run")
    with pytest.raises(RuntimeError, match="injected: re-rank failed"):
        run_scoring(spark, lake.cfg_for(fresh), D2)
    assert _commits(fresh, S.USER_AD_SCORES) == [0, 1] and not (fresh / S.RECOMMENDATIONS).exists()
    assert spark.read.format("delta").load(str(fresh / S.USER_AD_SCORES)).count() == 0


# --- 2. killed mid-write ---------------------------------------------------------------------------------------


def test_job_killed_mid_write_leaves_the_previous_version_and_a_rerun_completes(spark, lake) -> None:
    lakehouse = lake.copy(lake.scored, "killed")
    tables = (S.USER_AD_SCORES, S.RECOMMENDATIONS)
    commits = {t: _commits(lakehouse, t) for t in tables}
    files = {t: _data_files(lakehouse, t) for t in tables}
    job = start_scoring(lake, lakehouse, D2, *SLOW_WRITES, name="killed")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not _data_files(lakehouse, S.USER_AD_SCORES) - files[S.USER_AD_SCORES]:
        assert job.proc.poll() is None, f"the job ended before it wrote anything:\n{job.output[-3000:]}"
        assert time.monotonic() < deadline, "the job wrote no scores in time"
        time.sleep(0.1)
    assert job.proc.poll() is None
    kill_tree(job)  # the scoring tasks are writing their files: kill -9 the driver, the JVM and the workers

    # not vacuous: the killed job had written data files, which no commit references
    written = _data_files(lakehouse, S.USER_AD_SCORES) - files[S.USER_AD_SCORES]
    assert written and not written & _committed_files(spark, lakehouse, S.USER_AD_SCORES)
    assert "wrote user_ad_scores" not in job.output
    # the previous version is intact: no new commit, the same rows for both dates
    assert {t: _commits(lakehouse, t) for t in tables} == commits
    for day in (D1, D2):
        _assert_matches_reference(spark, lake, lakehouse, day)

    run_scoring(spark, lake.cfg_for(lakehouse), D2)  # the rerun
    for day in (D1, D2):
        _assert_matches_reference(spark, lake, lakehouse, day)  # the killed job's files are not read
    assert {t: _commits(lakehouse, t) for t in tables} == {t: [*commits[t], commits[t][-1] + 1] for t in tables}


@pytest.mark.parametrize("to", ["driver", "group"])
def test_job_stopped_by_sigterm_mid_write_exits_143_at_once_and_keeps_the_previous_version(spark, lake, to) -> None:
    """SIGTERM while the scoring tasks write, to the driver alone (``timeout``, Kubernetes' PID 1) or to its whole
    process group (Airflow's timeout, systemd: the JVM and the Python workers get it too): the job cancels the
    tasks, keeps the previous version, exits 143 with one line, and leaves no JVM or worker."""
    lakehouse = lake.copy(lake.scored, f"sigterm-{to}")
    tables = (S.USER_AD_SCORES, S.RECOMMENDATIONS)
    commits = {t: _commits(lakehouse, t) for t in tables}
    files = _data_files(lakehouse, S.USER_AD_SCORES)
    job = start_scoring(lake, lakehouse, D2, *SLOW_WRITES, name=f"sigterm-{to}")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not _data_files(lakehouse, S.USER_AD_SCORES) - files:
        assert job.proc.poll() is None, f"the job ended before it wrote anything:\n{job.output[-3000:]}"
        assert time.monotonic() < deadline, "the job wrote no scores in time"
        time.sleep(0.1)
    assert job.proc.poll() is None
    if to == "driver":
        job.proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(job.proc.pid, signal.SIGTERM)
    try:
        job.proc.wait(timeout=60)  # without the stop, the slowed tasks (1 s per 16 rows) run for minutes
    except subprocess.TimeoutExpired:
        kill_tree(job)
        pytest.fail(f"the job did not stop within 60 s of SIGTERM:\n{job.output[-3000:]}")
    out = job.output
    assert job.proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "SIGTERM: stopping the job" in out and "adrec score: stopped by SIGTERM" in out
    assert "Traceback" not in out, out[-3000:]
    assert "wrote user_ad_scores" not in out  # it was stopped mid-write, before its commit
    wait_until_group_gone(job, "stopped")  # the JVM and Python workers too
    assert {t: _commits(lakehouse, t) for t in tables} == commits
    for day in (D1, D2):
        _assert_matches_reference(spark, lake, lakehouse, day)


# --- 3. concurrent runs ----------------------------------------------------------------------------------------


def test_concurrent_runs_for_different_dates_both_create_and_fill_the_tables(spark, lake) -> None:
    """Two first runs, for D1 and D2 at once, on a lakehouse without score tables (nor a cached model): both
    race to create each table; on the local file system the later one waits for the table's commit lock (on an
    object store its commit would conflict and be retried); both dates end complete."""
    lakehouse = lake.copy(lake.prepared, "race-new")
    jobs = [start_scoring(lake, lakehouse, day, *SLOW_WRITES, name=f"race-new-{day}") for day in (D1, D2)]
    logs = [finish(job) for job in jobs]
    for day in (D1, D2):
        _assert_matches_reference(spark, lake, lakehouse, day)
    for table in (S.USER_AD_SCORES, S.RECOMMENDATIONS):
        dates = _rows(spark, lakehouse, table)[S.SCORE_DATE].unique()
        assert sorted(dates) == [D1, D2], table
    waited = [t for log in logs for t in lock_waits(log)]
    assert waited, "the two runs did not overlap: neither waited for the other's commit"  # not vacuous


def test_concurrent_runs_for_the_same_date_end_with_one_consistent_result(spark, lake) -> None:
    """Two reruns of D2 at once on existing tables: each replaces the date's partition in one commit (the later
    one after waiting for the other's commit lock); the date ends with exactly one run's rows, D1 untouched."""
    lakehouse = lake.copy(lake.scored, "race-same")
    tables = (S.USER_AD_SCORES, S.RECOMMENDATIONS)
    commits = {t: _commits(lakehouse, t) for t in tables}
    jobs = [start_scoring(lake, lakehouse, D2, *SLOW_WRITES, name=f"race-same-{i}") for i in (1, 2)]
    logs = [finish(job) for job in jobs]
    for day in (D1, D2):
        _assert_matches_reference(spark, lake, lakehouse, day)
    # each run committed each table once; the last commit replaced the other run's files for D2
    assert {t: _commits(lakehouse, t) for t in tables} == {t: [*commits[t], commits[t][-1] + 1,
                                                               commits[t][-1] + 2] for t in tables}
    waited = [t for log in logs for t in lock_waits(log)]
    assert waited, "the two runs did not overlap: neither waited for the other's commit"  # not vacuous


def test_a_long_scoring_run_logs_its_progress_against_the_planned_pairs(spark, lake) -> None:
    """Scoring a date with a pause per batch and a progress line every 0.5 s: the driver logs the distinct pairs
    scored of their count (identical model inputs are scored once), a rate and an ETA while it runs, then a
    closing line with every distinct pair."""
    lakehouse = lake.copy(lake.scored, "progress")
    log = finish(start_scoring(lake, lakehouse, D2, *SLOW_WRITES, "spark.progress_interval_s=0.5", name="progress"))
    pairs = len(lake.reference[S.USER_AD_SCORES, D2])
    n = int(re.search(rf"{pairs} pairs, (\d+) distinct model inputs scored", log).group(1))
    assert 0 < n <= pairs
    lines = [(int(d.replace(",", "")), int(t.replace(",", "")), rest)
             for d, t, rest in re.findall(r"scoring: ([\d,]+)/([\d,]+) distinct pairs \([\d.]+%\), (.*)", log)]
    assert any(0 < done < n and total == n and re.match(r"[\d.,]+ distinct pairs/s, ETA \w+, elapsed", rest)
               for done, total, rest in lines), log[-3000:]
    assert {total for done, total, _ in lines if done > 0} == {n}
    assert f"scoring: {n:,} distinct pairs in " in log


# --- 4. bounded memory -----------------------------------------------------------------------------------------

MEMORY_ROWS = 8192  # 16 Arrow batches of 512; then 4x: 32768 pairs in one partition
MEMORY_MARGIN = 10 * 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker memory from /proc")
def test_scoring_worker_memory_does_not_grow_with_partition_size(lake) -> None:
    """The worker's peak heap scoring a 32k-pair partition stays within 10 MiB of its peak for 8k pairs (the
    extra 24k pairs carry ~30 MB of text); a UDF that holds its partition (the control) grows by more than
    twice that margin on the same data, so the measurement does see a worker that keeps its rows."""
    model = next((lake.scored / "_staging" / "models").glob("*/spec.json")).parent
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "udf_memory.py"), str(model),
                          str(ROOT / ".jars"), "--rows", str(MEMORY_ROWS), "--batch", "512"],
                         capture_output=True, text=True, timeout=JOB_TIMEOUT_S, cwd=lake.tmp, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    # the set-up is what it claims: 512-row batches, one partition, one reused worker, sampled often
    assert m["arrow_conf"] == "512" and m["batch_sizes"] == {"512": MEMORY_ROWS}, m
    runs = [m[k] for k in ("warmup", "score_n", "score_4n", "hoard_n", "hoard_4n")]
    assert [r["partitions"] for r in runs] == [1] * 5 and len({tuple(r["workers"]) for r in runs}) == 1, m
    assert m["score_4n"]["rows"] == 4 * MEMORY_ROWS and min(r["samples"] for r in runs) >= 20, m
    growth = m["score_4n"]["peak"] - m["score_n"]["peak"]
    control = m["hoard_4n"]["peak"] - m["hoard_n"]["peak"]
    mib = {k: round(r["peak"] / 2**20, 1) for k, r in zip(("warmup", "score_n", "score_4n", "hoard_n", "hoard_4n"),
                                                           runs, strict=True)}
    assert growth < MEMORY_MARGIN, f"scoring 4x the rows raised the worker's peak by {growth / 2**20:.1f} MiB {mib}"
    assert control > 2 * MEMORY_MARGIN, f"the control grew only {control / 2**20:.1f} MiB {mib}"
