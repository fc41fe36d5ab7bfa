"""Training job: fine-tune the relevance model on training_examples, log it to MLflow and register it.

    spark-submit jobs/train.py [--init-from champion] [--resume] [--conf conf/cluster.yaml] [--set key=value ...]
"""

import sys

from adrec_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
