"""Stage-level GPU scheduling on a real standalone cluster (``local-cluster``): the executor has a (fake) GPU,
no task asks for one by default, and only stages with the scoring profile get a share of it.

Prints one JSON line: the GPU addresses a plain stage's tasks saw, those the profiled stage's tasks saw (and
the amount), and the scores :func:`adrec_spark.scoring.stages.score_pairs` produced with that profile on the
tiny model given as argv[1] (argv[2]: the jars).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pyspark


def main(model_dir: str, jars: str) -> None:
    from pyspark import TaskContext
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from adrec_spark import schema as S
    from adrec_spark.config import ScoreGpuConfig
    from adrec_spark.model_udf import UdfSettings, with_token_ids
    from adrec_spark.scoring.stages import score_pairs, scoring_profile

    script = Path(tempfile.mkdtemp()) / "gpus.sh"
    script.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
    script.chmod(0o755)
    os.environ.setdefault("SPARK_HOME", os.path.dirname(pyspark.__file__))
    spark = (SparkSession.builder.master("local-cluster[1,2,1024]").appName("gpu-stage-profile")
             .config("spark.worker.resource.gpu.amount", "1")
             .config("spark.worker.resource.gpu.discoveryScript", str(script))
             .config("spark.executor.resource.gpu.amount", "1")
             .config("spark.executor.resource.gpu.discoveryScript", str(script))
             .config("spark.dynamicAllocation.enabled", "false")
             .config("spark.ui.enabled", "false").config("spark.jars", jars)
             .config("spark.executorEnv.PYTHONPATH", os.pathsep.join(sys.path)).getOrCreate())
    profile = scoring_profile(ScoreGpuConfig(task_amount=0.5))

    def seen(batches):
        import pyarrow as pa

        res = TaskContext.get().resources()
        gpus = list(res["gpu"].addresses) if "gpu" in res else []
        for _ in batches:
            pass
        yield pa.RecordBatch.from_pydict({"gpus": [",".join(gpus)]})

    df = spark.range(4, numPartitions=2)
    plain = [r.gpus for r in df.mapInArrow(seen, "gpus string").collect()]
    profiled = [r.gpus for r in df.mapInArrow(seen, "gpus string", profile=profile).collect()]

    settings = UdfSettings(model_file=model_dir, precision="fp32")
    n = len(S.NUMERIC_FEATURES)
    rows = [("u1", "a1", "good travel deal", "clicked: travel flights", *[0.1] * n),
            ("u2", "a1", "good travel deal", "", *[0.3] * n)]
    pairs = spark.createDataFrame(rows, [S.USER_ID, S.AD_ID, S.AD_TEXT, S.HISTORY_TEXT, *S.NUMERIC_FEATURES])
    pairs = with_token_ids(with_token_ids(pairs, settings, text_col=S.AD_TEXT, prefix="ad"), settings,
                           text_col=S.HISTORY_TEXT, prefix="history").drop(S.AD_TEXT, S.HISTORY_TEXT)
    scored = score_pairs(pairs, settings, numeric_features=list(S.NUMERIC_FEATURES), profile=profile)
    scores = [r.score for r in scored.orderBy(S.USER_ID).select(F.col("score")).collect()]
    spark.stop()
    print(json.dumps({"plain": plain, "profiled": profiled, "scores": scores}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
