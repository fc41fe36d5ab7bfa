"""Nightly ETL: landing files for one date (or a backfill range) into the Delta tables.

    spark-submit jobs/etl.py --date 2024-01-14 [--conf conf/cluster.yaml] [--set key=value ...]
    spark-submit jobs/etl.py --start 2024-01-01 --end 2024-01-14
"""

import sys

from adrec_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["etl", *sys.argv[1:]]))
