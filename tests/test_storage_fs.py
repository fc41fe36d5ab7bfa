"""Storage settings as URIs on the Python side: the scheme mapping of adrec_spark.io.fs (expected values written
by hand), local file: URIs through pyarrow, and the readers that used to go through pathlib."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adrec_spark import schema as S
from adrec_spark.config import MlflowConfig
from adrec_spark.errors import ConfigError
from adrec_spark.io import fs


@pytest.mark.parametrize(("location", "want"), [
    ("s3a://bucket/adrec/staging", "s3://bucket/adrec/staging"),
    ("s3n://bucket/x", "s3://bucket/x"),
    ("s3://bucket/x", "s3://bucket/x"),
    ("S3A://bucket/x", "s3://bucket/x"),
    ("gs://bucket/x", "gs://bucket/x"),
    ("gcs://bucket/x", "gs://bucket/x"),
    ("abfss://box@acct.dfs.core.windows.net/x", "abfss://box@acct.dfs.core.windows.net/x"),
    ("abfs://box@acct.dfs.core.windows.net/x", "abfs://box@acct.dfs.core.windows.net/x"),
    ("hdfs://namenode:8020/x", "hdfs://namenode:8020/x"),
    ("file:///tmp/adrec/x", "/tmp/adrec/x"),
    ("file:/tmp/adrec/x", "/tmp/adrec/x"),  # Hadoop's own spelling
    ("file://localhost/tmp/x", "/tmp/x"),
    ("file:///tmp/with%20space/x", "/tmp/with space/x"),
    ("/tmp/adrec/../adrec/x", "/tmp/adrec/x"),
])
def test_hadoop_schemes_map_to_pyarrow(location: str, want: str) -> None:
    assert fs.to_arrow_uri(location) == want


def test_a_plain_relative_path_is_local_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert fs.to_arrow_uri("./lakehouse/_staging") == str(tmp_path / "lakehouse" / "_staging")
    assert fs.local_path("lakehouse") == tmp_path / "lakehouse"
    assert fs.local_path("s3a://b/x") is None


@pytest.mark.parametrize("location", ["wasbs://box@acct.blob.core.windows.net/x", "dbfs:/adrec/x",
                                      "viewfs://cluster/x", "oss://bucket/x"])
def test_a_scheme_pyarrow_cannot_serve_is_a_clear_error(location: str) -> None:
    with pytest.raises(ConfigError, match=rf"scheme '{location.split(':')[0]}:' cannot be read from Python"):
        fs.filesystem_and_path(location)


@pytest.mark.parametrize("location", ["file://otherhost/tmp/x", "file:relative/x"])
def test_a_malformed_file_uri_is_a_clear_error(location: str) -> None:
    with pytest.raises(ConfigError, match="file:"):
        fs.local_path(location)


def test_remote_locations_open_the_mapped_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(fs, "_from_uri", lambda uri: (seen.append(uri), (None, "path"))[1])
    fs.filesystem_and_path("s3a://bucket/adrec/staging/training")
    fs.filesystem_and_path("gs://bucket/x")
    assert seen == ["s3://bucket/adrec/staging/training", "gs://bucket/x"]


def test_join_keeps_the_uri_form() -> None:
    assert fs.join("s3a://b/adrec/", "training", "run1") == "s3a://b/adrec/training/run1"
    assert fs.join("file:///tmp/s", "models") == "file:///tmp/s/models"


def test_local_cache_of_a_remote_staging_is_a_real_local_folder(tmp_path: Path) -> None:
    assert fs.local_cache_dir(f"file://{tmp_path}/staging", "models") == tmp_path / "staging" / "models"
    remote = fs.local_cache_dir("s3a://bucket/adrec/staging", "models")
    assert remote.is_absolute() and "s3a:" not in str(remote) and remote.name == "models"


def test_mlflow_artifact_root_from_a_storage_setting(tmp_path: Path) -> None:
    assert fs.mlflow_artifact_uri(str(tmp_path / "art")) == (tmp_path / "art").as_uri()
    assert fs.mlflow_artifact_uri(f"file://{tmp_path}/art") == (tmp_path / "art").as_uri()
    assert fs.mlflow_artifact_uri("s3a://bucket/mlflow") == "s3://bucket/mlflow"
    assert fs.mlflow_artifact_uri("gs://bucket/mlflow") == "gs://bucket/mlflow"


def test_file_uri_round_trip_list_and_delete(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/staging"
    fs.write_bytes(fs.join(root, "a", "one.bin"), b"1")
    fs.write_bytes(fs.join(root, "a", "b", "two.bin"), b"22")
    assert fs.read_bytes(fs.join(root, "a", "b", "two.bin")) == b"22"
    assert fs.is_file(fs.join(root, "a", "one.bin")) and fs.exists(root) and not fs.is_file(root)
    assert fs.list_files(root) == [str(tmp_path / "staging" / "a" / "b" / "two.bin"),
                                   str(tmp_path / "staging" / "a" / "one.bin")]
    local = fs.copy_dir_to_local(fs.join(root, "a"), tmp_path / "copy")
    assert (local / "b" / "two.bin").read_bytes() == b"22"
    fs.copy_dir_from_local(local, fs.join(root, "back"))
    assert fs.read_bytes(fs.join(root, "back", "one.bin")) == b"1"
    assert fs.delete_tree(root) and not (tmp_path / "staging").exists()
    assert not fs.delete_tree(root) and fs.list_files(root) == []


def _write_split(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    cols = {S.HISTORY_TEXT: [f"h{i}" for i in range(n)], S.AD_TEXT: [f"a{i}" for i in range(n)],
            **{c: [float(i) for i in range(n)] for c in S.NUMERIC_FEATURES},
            S.LABEL: [i % 2 for i in range(n)], S.RELEVANCE: [float(i % 2) for i in range(n)]}
    pq.write_table(pa.table(cols), folder / "part-0.parquet")
    (folder / "_SUCCESS").write_text("")


def test_pair_dataset_reads_a_file_uri(tmp_path: Path) -> None:
    from adrec_spark.model.data import PairDataset

    _write_split(tmp_path / "train", 5)
    data = PairDataset(f"file://{tmp_path}/train").read_all()
    assert data.ad_text == ["a0", "a1", "a2", "a3", "a4"]
    assert data.label.tolist() == [0, 1, 0, 1, 0]


def test_artifact_root_given_as_s3a_is_created_as_s3(tmp_path: Path) -> None:
    from adrec_spark.registry import registry

    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="uri-test",
                       artifact_location="s3a://bucket/mlflow")
    exp_id = registry.configure_mlflow(cfg)
    assert registry.client(cfg).get_experiment(exp_id).artifact_location == "s3://bucket/mlflow"
