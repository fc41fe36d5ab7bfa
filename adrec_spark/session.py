"""The one Spark session builder: Delta enabled, UTC, Arrow on, jars resolved offline."""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from adrec_spark.config import AppConfig, SparkConfig
from adrec_spark.jars import find_delta_jars
from adrec_spark.termination import children_ignore_sigterm

log = logging.getLogger(__name__)


def spark_conf(cfg: SparkConfig) -> dict[str, str]:
    """Every setting the builder applies, as a plain dict (tested without starting Spark)."""
    conf: dict[str, str] = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.default.parallelism": str(cfg.shuffle_partitions),
        "spark.databricks.delta.snapshotPartitions": str(max(1, cfg.shuffle_partitions)),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_max_records_per_batch),
        "spark.sql.adaptive.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        # Python workers (pandas UDFs) start with the same interpreter as the driver unless told otherwise.
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable),
    }
    if cfg.arrow_max_bytes_per_batch is not None:
        conf["spark.sql.execution.arrow.maxBytesPerBatch"] = str(cfg.arrow_max_bytes_per_batch)
    if cfg.driver_memory:
        conf["spark.driver.memory"] = cfg.driver_memory
    if cfg.use_packages:
        conf["spark.jars.packages"] = cfg.delta_package
    elif cfg.jars_dir is not None or "spark.jars" not in cfg.conf:  # else the user lists the jars
        conf["spark.jars"] = ",".join(find_delta_jars(cfg.jars_dir, cfg.delta_package))
    conf.update(cfg.conf)
    return conf


def build_spark(cfg: AppConfig | SparkConfig, *, app_name: str | None = None) -> SparkSession:
    """Get or create the session. Under spark-submit the master and resources come from spark-submit."""
    scfg = cfg.spark if isinstance(cfg, AppConfig) else cfg
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name or scfg.app_name)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if scfg.master and not under_submit:
        builder = builder.master(scfg.master)
    for key, value in spark_conf(scfg).items():
        builder = builder.config(key, value)
    from pyspark import SparkContext

    if under_submit or SparkContext._gateway is not None:
        spark = builder.getOrCreate()
    else:  # this process starts the JVM: a SIGTERM to the process group must reach the driver's handler only
        with children_ignore_sigterm():
            spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(scfg.log_level)
    log.info("spark session: master=%s app=%s version=%s", spark.sparkContext.master,
             spark.sparkContext.appName, spark.version)
    return spark
