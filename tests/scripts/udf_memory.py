"""Peak memory of the Python worker that runs the scoring pandas UDF, for a partition of N and of 4N pairs.

Starts its own ``local[1]`` session (one task at a time, so one reused Python worker does all the work) with
``spark.arrow_max_records_per_batch`` from the command line, and scores one-partition DataFrames of generated
pairs with :func:`adrec_spark.model_udf.model_udf`. After each job it reads the worker's ``VmHWM`` (peak
resident set size since the worker started, from ``/proc``): it only ever grows, so the reading after the 4N
job is the peak of everything the worker did up to then. As a control it runs a UDF that holds every batch of
its partition before answering (what an unbounded UDF does): its peak must grow with N, which shows the
measurement can see growth. Prints one JSON line.

    python tests/scripts/udf_memory.py MODEL_DIR JARS_DIR --rows 20000 --batch 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil


def python_workers() -> list[int]:
    """Pids of the Python workers this process's JVM started (the children of its pyspark.daemon)."""
    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            parent = p.parent()
            if parent is not None and "pyspark.daemon" in " ".join(parent.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            continue
    return sorted(out)


def _status(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` memory line (``VmRSS``, ``RssAnon``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"{key} not in /proc/{pid}/status")


class PeakSampler:
    """Samples the resident memory (``RssAnon``: heap, not the mapped torch libraries) of the Python workers
    every few milliseconds while a job runs; ``peak`` is the largest sample of any one worker."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.workers: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids: list[int] = []
        last_scan = 0.0
        while not self._stop.is_set():
            now = time.perf_counter()
            if now - last_scan > 0.5:  # a new worker may start at any time; rescanning every sample is costly
                pids, last_scan = python_workers(), now
            for pid in pids:
                try:
                    self.peak = max(self.peak, _status(pid, "RssAnon"))
                    self.workers.add(pid)
                    self.samples += 1
                except (OSError, KeyError):
                    continue
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("jars_dir")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()

    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import FloatType, IntegerType

    from adrec_spark import schema as S
    from adrec_spark.config import load_config
    from adrec_spark.model_udf import UdfSettings, model_udf, numeric_struct
    from adrec_spark.session import build_spark

    cfg = load_config(overrides=[
        "spark.master=local[1]", "spark.shuffle_partitions=1", f"spark.jars_dir={args.jars_dir}",
        "spark.driver_memory=1g", f"spark.arrow_max_records_per_batch={args.batch}",
        "spark.conf={'spark.ui.enabled': 'false', 'spark.python.worker.reuse': 'true'}",
    ])
    spark = build_spark(cfg, app_name="udf-memory")

    def pairs(n: int):
        df = spark.range(0, n, 1, numPartitions=1)
        # ~1 kB histories (history_max_chars is 1200), mostly one long token so that tokenizing stays cheap;
        # every text distinct (Arrow -> pandas shares equal strings, which would hide a hoarding UDF)
        history = F.concat(F.lit("clicked: cheap travel flights | searched: hotel deal | "), F.col("id").cast("string"),
                           F.repeat(F.lit("y"), (F.col("id") % 9) * 50 + 800))
        ad = F.concat(F.lit("great laptop deal about coffee and yoga "), F.col("id").cast("string"))
        numeric = [(F.col("id") % (7 + i)).cast("double").alias(c) for i, c in enumerate(S.NUMERIC_FEATURES)]
        return df.select(ad.alias(S.AD_TEXT), history.alias(S.HISTORY_TEXT), *numeric)

    @pandas_udf(IntegerType())  # type: ignore[call-overload]
    def batch_rows(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        for s in batches:
            yield pd.Series(np.full(len(s), len(s), dtype=np.int32))

    @pandas_udf(FloatType())  # type: ignore[call-overload]
    def hoard(batches: Iterator[tuple[pd.Series, pd.Series, pd.DataFrame]]) -> Iterator[pd.Series]:
        kept = list(batches)  # deliberately unbounded: the whole partition in memory
        for ad, _history, _numeric in kept:
            yield pd.Series(np.zeros(len(ad), dtype=np.float32))

    score = model_udf(UdfSettings(model_file=str(Path(args.model_dir).resolve()), precision="fp32", batch_size=64),
                      output="score")
    numeric = numeric_struct(list(S.NUMERIC_FEATURES))

    def run(udf, n: int) -> dict[str, object]:
        """Score n pairs in one partition: the worker's heap before the job and its sampled peak during it."""
        before = max((_status(pid, "RssAnon") for pid in python_workers()), default=0)
        t0 = time.perf_counter()
        df = pairs(n)
        with PeakSampler() as sampler:
            row = df.select(udf(F.col(S.AD_TEXT), F.col(S.HISTORY_TEXT), numeric).alias("s")) \
                .agg(F.count("s").alias("n"), F.sum("s").alias("total")).first()
        return {"rows": int(row["n"]), "partitions": df.rdd.getNumPartitions(), "workers": sorted(sampler.workers),
                "samples": sampler.samples, "before": before, "peak": sampler.peak,
                "seconds": round(time.perf_counter() - t0, 1)}

    n = args.rows
    sizes = pairs(n).select(batch_rows(F.col(S.AD_TEXT)).alias("b")).groupBy("b").count().collect()
    report: dict[str, object] = {
        "arrow_conf": spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"),
        "batch_sizes": {int(r["b"]): int(r["count"]) for r in sizes},
        "warmup": run(score, 2 * args.batch),
        "score_n": run(score, n),
        "score_4n": run(score, 4 * n),
        "hoard_n": run(hoard, n),
        "hoard_4n": run(hoard, 4 * n),
    }
    spark.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
