"""Several writers per table on S3 (issue 15, item 3): conf/cluster.yaml turns on Delta's DynamoDB log store and
its jar can be resolved by `make setup DELTA_S3_DYNAMODB=1`. Checked without S3 or a download: the config's keys
(the names Delta's S3DynamoDBLogStore reads), the package coordinate, and what make would run."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from adrec_spark import jars
from adrec_spark.config import SparkConfig, load_config
from adrec_spark.session import spark_conf
from tests.conftest import ROOT

LOG_STORE = "io.delta.storage.S3DynamoDBLogStore"
S3_PACKAGE = "io.delta:delta-storage-s3-dynamodb:4.4.0"  # the Delta version of SparkConfig.delta_package


def test_the_cluster_config_commits_to_s3_through_the_dynamodb_log_store() -> None:
    cfg = load_config([str(ROOT / "conf" / "cluster.yaml")])
    conf = spark_conf(cfg.spark)
    assert conf["spark.delta.logStore.s3a.impl"] == LOG_STORE
    assert conf["spark.delta.logStore.s3.impl"] == LOG_STORE
    assert conf["spark.io.delta.storage.S3DynamoDBLogStore.ddb.tableName"]
    assert conf["spark.io.delta.storage.S3DynamoDBLogStore.ddb.region"]
    # use_packages: Spark resolves Delta and the log store, at the same version
    assert conf["spark.jars.packages"].split(",") == [SparkConfig.delta_package, S3_PACKAGE]


def test_the_jars_tool_adds_the_s3_log_store_when_asked(monkeypatch, tmp_path) -> None:
    asked: list[str] = []
    monkeypatch.setattr(jars, "resolve_delta_jars", lambda dest, package: asked.append(package) or [])
    assert jars.s3_dynamodb_package() == S3_PACKAGE
    jars.main(["--dest", str(tmp_path)])
    jars.main(["--dest", str(tmp_path), "--with-s3-dynamodb"])
    jars.main(["--dest", str(tmp_path), "--with-s3-dynamodb", "--package", f"{SparkConfig.delta_package},{S3_PACKAGE}"])
    assert asked == [SparkConfig.delta_package, f"{SparkConfig.delta_package},{S3_PACKAGE}",
                     f"{SparkConfig.delta_package},{S3_PACKAGE}"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("flag, args", [("DELTA_S3_DYNAMODB=1", "--dest .jars --with-s3-dynamodb"),
                                        ("DELTA_S3_DYNAMODB=0", "--dest .jars")])
def test_make_setup_passes_the_s3_option_to_the_jars_tool(flag: str, args: str) -> None:
    """``make -n`` prints what setup would run (nothing runs); the jars step is always due for a stamp that
    no folder has, so it is printed whatever .jars holds."""
    out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "setup", flag], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "-m adrec_spark.jars" in line]
    assert [line.split("-m adrec_spark.jars ")[1].strip() for line in lines] == [args]
