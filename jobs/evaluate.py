"""Evaluation job: the registered model against the baselines on the test split; metrics to MLflow and
eval_metrics, one HTML report.

    spark-submit jobs/evaluate.py [--date 2024-01-14] [--conf ...] [--set key=value ...]
"""

import sys

from adrec_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
