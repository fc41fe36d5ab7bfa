"""adrec-spark: personalized ad recommendation with a fine-tuned BERT cross-encoder as nightly Spark jobs."""

import os

# Weights come from local files only (the packaged MiniLM, a local folder or the local HF cache):
# a hub download fails on air-gapped clusters, so never attempt one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__version__ = "0.1.0"
