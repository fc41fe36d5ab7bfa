"""Resolve the Delta Lake jars from Maven Central once, so that jobs run offline after; find them again.

``make setup`` puts them in the repository's ``.jars``; ``python -m adrec_spark.jars`` (after a plain
``pip install``) in the user cache (``~/.cache/adrec-spark/jars``) or ``--dest``. Jobs find them from any
working directory: ``spark.jars_dir`` if set, else ``$ADREC_JARS_DIR`` if set, else the source checkout's
``.jars`` beside the package, else the user cache.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from adrec_spark.config import SparkConfig
from adrec_spark.errors import ConfigError

log = logging.getLogger(__name__)

JARS_DIR_ENV = "ADREC_JARS_DIR"


def user_jars_dir() -> Path:
    """Where ``python -m adrec_spark.jars`` puts the jars by default: ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache, "adrec-spark", "jars").absolute()


def source_tree_jars_dir() -> Path | None:
    """``.jars`` of the source checkout this package runs from (editable install or PYTHONPATH), if any."""
    root = Path(__file__).resolve().parents[1]
    return root / ".jars" if (root / "pyproject.toml").is_file() else None


def jar_search_dirs(jars_dir: str | Path | None = None) -> list[tuple[Path, str]]:
    """The folders to look in, in order, each with the setting it comes from. A folder the user named
    (``spark.jars_dir`` or ``$ADREC_JARS_DIR``) is the only one: a wrong setting is never passed over."""
    if jars_dir is not None:
        return [(Path(jars_dir).expanduser().absolute(), "spark.jars_dir")]
    if os.environ.get(JARS_DIR_ENV):
        return [(Path(os.environ[JARS_DIR_ENV]).expanduser().absolute(), f"${JARS_DIR_ENV}")]
    tree = source_tree_jars_dir()
    found = [(tree, "the source checkout's .jars (make setup)")] if tree is not None else []
    return [*found, (user_jars_dir(), "the user cache (python -m adrec_spark.jars)")]


def find_delta_jars(jars_dir: str | Path | None = None, package: str = SparkConfig.delta_package) -> list[str]:
    """Absolute paths of the resolved jars, from the first folder of :func:`jar_search_dirs` that has any.

    Raises:
        ConfigError: no folder has jars; the message names every folder tried and how to provide them.
    """
    tried = jar_search_dirs(jars_dir)
    for folder, _ in tried:
        jars = sorted(str(p) for p in folder.glob("*.jar")) if folder.is_dir() else []
        if jars:
            return jars
    looked = "; ".join(f"{folder} ({why})" for folder, why in tried)
    raise ConfigError(
        f"no Delta jars found. Looked in: {looked}. Resolve them once (needs Maven Central): `make setup` in "
        f"the repository, or `python -m adrec_spark.jars` (writes {user_jars_dir()}); point at a folder that "
        f"has them with {JARS_DIR_ENV}=/path or --set spark.jars_dir=/path; or let Spark fetch {package} "
        "at start-up with --set spark.use_packages=true."
    )


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
    parser.add_argument("--dest", default=os.environ.get(JARS_DIR_ENV) or str(user_jars_dir()),
                        help=f"folder for the jars (default: ${JARS_DIR_ENV} or {user_jars_dir()})")
    parser.add_argument("--package", default=SparkConfig.delta_package)
    parser.add_argument("--with-s3-dynamodb", action="store_true",
                        help=f"also resolve {S3_DYNAMODB_ARTIFACT} (several writers per table on S3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    package = args.package
    if args.with_s3_dynamodb and S3_DYNAMODB_ARTIFACT not in package:
        package = f"{package},{s3_dynamodb_package(package)}"
    jars = resolve_delta_jars(args.dest, package)
    print(f"{len(jars)} jars in {Path(args.dest).absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
