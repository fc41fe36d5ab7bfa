"""Shared fixtures: one local Spark session (Delta on, UTC, UI off) for the whole run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from adrec_spark.config import AppConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS = Path(os.environ.get("ADREC_MOVIELENS", ROOT.parent / "shared" / "data" / "movielens-100k"))


def make_config(tmp: Path, *overrides: str) -> AppConfig:
    """The local default with every path under ``tmp`` (and a jars folder that survives the chdir)."""
    return load_config(overrides=[
        f"storage.lakehouse={tmp / 'lakehouse'}",
        f"storage.raw_events={tmp / 'raw' / 'events'}",
        f"storage.raw_ads={tmp / 'raw' / 'ads'}",
        f"storage.staging={tmp / 'lakehouse' / '_staging'}",
        f"spark.jars_dir={ROOT / '.jars'}",
        f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        f"mlflow.artifact_location={tmp / 'mlartifacts'}",
        f"train.checkpoint_dir={tmp / 'checkpoints'}",
        f"evaluate.report_dir={tmp / 'reports'}",
        *overrides,
    ])


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from adrec_spark.session import build_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    cfg = load_config(overrides=[
        "spark.master=local[2]",
        "spark.shuffle_partitions=2",
        f"spark.jars_dir={ROOT / '.jars'}",
        "spark.driver_memory=3g",
        "spark.conf={'spark.ui.enabled': 'false', 'spark.sql.warehouse.dir': '" + str(warehouse) + "', "
        "'spark.sql.adaptive.coalescePartitions.enabled': 'true'}",
    ])
    session = build_spark(cfg, app_name="adrec-tests")
    yield session
    session.stop()


@pytest.fixture
def cfg(tmp_path: Path) -> AppConfig:
    return make_config(tmp_path)


def movielens_or_skip() -> Path:
    if not (MOVIELENS / "ratings.parquet").is_file():
        pytest.skip(f"MovieLens-100k not found at {MOVIELENS} (set ADREC_MOVIELENS to its folder)")
    return MOVIELENS
