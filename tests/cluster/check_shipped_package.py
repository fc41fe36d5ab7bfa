"""Cluster check: the driver and every executor import ``adrec_spark`` from the zip shipped with ``--py-files``.

    spark-submit --master spark://... --py-files .cluster/dist/adrec_spark.zip \\
        tests/cluster/check_shipped_package.py --executors 2

One barrier task per executor slot (barrier tasks all run at once, so each lands on its own executor) reports
where ``adrec_spark`` came from, and whether the executor's interpreter could import it at all without the
paths Spark adds for ``--py-files`` (it must not: then the shipped copy is the only one it can see).
Prints one JSON line per task and exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any


def _shipped(path: str, zip_name: str) -> bool:
    """True if ``path`` is a module inside a zip called ``zip_name`` (``.../adrec_spark.zip/adrec_spark/...``)."""
    marker = f"{os.sep}{zip_name}{os.sep}"
    return marker in path


def report_import(_: Iterator[Any]) -> Iterator[dict[str, Any]]:
    from pyspark import BarrierTaskContext

    ctx = BarrierTaskContext.get()
    ctx.barrier()  # every task waits for the others: they occupy all slots, one per executor
    import adrec_spark

    # The same interpreter without Spark's PYTHONPATH: if it can import adrec_spark, an installed copy
    # (e.g. the editable install of the repository) is visible to the executors and the test proves nothing.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import adrec_spark"], capture_output=True, text=True,
                           env=env, cwd="/", check=False)
    yield {"partition": ctx.partitionId(), "host": ctx.getTaskInfos()[ctx.partitionId()].address,
           "executor_dir": os.getcwd(), "python": sys.executable,
           "adrec_spark": os.path.abspath(adrec_spark.__file__), "importable_without_py_files": probe.returncode == 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executors", type=int, default=2, help="executor slots to check (one task each)")
    parser.add_argument("--zip-name", default="adrec_spark.zip", help="file name of the shipped package")
    args = parser.parse_args(argv)

    from pyspark.sql import SparkSession

    import adrec_spark

    spark = SparkSession.builder.appName("adrec-cluster-check-shipped-package").getOrCreate()
    try:
        rows = (spark.sparkContext.parallelize(range(args.executors), args.executors).barrier()
                .mapPartitions(report_import).collect())
    finally:
        spark.stop()

    problems = []
    print(json.dumps({"driver": True, "adrec_spark": adrec_spark.__file__}))
    if not _shipped(adrec_spark.__file__, args.zip_name):
        problems.append(f"driver imported adrec_spark from {adrec_spark.__file__}, not from {args.zip_name}")
    for row in sorted(rows, key=lambda r: r["partition"]):
        print(json.dumps(row))
        if not _shipped(row["adrec_spark"], args.zip_name):
            problems.append(f"task {row['partition']} imported adrec_spark from {row['adrec_spark']}")
        if row["importable_without_py_files"]:
            problems.append(f"task {row['partition']}: {row['python']} imports adrec_spark without --py-files")
    executors = {r["executor_dir"] for r in rows}
    if len(rows) != args.executors or len(executors) != args.executors:
        problems.append(f"expected {args.executors} tasks on {args.executors} executors, got {len(rows)} "
                        f"tasks in {sorted(executors)}")
    for p in problems:
        print(f"check_shipped_package: FAILED: {p}", file=sys.stderr)
    if not problems:
        print(f"check_shipped_package: the driver and {len(executors)} executors import adrec_spark from the "
              f"shipped {args.zip_name} only")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
