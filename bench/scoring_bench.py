"""Scoring throughput and the cascade, on one prepared world (generated logs for 300 users and a 1,000-ad
catalog, ETL, a fine-tuned MiniLM).

``python bench/run.py scoring [--users N] [--rounds R] [--cascade-users M] [--steady-factor F]
[--train-rows T] [--quality-rows Q] [--work DIR] [--out FILE]``; the defaults are the published run's sizes,
smaller ones give a quick check of the code path (its figures mean little).

Prints its tables and writes bench/results/scoring.json (or ``--out``):
  (1) an in-process PyTorch loop over the same pairs (our Scorer, length-sorted micro-batches) in fp32, bf16
      and int8; the faster of bf16 and int8 is "the fastest precision" below,
  (2) the Spark scoring job end to end (all candidates for the bench users: ETL tables in, Delta out),
  (3) ``mlflow.pyfunc.spark_udf`` on the same registered model and pairs, run like the job: the same precision,
      partitions, torch threads per worker and a Delta write,
(1)-(3) in fp32 and the fastest precision, ROUNDS times interleaved (the machine's speed drifts between
minutes); (2) again over STEADY_FACTOR times the users for its marginal rate; the precisions' quality against
fp32 on the test split; the cascade against scoring every pair. Every ratio is a
:func:`bench.fairness.comparison`: its JSON says what both sides held constant and what differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import ROOT, WORK, bench_config, run_python, save, table
from bench.fairness import comparison

W = WORK / "scoring"
WORLD = {"n_users": 300, "n_ads": 1000, "n_events": 40000, "n_days": 14, "seed": 0}
THROUGHPUT_USERS = 12  # x every eligible ad: ~10k pairs, the same pairs for every method
ROUNDS = 2  # the in-process loop, the job and spark_udf, in fp32 and the fastest precision, interleaved
STEADY_FACTOR = 3  # the fastest job again over 3x the users: its marginal rate and fixed seconds
CASCADE_USERS = 40
TRAIN_ROWS = 1500
QUALITY_ROWS = 2000
SCORE_DATE = "2024-01-14"
INPROC_THREADS = 2  # the in-process loop's torch threads: as many as the job's workers together (local[2])
BATCH = 64  # micro-batch of every method (the job's score.batch_size and the pyfunc's Scorer default)


@dataclass(frozen=True)
class Options:
    users: int = THROUGHPUT_USERS
    rounds: int = ROUNDS
    steady_factor: int = STEADY_FACTOR
    cascade_users: int = CASCADE_USERS
    train_rows: int = TRAIN_ROWS
    quality_rows: int = QUALITY_ROWS
    work: str = str(W)
    out: str = ""

    def command(self) -> str:
        """The command line that reproduces this run."""
        args = [f"--{k.replace('_', '-')} {v}" for k, v in asdict(self).items()
                if v != getattr(Options(), k) and v != ""]
        return " ".join(["python bench/run.py scoring", *args])


def parse_options(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="bench/run.py scoring", description=__doc__.split("\n\n")[0])
    for key, default in asdict(Options()).items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(default), default=default)
    o = Options(**vars(p.parse_args(argv)))
    if min(o.users, o.rounds, o.cascade_users, o.train_rows, o.quality_rows) < 1 or o.steady_factor < 2:
        p.error("sizes must be >= 1 and --steady-factor >= 2")
    return o

PREPARE = """
import datetime as dt, json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from bench.common import bench_config
from adrec_spark.logs import configure_logging
from adrec_spark.session import build_spark
from adrec_spark.samples.generator import GeneratorSpec, generate
from adrec_spark.etl.pipeline import run_etl
from adrec_spark.training.pipeline import run_training
configure_logging("INFO")
work = Path({work!r})
cfg = bench_config(work, *{overrides!r})
generate(GeneratorSpec(**{world!r}), work / "raw")
spark = build_spark(cfg)
run_etl(spark, cfg, dt.date(2024, 1, 1), dt.date(2024, 1, 14))
t = run_training(spark, cfg)
print(json.dumps({{"model_version": t.model_version, "test_auc": t.test_auc}}))
"""

# One Spark measurement per fresh JVM (and fresh Python workers).
SPARK_JOB = """
import datetime as dt, json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from bench.common import bench_config, spark_cores
from adrec_spark.logs import configure_logging
from adrec_spark.session import build_spark
from adrec_spark.scoring.pipeline import run_scoring
configure_logging("INFO")
cfg = bench_config(Path({work!r}), *{overrides!r})
spark = build_spark(cfg)
r = run_scoring(spark, cfg, dt.date.fromisoformat({date!r}))
cores = spark_cores(spark.sparkContext.master, spark.sparkContext.defaultParallelism)
# partitions: the job's scoring repartition (adrec_spark/scoring/pipeline.py, twice the parallelism)
parts = spark.sparkContext.defaultParallelism * 2
print(json.dumps({{"pairs": r.pairs_scored, "seconds": r.seconds, "stages": r.stage_seconds,
                  "users": r.users, "eligible_ads": r.eligible_ads, "inputs_scored": r.inputs_scored,
                  "pairs_saved": r.pairs_saved,
                  "settings": {{"cores": cores, "partitions": parts, "processes": cores,
                               "torch_threads": cfg.score.torch_threads, "batch_size": cfg.score.batch_size,
                               "output": "delta"}}}}))
"""

SPARK_UDF = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from bench.common import bench_config, spark_cores
from adrec_spark.session import build_spark
from adrec_spark import schema as S
import mlflow, mlflow.pyfunc
from pyspark.sql import functions as F
cfg = bench_config(Path({work!r}))
mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
spark = build_spark(cfg)
from adrec_spark.model.inference import Scorer
import inspect
pairs = spark.read.parquet({pairs!r})
n = pairs.count()
cores = spark_cores(spark.sparkContext.master, spark.sparkContext.defaultParallelism)
parts = spark.sparkContext.defaultParallelism * 2  # the job's scoring repartition
udf = mlflow.pyfunc.spark_udf(spark, "models:/" + cfg.mlflow.model_name + "@champion")
t0 = time.perf_counter()
# Like the job: the same partitions (its repartition), torch threads per worker (ADREC_PYFUNC_THREADS, set by
# the bench), precision (ADREC_PYFUNC_PRECISION) and a Delta write.
(pairs.repartition(parts).withColumn(S.SCORE, udf(*[F.col(c) for c in S.MODEL_INPUT_COLUMNS]))
 .select(S.USER_ID, S.AD_ID, S.SCORE).write.format("delta").mode("overwrite").save({out!r}))
print(json.dumps({{"pairs": n, "seconds": time.perf_counter() - t0,
                  "settings": {{"cores": cores, "partitions": parts, "processes": cores,
                               "torch_threads": int(os.environ["ADREC_PYFUNC_THREADS"]),
                               "precision": os.environ["ADREC_PYFUNC_PRECISION"],
                               "batch_size": inspect.signature(Scorer).parameters["batch_size"].default,
                               "output": "delta"}}}}))
"""


def _cfg(*overrides: str):
    return bench_config(W, *overrides)


def train_overrides(train_rows: int = TRAIN_ROWS) -> tuple[str, ...]:
    return ("model.max_length=128", "train.epochs=1", "train.batch_size=16", f"train.max_train_rows={train_rows}",
            f"train.max_eval_rows={min(1000, train_rows)}", "train.log_every_steps=50")


def prepare(train_rows: int = TRAIN_ROWS) -> dict[str, object]:
    marker = W / "prepared.json"
    overrides = train_overrides(train_rows)
    if marker.is_file():
        res = json.loads(marker.read_text())
        if res.get("world") == WORLD and res.get("train") == list(overrides):
            return res
    shutil.rmtree(W, ignore_errors=True)
    W.mkdir(parents=True)
    print(f"preparing: generate {WORLD}, ETL, fine-tune MiniLM on {train_rows:,} examples ...", flush=True)
    res = run_python(PREPARE.format(root=str(ROOT), work=str(W), overrides=overrides, world=WORLD))
    res.update(world=WORLD, train=list(overrides))
    marker.write_text(json.dumps(res))
    return res


def _bench_lakehouse(name: str, n_users: int) -> Path:
    """A copy of the lakehouse (no scores yet) whose profiles for the date hold only the first ``n_users``
    personalized users."""
    from pyspark.sql import functions as F

    from adrec_spark import schema as S
    from adrec_spark.session import build_spark

    target = W / name
    if (target / S.USER_PROFILES / "_delta_log").is_dir():
        return target
    cfg = _cfg()
    spark = build_spark(cfg)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(W / "lakehouse", target, ignore=shutil.ignore_patterns("_staging", S.USER_AD_SCORES,
                                                                         S.RECOMMENDATIONS))
    profiles = spark.read.format("delta").load(str(W / "lakehouse" / S.USER_PROFILES))
    keep = (profiles.where((F.col(S.DS) == SCORE_DATE) & (F.length(S.HISTORY_TEXT) > 0))
            .orderBy(S.USER_ID).limit(n_users))
    keep.write.format("delta").mode("overwrite").save(str(target / S.USER_PROFILES))
    return target


def _pairs(target: Path) -> Path:
    """The (user, ad) pairs the all-candidates job scores for the bench users, with model inputs."""
    from pyspark.sql import functions as F

    from adrec_spark import schema as S
    from adrec_spark.scoring.pipeline import eligible_ads, pair_features
    from adrec_spark.session import build_spark

    out = W / f"pairs-{target.name}.parquet"
    if out.exists():
        return out
    import datetime as dt

    cfg = _cfg()
    spark = build_spark(cfg)
    users = spark.read.format("delta").load(str(target / S.USER_PROFILES)).where(F.col(S.DS) == SCORE_DATE)
    ads = spark.read.format("delta").load(str(target / S.ADS)).where(F.col(S.DS) == SCORE_DATE)
    ads = eligible_ads(ads, dt.date.fromisoformat(SCORE_DATE) + dt.timedelta(days=1))
    pairs = (users.select(S.USER_ID, "clicked_ad_ids").crossJoin(ads.select(S.AD_ID))
             .where(~F.array_contains("clicked_ad_ids", F.col(S.AD_ID))).select(S.USER_ID, S.AD_ID))
    feats = pair_features(pairs, users, ads, rate_prior=cfg.etl.rate_prior,
                          rate_prior_strength=cfg.etl.rate_prior_strength)
    feats.orderBy(S.USER_ID, S.AD_ID).coalesce(1).write.mode("overwrite").parquet(str(out))
    return out


def _model_dir() -> Path:
    from adrec_spark.registry import registry

    cfg = _cfg()
    return registry.ensure_local_model(cfg.mlflow, registry.resolve(cfg.mlflow, alias="champion"), W / "models")


def in_process(pairs: Path, precision: str) -> dict[str, object]:
    import numpy as np
    import pandas as pd

    from adrec_spark import schema as S
    from adrec_spark.model.inference import Scorer

    df = pd.read_parquet(pairs)
    scorer = Scorer(_model_dir(), precision=precision, batch_size=BATCH, threads=INPROC_THREADS)
    num = df[list(S.NUMERIC_FEATURES)].to_numpy(np.float32)
    scorer.score(df[S.AD_TEXT][:BATCH], df[S.HISTORY_TEXT][:BATCH], num[:BATCH])  # warm-up
    t0 = time.perf_counter()
    scorer.score(df[S.AD_TEXT], df[S.HISTORY_TEXT], num)
    seconds = time.perf_counter() - t0
    settings = {"precision": precision, "cores": INPROC_THREADS, "processes": 1, "torch_threads": INPROC_THREADS,
                "partitions": None, "pairs": len(df), "batch_size": BATCH, "output": "memory"}
    return {"pairs": len(df), "seconds": seconds, "pairs_per_second": len(df) / seconds, "settings": settings}


def precision_quality(max_rows: int = QUALITY_ROWS) -> list[dict[str, object]]:
    """Each precision against fp32 on (up to ``max_rows`` rows of) the test split: AUC and correlation."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from adrec_spark import schema as S
    from adrec_spark.model.inference import Scorer

    files = str(W / "lakehouse" / S.TRAINING_EXAMPLES)
    import deltalake

    from adrec_spark.training.split import split_pandas

    table = split_pandas(deltalake.DeltaTable(files).to_pandas())  # the training job's split (train.split)
    test = table[table[S.SPLIT] == S.TEST].head(max_rows)
    num = test[list(S.NUMERIC_FEATURES)].to_numpy(np.float32)
    ref = None
    rows = []
    for precision in ("fp32", "bf16", "int8"):
        s = Scorer(_model_dir(), precision=precision, batch_size=BATCH, threads=INPROC_THREADS).score(test[S.AD_TEXT],
                                                                                    test[S.HISTORY_TEXT], num)
        ref = s if ref is None else ref
        rows.append({"precision": precision, "test_rows": len(test), "test_auc": roc_auc_score(test[S.LABEL], s),
                     "corr_vs_fp32": float(np.corrcoef(ref, s)[0, 1])})
    return rows


def recall_at_10(cascade_lake: Path, all_lake: Path) -> dict[str, float]:
    import deltalake

    from adrec_spark import schema as S

    def top(lake: Path):
        df = deltalake.DeltaTable(str(lake / S.USER_AD_SCORES)).to_pandas()
        df = df.sort_values([S.USER_ID, S.SCORE, S.AD_ID], ascending=[True, False, True])
        return df, df.groupby(S.USER_ID).head(10).groupby(S.USER_ID)[S.AD_ID].apply(set)

    casc, casc_top = top(cascade_lake)
    full, full_top = top(all_lake)
    recalls = [len(casc_top.get(u, set()) & s) / len(s) for u, s in full_top.items() if s]
    return {"cascade_pairs": len(casc), "all_pairs": len(full), "reduction": len(full) / max(len(casc), 1),
            "recall_at_10": sum(recalls) / len(recalls), "users": len(recalls)}


def _job(lake: Path, *overrides: str) -> dict[str, object]:
    return run_python(SPARK_JOB.format(root=str(ROOT), work=str(W), date=SCORE_DATE,
                                       overrides=(f"storage.lakehouse={lake}", *overrides)))


INPROC, JOB, UDF = "in-process loop (Scorer)", "Spark scoring job (end to end)", "mlflow.pyfunc.spark_udf"


def _job_rate(lake: Path, precision: str) -> dict[str, object]:
    job = _job(lake, "score.candidates=all", f"score.precision={precision}")
    settings = {**job["settings"], "precision": precision, "pairs": job["pairs"]}
    return {"pairs": job["pairs"], "seconds": job["seconds"], "stages": job["stages"],
            "pairs_per_second": job["pairs"] / job["seconds"], "settings": settings}


def _udf_rate(pairs: Path, precision: str, torch_threads: int) -> dict[str, object]:
    code = SPARK_UDF.format(root=str(ROOT), work=str(W), pairs=str(pairs), out=str(W / "udf-scores"))
    r = run_python(code, env={"ADREC_PYFUNC_PRECISION": precision, "ADREC_PYFUNC_THREADS": str(torch_threads)})
    return {**r, "pairs_per_second": r["pairs"] / r["seconds"], "settings": {**r["settings"], "pairs": r["pairs"]}}


def _summary(method: str, precision: str, runs: list[dict[str, object]]) -> dict[str, object]:
    """One table row from a method's runs: the median seconds (the pairs are the same in every run) and each
    run's rate; the stages of the middle run by seconds (of two runs, the faster)."""
    mid = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]
    if any(r["settings"] != mid["settings"] for r in runs):
        raise SystemExit(f"{method} {precision}: the runs' settings differ: {[r['settings'] for r in runs]}")
    seconds = statistics.median(r["seconds"] for r in runs)
    row = {"method": method, "precision": precision, "pairs": mid["pairs"], "seconds": seconds,
           "pairs_per_second": mid["pairs"] / seconds,
           "runs": " / ".join(f"{r['pairs_per_second']:.1f}" for r in runs),
           "runs_pairs_per_second": [r["pairs_per_second"] for r in runs], "settings": mid["settings"]}
    if "stages" in mid:
        row["stages"] = mid["stages"]
    return row


def _measure_rounds(o: Options, target: Path, pairs: Path) -> tuple[list[dict[str, object]], str]:
    """(1)-(3) in fp32 and the fastest precision, ``o.rounds`` times interleaved, so a slow spell of the machine
    does not land on one method only; round 1 also measures int8 in process and picks the fastest precision."""
    runs: dict[tuple[str, str], list[dict[str, object]]] = {}

    def measure(method: str, precision: str, fn) -> dict[str, object]:
        print(f"{method} {precision} (run {len(runs.get((method, precision), [])) + 1}) ...", flush=True)
        runs.setdefault((method, precision), []).append(fn())
        return runs[(method, precision)][-1]

    fast = "bf16"  # until round 1 has measured bf16 and int8
    for rnd in range(o.rounds):
        for precision in ("fp32", "bf16", "int8") if rnd == 0 else ("fp32", fast):
            measure(INPROC, precision, lambda p=precision: in_process(pairs, p))
        if rnd == 0:
            fast = max(("bf16", "int8"), key=lambda p: runs[(INPROC, p)][0]["pairs_per_second"])
        for precision in ("fp32", fast):
            job = measure(JOB, precision, lambda p=precision: _job_rate(target, p))
            threads = job["settings"]["torch_threads"]
            measure(UDF, precision, lambda p=precision, t=threads: _udf_rate(pairs, p, t))
    return [_summary(method, precision, r) for (method, precision), r in runs.items()], fast


def _side(rows: list[dict[str, object]], method: str, precision: str) -> dict[str, object]:
    row = next(r for r in rows if r["method"] == method and r["precision"] == precision)
    return {"label": f"{method}, {precision}", "rate": row["pairs_per_second"], "settings": row["settings"]}


SPARK_VS_LOOP = ("processes", "torch_threads", "partitions", "output")


def comparisons(rows: list[dict[str, object]], fast: str) -> list[dict[str, object]]:
    """The ratios the bench reports, each like for like except what it compares (see bench/fairness.py)."""
    out = []
    for p in ("fp32", fast):
        out.append(comparison(f"job_vs_spark_udf_{p}", _side(rows, JOB, p), _side(rows, UDF, p), note=(
            "the job also reads its inputs from Delta, builds the candidates and the ad index, writes the scores "
            "and re-ranks into recommendations; spark_udf scores the prepared pairs from Parquet")))
        out.append(comparison(f"job_vs_in_process_{p}", _side(rows, JOB, p), _side(rows, INPROC, p),
                              varies=SPARK_VS_LOOP, note=(
            "the same cores: the job's workers with their threads against one process with as many threads; "
            "the ratio is the job's overhead (Spark, Arrow, Delta in and out, ad index, re-rank)")))
    for method, key in ((INPROC, "in_process"), (JOB, "job"), (UDF, "spark_udf")):
        out.append(comparison(f"{fast}_vs_fp32_{key}", _side(rows, method, fast), _side(rows, method, "fp32"),
                              varies=("precision",)))
    return out


def _steady_state(o: Options, rows: list[dict[str, object]], fast: str) -> dict[str, object]:
    """The job's fixed costs (first Delta reads in a fresh JVM, model load per worker, commits) weigh on a few
    thousand pairs; the same job over ``o.steady_factor`` times the users gives its marginal rate."""
    print(f"Spark job {fast}, {o.steady_factor}x the users ...", flush=True)
    big = _job_rate(_bench_lakehouse(f"lakehouse-bench-{o.steady_factor * o.users}", o.steady_factor * o.users), fast)
    small = next(r for r in rows if r["method"] == JOB and r["precision"] == fast)
    marginal = (big["pairs"] - small["pairs"]) / (big["seconds"] - small["seconds"])
    rows.append({"method": JOB, "precision": f"{fast} {o.steady_factor}x users", "pairs": big["pairs"],
                 "seconds": big["seconds"], "pairs_per_second": big["pairs_per_second"], "stages": big["stages"],
                 "settings": big["settings"]})
    rows.append({"method": "Spark scoring job (marginal rate)", "precision": fast,
                 "pairs": big["pairs"] - small["pairs"], "seconds": big["seconds"] - small["seconds"],
                 "pairs_per_second": marginal})
    return {"precision": fast, "pairs": [small["pairs"], big["pairs"]], "seconds": [small["seconds"], big["seconds"]],
            "big_stages": big["stages"], "marginal_pairs_per_second": marginal,
            "fixed_seconds": small["seconds"] - small["pairs"] / marginal}


def _cascade(o: Options, fast: str) -> dict[str, object]:
    print("cascade vs all pairs ...", flush=True)
    lakes, jobs = {}, {}
    for mode in ("cascade", "all"):
        lake = _bench_lakehouse(f"lakehouse-{o.cascade_users}-{mode}", o.cascade_users)
        jobs[mode] = _job(lake, f"score.candidates={mode}", f"score.precision={fast}")
        lakes[mode] = lake
    return {**recall_at_10(lakes["cascade"], lakes["all"]), "eligible_ads": jobs["all"]["eligible_ads"],
            "precision": fast, "cascade_seconds": jobs["cascade"]["seconds"], "all_seconds": jobs["all"]["seconds"],
            "settings": jobs["all"]["settings"]}


def run(argv: list[str] | None = None) -> dict[str, object]:
    global W
    o = parse_options(argv or [])
    W = Path(o.work)
    prepared = prepare(o.train_rows)
    target = _bench_lakehouse(f"lakehouse-bench-{o.users}", o.users)
    pairs = _pairs(target)
    rows, fast = _measure_rounds(o, target, pairs)
    comps = comparisons(rows, fast)
    steady = _steady_state(o, rows, fast)
    cascade = _cascade(o, fast)
    quality = precision_quality(o.quality_rows)
    print()
    print(table(rows, ["method", "precision", "pairs", "seconds", "pairs_per_second", "runs"]))
    print()
    print(table(quality, ["precision", "test_rows", "test_auc", "corr_vs_fp32"]))
    print()
    print(table([{"comparison": c["name"], "ratio": c["ratio"], "varies": ", ".join(c["varies"]) or "-"}
                 for c in comps], ["comparison", "ratio", "varies"]))
    print()
    print(table([cascade], ["cascade_pairs", "all_pairs", "reduction", "recall_at_10"]))
    payload = {"command": o.command(), "options": asdict(o), "prepared": prepared, "throughput": rows,
               "fastest_precision": fast, "comparisons": comps, "steady_state": steady,
               "precision_quality": quality, "cascade": cascade, "score_date": SCORE_DATE}
    save("scoring", payload, path=Path(o.out) if o.out else None)
    return payload
