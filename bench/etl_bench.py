"""ETL throughput on generated logs: 1M and 2M events, each in a fresh Spark JVM, so growth can be seen."""

from __future__ import annotations

import json
import shutil

from bench.common import WORK, save, table

CODE = """
import datetime as dt, json, sys
sys.path.insert(0, {root!r})
from bench.common import bench_config
from adrec_spark.logs import configure_logging
from adrec_spark.session import build_spark
from adrec_spark.etl.pipeline import run_etl
from pathlib import Path
configure_logging("WARNING")
cfg = bench_config(Path({work!r}), "spark.driver_memory=6g")
spark = build_spark(cfg)
r = run_etl(spark, cfg, dt.date(2024, 1, 1), dt.date(2024, 1, {days}))
print(json.dumps({{"input_rows": r.input_rows, "clean": r.clean_rows, "rejected": r.rejected_rows,
                  "duplicates": r.duplicate_rows, "training_examples": r.training_examples,
                  "users": r.users_profiled, "etl_seconds": r.seconds}}))
"""


def run(sizes: tuple[int, ...] = (1_000_000, 2_000_000), days: int = 14) -> dict[str, object]:
    from adrec_spark.samples.generator import GeneratorSpec, generate
    from bench.common import ROOT, run_python

    rows = []
    for n in sizes:
        work = WORK / f"etl-{n}"
        shutil.rmtree(work, ignore_errors=True)
        spec = GeneratorSpec(n_users=max(100, n // 100), n_ads=2000, n_events=n, n_days=days, seed=1)
        generate(spec, work / "raw")
        print(f"ETL on {n:,} generated events ...", flush=True)
        res = run_python(CODE.format(root=str(ROOT), work=str(work), days=days))
        res["events_per_second"] = res["input_rows"] / res["etl_seconds"]
        res["events"] = n
        rows.append(res)
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(res), flush=True)
    if len(rows) == 2:
        rows[1]["time_ratio_vs_first"] = rows[1]["etl_seconds"] / rows[0]["etl_seconds"]
    print(table(rows, ["events", "input_rows", "training_examples", "users", "etl_seconds", "events_per_second"]))
    save("etl", {"command": "make bench-etl", "runs": rows})
    return {"runs": rows}
