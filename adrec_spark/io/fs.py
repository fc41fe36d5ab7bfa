"""Storage locations from Python: a URI (``file:///``, ``s3a://``, ``abfss://``, ``gs://``, ``hdfs://``) or a plain
path, served through ``pyarrow.fs``.

Spark reads and writes storage through Hadoop; the Python side (the trainer reading the exported splits, the
right to be forgotten cleaning them, reports, checkpoints) goes through this module instead of ``pathlib``
(``Path("s3a://b/x")`` is the local folder ``s3a:/b/x``). pyarrow.fs rather than fsspec: pyarrow is already a
dependency, its S3, GCS, Azure and HDFS file systems ship in the wheel (fsspec needs s3fs, gcsfs or adlfs
besides), and ``pyarrow.dataset`` reads Parquet through them directly.

Hadoop's scheme names map to pyarrow's: ``s3a``/``s3n`` -> ``s3``, ``gs``/``gcs``, ``abfs``/``abfss``,
``hdfs``, ``file`` (and a plain path: the local file system). A scheme pyarrow cannot serve from Python
(``wasbs``, ``dbfs``, ``viewfs``...) is a :class:`~adrec_spark.errors.ConfigError` naming the setting to change.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow.dataset as ds
import pyarrow.fs as pafs

from adrec_spark.errors import ConfigError

log = logging.getLogger(__name__)

# Hadoop scheme -> the scheme pyarrow.fs.FileSystem.from_uri knows.
ARROW_SCHEMES = {"s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gs", "gcs": "gs", "abfs": "abfs", "abfss": "abfss",
                 "hdfs": "hdfs"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def scheme(location: str) -> str | None:
    """The URI scheme in lower case (``s3a``), or None for a plain path."""
    if not isinstance(location, str) or not location:
        raise ConfigError(f"storage location must be a non-empty string, got {location!r}")
    m = _SCHEME.match(location)
    return m.group(1).lower() if m else None


def is_local(location: str) -> bool:
    """A plain path or a ``file:`` URI."""
    return scheme(location) in (None, "file")


def local_path(location: str) -> Path | None:
    """The absolute local path of a plain path or ``file:`` URI (``file:///a``, Hadoop's ``file:/a``); None for
    a remote location."""
    s = scheme(location)
    if s is None:
        return Path(os.path.abspath(os.path.expanduser(location)))
    if s != "file":
        return None
    parts = urlsplit(location)
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{location}: a file: URI names no host (file:///absolute/path), got {parts.netloc!r}")
    if not parts.path.startswith("/"):
        raise ConfigError(f"{location}: a file: URI needs an absolute path (file:///absolute/path)")
    return Path(os.path.normpath(unquote(parts.path)))  # as_uri() and Hadoop write a space as %20


def to_arrow_uri(location: str) -> str:
    """The location as pyarrow names it: a local absolute path, or a URI with pyarrow's scheme."""
    local = local_path(location)
    if local is not None:
        return str(local)
    s = scheme(location)
    target = ARROW_SCHEMES.get(s)  # type: ignore[arg-type]
    if target is None:
        raise ConfigError(
            f"storage location {location}: scheme '{s}:' cannot be read from Python (pyarrow.fs serves file:, "
            f"{', '.join(sorted(k + ':' for k in ARROW_SCHEMES))}); use one of those for the storage settings "
            "that the Python side reads (storage.staging, train.checkpoint_dir, evaluate.report_dir), or a "
            "locally mounted path (/dbfs/..., a FUSE mount)")
    return target + location[len(s):]  # type: ignore[arg-type]


def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def filesystem_and_path(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system that serves ``location`` and the path inside it."""
    uri = to_arrow_uri(location)
    if is_local(location):
        return pafs.LocalFileSystem(), uri
    try:
        return _from_uri(uri)
    except (OSError, ValueError) as e:
        raise ConfigError(f"storage location {location}: cannot open it from Python ({e})") from e


def join(location: str, *parts: str) -> str:
    """``location/part/...`` keeping the location's form (URI or plain path)."""
    out = location.rstrip("/") if location.rstrip("/") else location
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def exists(location: str) -> bool:
    fs, path = filesystem_and_path(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    fs, path = filesystem_and_path(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def list_files(location: str) -> list[str]:
    """Every file under ``location`` (recursively), as paths of its file system; empty when it is missing."""
    fs, path = filesystem_and_path(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def delete_tree(location: str) -> bool:
    """Remove a folder and everything in it; False when there was nothing there."""
    fs, path = filesystem_and_path(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return False
    if info.type == pafs.FileType.File:
        fs.delete_file(path)
    else:
        fs.delete_dir(path)
    return True


def parquet_dataset(location: str) -> ds.Dataset:
    """A Parquet dataset (a folder as Spark writes it: ``_SUCCESS`` and ``.crc`` files are skipped)."""
    fs, path = filesystem_and_path(location)
    return ds.dataset(path, format="parquet", filesystem=fs)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem_and_path(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write a file whole: a temporary file beside it, then a move (a rename on local storage, so a crash
    never leaves half a file; one PUT on object stores, which replace objects whole anyway)."""
    fs, path = filesystem_and_path(location)
    parent, _, name = path.rpartition("/")
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.tmp" if parent else f".{name}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def upload_file(local: str | Path, location: str) -> None:
    write_bytes(location, Path(local).read_bytes())


def copy_dir_to_local(location: str, dest: str | Path) -> Path:
    """Copy the folder ``location`` to the local folder ``dest``."""
    fs, path = filesystem_and_path(location)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dest


def copy_dir_from_local(src: str | Path, location: str) -> None:
    """Copy the local folder ``src`` to the folder ``location``."""
    fs, path = filesystem_and_path(location)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(src).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def local_cache_dir(staging: str, name: str) -> Path:
    """A local folder for ``name`` (e.g. the model cache the scoring jobs ship to executors): under the staging
    folder when that is local, else under the machine's temporary folder (never ``Path`` of a URI)."""
    local = local_path(staging)
    if local is not None:
        return local / name
    return Path(tempfile.gettempdir()) / f"adrec-spark-{os.getuid() if hasattr(os, 'getuid') else 'user'}" / name


def mlflow_artifact_uri(location: str) -> str:
    """An MLflow artifact root from a storage setting: a local path as a ``file://`` URI, Hadoop's ``s3a``/``s3n``
    as MLflow's ``s3``; other URIs (``gs``, ``abfss``, ``hdfs``, ``dbfs``...) as given."""
    local = local_path(location)
    if local is not None:
        return local.as_uri()
    s = scheme(location)
    if s in ("s3a", "s3n"):
        return "s3" + location[len(s):]  # type: ignore[arg-type]
    return location

