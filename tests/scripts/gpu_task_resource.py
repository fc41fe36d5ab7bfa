"""Run the scoring UDF's device choice inside a Spark task that was given a GPU by Spark's resource scheduler.

Spark's local mode cannot hand out task resources, so this starts ``local-cluster[1,1,1024]`` (a real
standalone master, worker and executor) whose worker advertises one GPU via a discovery script. Prints one
JSON line: the GPU addresses the task saw, the device chosen, any warnings, and a few scores from the real
pandas UDF (the tiny model given as argv[1]).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import pyspark


def main(model_dir: str, jars: str) -> None:
    from pyspark import TaskContext
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from adrec_spark import schema as S
    from adrec_spark.model_udf import UdfSettings, model_udf, numeric_struct

    script = Path(tempfile.mkdtemp()) / "gpus.sh"
    script.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
    script.chmod(0o755)
    os.environ.setdefault("SPARK_HOME", os.path.dirname(pyspark.__file__))
    spark = (SparkSession.builder.master("local-cluster[1,1,1024]").appName("gpu-resource-check")
             .config("spark.worker.resource.gpu.amount", "1")
             .config("spark.worker.resource.gpu.discoveryScript", str(script))
             .config("spark.executor.resource.gpu.amount", "1")
             .config("spark.task.resource.gpu.amount", "1")
             .config("spark.ui.enabled", "false").config("spark.jars", jars)
             .config("spark.executorEnv.PYTHONPATH", os.pathsep.join(sys.path)).getOrCreate())

    def probe(_):
        from adrec_spark.model_udf import task_device

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            device = task_device()
        ctx = TaskContext.get()
        yield json.dumps({"gpus": list(ctx.resources()["gpu"].addresses) if "gpu" in ctx.resources() else [],
                          "device": device, "warnings": [str(w.message) for w in caught]})

    seen = json.loads(spark.sparkContext.parallelize([0], 1).mapPartitions(probe).collect()[0])
    rows = [("good travel deal", "clicked: travel flights", *[0.1] * len(S.NUMERIC_FEATURES))] * 3
    df = spark.createDataFrame(rows, [S.AD_TEXT, S.HISTORY_TEXT, *S.NUMERIC_FEATURES])
    udf = model_udf(UdfSettings(model_file=model_dir, precision="auto"), output="score")
    scores = [r[0] for r in df.select(udf(F.col(S.AD_TEXT), F.col(S.HISTORY_TEXT),
                                          numeric_struct(list(S.NUMERIC_FEATURES)))).collect()]
    spark.stop()
    print(json.dumps({**seen, "scores": scores}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
