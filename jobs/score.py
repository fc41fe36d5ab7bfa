"""Nightly scoring job: cross-encoder scores and diversified top-K recommendations for one date.

    spark-submit jobs/score.py --date 2024-01-14 [--conf conf/cluster.yaml --conf conf/cluster-gpu.yaml]
"""

import sys

from adrec_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
