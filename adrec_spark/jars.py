"""Resolve the Delta Lake jars from Maven Central once (``make setup``), so that jobs run offline after."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from adrec_spark.config import SparkConfig

log = logging.getLogger(__name__)


def resolve_delta_jars(dest: str | Path, package: str = SparkConfig.delta_package) -> list[Path]:
    """Let Spark's own Ivy resolve ``package`` and its dependencies, then copy the jars into ``dest``."""
    from pyspark.sql import SparkSession

    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="adrec-ivy-") as ivy:
        spark = (SparkSession.builder.master("local[1]").appName("adrec-resolve-jars")
                 .config("spark.jars.packages", package).config("spark.jars.ivy", ivy)
                 .config("spark.ui.enabled", "false").getOrCreate())
        spark.stop()
        jars = sorted(Path(ivy, "jars").glob("*.jar"))
        if not jars:
            raise RuntimeError(f"Ivy resolved no jars for {package}")
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for jar in jars:
            shutil.copy2(jar, tmp / jar.name)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    out = sorted(dest.glob("*.jar"))
    log.info("resolved %d jars for %s into %s", len(out), package, dest)
    return out


# Delta's multi-writer log store for S3 (a DynamoDB table makes each commit put-if-absent): conf/cluster.yaml.
S3_DYNAMODB_ARTIFACT = "io.delta:delta-storage-s3-dynamodb"


def s3_dynamodb_package(delta_package: str = SparkConfig.delta_package) -> str:
    """The S3 DynamoDB log store's Maven coordinate at the Delta version of ``delta_package``."""
    version = delta_package.split(",")[0].strip().rsplit(":", 1)[-1]
    return f"{S3_DYNAMODB_ARTIFACT}:{version}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", default=".jars")
    parser.add_argument("--package", default=SparkConfig.delta_package)
    parser.add_argument("--with-s3-dynamodb", action="store_true",
                        help=f"also resolve {S3_DYNAMODB_ARTIFACT} (several writers per table on S3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    package = args.package
    if args.with_s3_dynamodb and S3_DYNAMODB_ARTIFACT not in package:
        package = f"{package},{s3_dynamodb_package(package)}"
    jars = resolve_delta_jars(args.dest, package)
    print(f"{len(jars)} jars in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
