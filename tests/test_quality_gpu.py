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


def test_run_sh_is_one_bash_command_from_the_repository_root(tmp_path) -> None:
    script = QG.RUN_SH.format(dataset="demo", carry="bench/.work/quality-gpu-demo/carry")
    (tmp_path / "run.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "run.sh")]).returncode == 0
    assert "-m adrec_spark.model.offline_train --data \"$CARRY/data\" --params \"$CARRY/params.json\"" in script
    assert 'OUT="${OUT:-$CARRY/out}"' in script


def test_bench_steps_are_valid_python_once_filled_in() -> None:
    common = {"root": "/r", "work": "/w", "files": ("demo",), "overrides": ("a=1",), "step": "x", "dataset": "demo",
              "demo": QB.DEMO_LOGS}
    for name, code in {"step": QB.STEP, "export": QG.EXPORT, "ingest": QG.INGEST}.items():
        compile(code.format(**common, manifest="/m.json", scores="/s.parquet"), name, "exec")
