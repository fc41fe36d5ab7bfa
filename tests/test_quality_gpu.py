"""The GPU quality bench's preparation without Spark work: the carry folder's size limit, the splits it
rewrites, the training settings and the one command it writes, and its steps' scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not part of the installed package

from adrec_spark.model import offline_train as OT
from bench import quality_bench as QB
from bench import quality_gpu as QG


def test_carry_over_the_limit_fails_loudly_naming_the_largest_part(tmp_path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"x" * 3000)
    (tmp_path / "params.json").write_text("{}")
    assert QG.check_carry_size(tmp_path, limit=4000) == 3002
    with pytest.raises(SystemExit, match=r"over the 0 MiB .*\(model 0\.0 MiB, params.json 0\.0 MiB\)"):
        QG.check_carry_size(tmp_path, limit=2000)


def test_splits_are_rewritten_as_one_file_in_the_same_row_order(tmp_path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    df = pd.DataFrame({"event_id": [f"e{i}" for i in range(10)], "event_ts": np.arange(10.0)})
    df.iloc[:4].to_parquet(src / "part-00000.parquet", index=False)
    df.iloc[4:].to_parquet(src / "part-00001.parquet", index=False)
    assert QG.recompress_split(src, tmp_path / "carry" / "train") == 10
    files = list((tmp_path / "carry" / "train").iterdir())
    assert [f.name for f in files] == ["part-0.parquet"]
    back = pd.read_parquet(files[0])
    assert back["event_id"].tolist() == df["event_id"].tolist()
    import pyarrow.parquet as pq

    assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == "ZSTD"


@pytest.mark.parametrize("dataset", sorted(QB.DATASETS))
def test_gpu_recipe_uses_every_training_row_at_128_tokens_in_bf16_and_the_offline_trainer_accepts_it(
        dataset, tmp_path) -> None:
    ds = QB.DATASETS[dataset]
    params = QG.params_json(ds, QG.recipe(ds))
    assert params["max_train_rows"] is None and params["max_eval_rows"] is None
    assert params["max_length"] >= 128 and params["epochs"] >= 3
    assert params["precision"] == "bf16" and params["use_gpu"] is True
    assert params["tracking_uri"] is None and params["extra"] == {"dataset": dataset}
    (tmp_path / "params.json").write_text(json.dumps(params))
    p = OT.read_params(tmp_path / "params.json", data=tmp_path / "data", work=tmp_path / "w",
                       base_model=tmp_path)
    assert p.base_model_dir == str(tmp_path) and p.data_dir == str(tmp_path / "data")
    reduced = QG.params_json(ds, QG.recipe(ds, ("train.max_train_rows=2000", "train.use_gpu=false")))
    assert reduced["max_train_rows"] == 2000 and reduced["use_gpu"] is False


@pytest.mark.parametrize("dataset", sorted(QB.DATASETS))
def test_gpu_recipe_keeps_the_model_settings_of_the_cpu_recipe(dataset) -> None:
    # the demo's model reads the text-similarity features on CPU; the GPU run must train the same model
    ds = QB.DATASETS[dataset]
    cpu = QG.params_json(ds, ds.recipe)
    gpu = QG.params_json(ds, QG.recipe(ds))
    assert gpu["text_similarity_features"] == cpu["text_similarity_features"]
    if dataset == "demo":
        assert gpu["text_similarity_features"] is True


def test_run_sh_is_one_bash_command_from_the_repository_root(tmp_path) -> None:
    script = QG.RUN_SH.format(dataset="demo", carry="bench/.work/quality-gpu-demo/carry")
    (tmp_path / "run.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "run.sh")]).returncode == 0
    assert "-m adrec_spark.model.offline_train --data \"$CARRY/data\" --params \"$CARRY/params.json\"" in script
    assert 'OUT="${OUT:-$CARRY/out}"' in script
    assert '--base-model "${BASE_MODEL:-$CARRY/model}"' in script  # one model folder can serve two carries


def test_bench_steps_are_valid_python_once_filled_in() -> None:
    common = {"root": "/r", "work": "/w", "files": ("demo",), "overrides": ("a=1",), "step": "x", "dataset": "demo",
              "demo": QB.DEMO_LOGS}
    for name, code in {"step": QB.STEP, "export": QG.EXPORT, "ingest": QG.INGEST}.items():
        compile(code.format(**common, manifest="/m.json", scores="/s.parquet"), name, "exec")


def test_the_export_carries_the_text_similarity_features_the_model_reads(spark, tmp_path, monkeypatch) -> None:
    """With ``model.text_similarity_features`` on, the exported splits hold the features as the training job's
    export does (the offline trainer refuses splits without them)."""
    import pyarrow.parquet as pq

    from adrec_spark import schema as S
    from adrec_spark.io import tables
    from adrec_spark.training import pipeline as TP
    from tests.conftest import make_config
    from tests.test_text_similarity import _recording_encoder

    rows = []
    for i in range(40):
        rows.append({S.HISTORY_TEXT: f"clicked: shoes {i % 3}", S.AD_TEXT: f"ad {i % 5}",
                     **dict.fromkeys(S.NUMERIC_FEATURES, 0.5), S.LABEL: i % 2, S.RELEVANCE: float(i % 2),
                     S.USER_ID: f"u{i % 4}", S.AD_ID: f"a{i % 5}", S.EVENT_TS: 1_700_000_000.0 + 3600 * i,
                     S.EVENT_ID: f"e{i}", S.SPLIT: "train", S.HISTORY_CLICK_TEXTS: [f"shoes {i % 3}"],
                     S.HISTORY_SEARCH_TEXTS: ["running"], S.HISTORY_REVIEW_TEXTS: []})
    table = spark.createDataFrame(pd.DataFrame(rows))
    monkeypatch.setattr(tables, "table_version", lambda *a, **k: 3)
    monkeypatch.setattr(tables, "read_table", lambda *a, **k: table)
    monkeypatch.setattr(TP, "text_encoder", lambda cfg: _recording_encoder(tmp_path / "embedded.txt"))
    cfg = make_config(tmp_path, "model.text_similarity_features=true", "train.split.method=fraction")
    exported = QG.export_for_offline(spark, cfg, str(tmp_path / "export"))
    assert exported["table_version"] == 3 and sum(exported["rows"].values()) == 40
    names = pq.read_schema(next((tmp_path / "export" / "train").glob("*.parquet"))).names
    assert set(S.TEXT_SIMILARITY_FEATURES) <= set(names)
    assert (tmp_path / "embedded.txt").read_text().count("ad 0\n") == 1  # each text embedded once


def _run(folder: Path, valid: float | None, **overrides: object) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("training ...\nerror: CUDA out of memory\n")
    if valid is not None:
        (folder / OT.SUMMARY_FILE).write_text(json.dumps({
            "best_valid_auc": valid, "initial_valid_auc": 0.70, "overrides": overrides, "steps": 10, "epochs": 1,
            "minutes": 0.5, "stopped_early": False, "tokens": 128, "test": {"auc": 0.99}}))
        (folder / OT.SCORES_FILE).write_bytes(b"")
    return folder


def test_several_runs_come_back_as_one_archive_and_the_best_on_validation_is_evaluated(tmp_path) -> None:
    import tarfile

    runs = tmp_path / "runs"
    _run(runs / "movielens" / "base", 0.7341)
    _run(runs / "movielens" / "t384", 0.7390, max_length=384)
    _run(runs / "movielens" / "lr", 0.7390, learning_rate=1e-4)  # ties: the first in name order wins
    _run(runs / "movielens" / "oom", None)
    with tarfile.open(tmp_path / "movielens.tgz", "w:gz") as tar:
        tar.add(runs / "movielens", arcname="movielens")
    found = QG.training_runs(tmp_path / "movielens.tgz", tmp_path / "x")
    assert sorted(found) == ["base", "lr", "oom", "t384"]
    assert found["t384"] == tmp_path / "x" / "movielens" / "t384"
    chosen, table = QG.select_run(found)
    assert chosen == "lr"
    by = {r["variant"]: r for r in table}
    assert by["oom"] == {"variant": "oom", "status": "failed", "reason": "error: CUDA out of memory"}
    assert by["t384"]["overrides"] == {"max_length": 384} and by["t384"]["best_valid_auc"] == 0.7390
    assert all("test" not in str(r) for r in table)  # selection reads validation only
    one = _run(tmp_path / "single", 0.71)
    assert QG.training_runs(one, tmp_path / "y") == {"": one}
    with pytest.raises(SystemExit, match="no run trained to the end"):
        QG.select_run({"oom": runs / "movielens" / "oom"})
