"""Fine-tuning on all the training rows on a GPU machine that has no Spark, then the evaluation here.

``python bench/run.py quality-gpu --dataset movielens|demo`` prepares, on this (Spark) machine, the folder that
travels to the GPU machine, ``bench/.work/quality-gpu-<dataset>/carry``: the quality bench's ETL (reused when
already run), the train/valid/test splits exported as the training job exports them (zstd Parquet), the base
model in half precision, ``params.json`` (the GPU recipe: every training row, several epochs, 128 tokens,
bf16 on CUDA) and ``run.sh``, the one command to run there from the repository root. The folder must stay
under the 64 MiB a GPU machine takes; the command fails loudly when it does not.

``python bench/run.py quality-gpu --ingest PATH`` reads back what ``run.sh`` wrote (``test_scores.parquet``,
``training_summary.json``; or ``bench/gpu_session.sh``'s ``<dataset>.tgz`` of several runs, of which the one
with the best validation AUC is evaluated), joins the scores to the same test rows, computes the same baselines as the
quality bench and the evaluation job's metrics, intervals and paired NDCG@10 differences, and writes
``bench/results/quality-gpu-<dataset>.json`` (``quality-offline-<dataset>-cpu.json`` when the scores were
trained on a CPU). ``--set K=V`` (repeatable) changes the recipe at preparation, e.g. for a reduced CPU run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from pathlib import Path

from bench.common import ROOT, WORK, save
from bench.quality_bench import DATASETS, SCRIPT_HEAD, Dataset, _print_tables, prepare_etl, step

CARRY_LIMIT_BYTES = 64 * 2**20
# On top of the dataset's config: every training row, several epochs, 128 tokens, bf16 on the GPU, a shuffle
# over the whole train split (the exported split is in time order), validation on all the valid rows.
GPU_RECIPE = ("model.max_length=128", "train.batch_size=64", "train.max_train_rows=null",
              "train.max_eval_rows=null", "train.eval_batch_size=512", "train.eval_every_steps=250",
              "train.early_stopping_patience=4", "train.learning_rate=5e-5", "train.head_learning_rate=2e-3",
              "train.warmup_ratio=0.06", "train.log_every_steps=50", "train.precision=bf16", "train.use_gpu=true",
              "train.shuffle_buffer_rows=200000")
EPOCHS = {"movielens": 3, "demo": 4}

EXPORT = SCRIPT_HEAD + """
from bench.quality_gpu import export_for_offline
print(json.dumps(export_for_offline(spark, cfg, str(work / "offline-export"))))
"""
INGEST = SCRIPT_HEAD + """
from bench.quality_gpu import evaluate_ingested
print(json.dumps(evaluate_ingested(spark, cfg, json.loads(Path({manifest!r}).read_text()), {scores!r})))
"""


def export_for_offline(spark, cfg, out: str) -> dict[str, object]:
    """The latest ``training_examples`` (with the text-similarity features when the model reads them) split as
    the training job splits it, exported to ``out`` as the training job exports it; the table version, cut-offs
    and rows (what the ingest needs to find the same test rows again)."""
    from adrec_spark import schema as S
    from adrec_spark.io import tables
    from adrec_spark.training.pipeline import export_splits, split_training_data, training_table

    version = tables.table_version(spark, cfg.storage, S.TRAINING_EXAMPLES)
    if version is None:
        raise SystemExit("no training_examples table: the ETL has not run")
    table = training_table(spark, cfg, version).cache()  # as the training job reads it
    try:
        df, cutoffs = split_training_data(table, cfg.train.split, window_days=cfg.train.window_days)
        rows = export_splits(df, out, partitions=1)
    finally:
        table.unpersist()
    return {"table_version": version, "cutoffs": cutoffs.to_tags(), "split": cutoffs.describe(), "rows": rows}


def evaluate_ingested(spark, cfg, manifest: dict[str, object], scores_path: str) -> dict[str, object]:
    """The scores at ``scores_path`` on the test rows the manifest names, with the evaluation job's baselines,
    metrics and paired differences: the table, the comparison and the AUC and NDCG@10 intervals, as JSON."""
    import math

    from adrec_spark.evaluation.offline import evaluate_offline_scores
    from adrec_spark.evaluation.pipeline import split_rows
    from adrec_spark.training.split import SplitCutoffs

    cutoffs = SplitCutoffs.from_tags(manifest["cutoffs"])  # type: ignore[arg-type]
    if cutoffs is None:
        raise SystemExit("the manifest records no split cut-offs: prepare again")
    train, test = split_rows(spark, cfg, version=int(manifest["table_version"]), cutoffs=cutoffs)  # type: ignore[call-overload]
    table, comparison, info = evaluate_offline_scores(cfg, train=train, test=test,
                                                      scores=spark.read.parquet(scores_path))

    def ok(v: float) -> float | None:
        return v if math.isfinite(v) else None

    intervals = {f"{m}|{metric}": [ok(i.ci_low), ok(i.ci_high)] for (m, metric), i in info.items()
                 if metric in ("auc", "ndcg@10")}
    return {"table": json.loads(table.to_json(orient="index")),
            "comparison": json.loads(comparison.to_json(orient="index")), "intervals": intervals}


def folder(ds: Dataset) -> Path:
    return WORK / f"quality-gpu-{ds.name}"


def recipe(ds: Dataset, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The GPU recipe for ``ds``: the model its CPU recipe trains (``model.*`` settings, e.g. the demo's
    text-similarity features), then the GPU's training settings, then ``extra``; later settings win."""
    model = tuple(s for s in ds.recipe if s.startswith("model."))
    return (*model, *GPU_RECIPE, f"train.epochs={EPOCHS[ds.name]}", *extra)


def folder_bytes(path: Path) -> dict[str, int]:
    """Bytes under each top-level entry of ``path``."""
    return {p.name: (sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size)
            for p in sorted(path.iterdir())}


def check_carry_size(carry: Path, limit: int = CARRY_LIMIT_BYTES) -> int:
    """Total bytes of ``carry``; a SystemExit naming the largest parts when over ``limit``."""
    parts = folder_bytes(carry)
    total = sum(parts.values())
    if total > limit:
        detail = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
        raise SystemExit(f"the carry folder {carry} holds {total / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB "
                         f"a GPU machine takes ({detail}): shrink the data (fewer rows, shorter history text) or "
                         "leave the model out and copy it there another way")
    return total


def recompress_split(src: Path, dst: Path) -> int:
    """One split's Parquet files as one zstd file, rows in the same order (the trainer keeps the newest rows
    last). Returns its rows."""
    import pyarrow.dataset as pds
    import pyarrow.parquet as pq

    table = pds.dataset(str(src), format="parquet").to_table()  # the export is one sorted partition
    dst.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dst / "part-0.parquet", compression="zstd", compression_level=9)
    return table.num_rows


def params_json(ds: Dataset, overrides: tuple[str, ...]) -> dict[str, object]:
    """The training settings of the recipe as TrainParams fields, paths relative to the carry folder (the
    offline trainer sets data, output and checkpoint folders itself)."""
    from adrec_spark.model.offline_train import flat_params
    from adrec_spark.training.pipeline import train_params
    from bench.common import bench_config

    cfg = bench_config(ds.work, *ds.overrides, *overrides, files=ds.files)
    p = train_params(cfg, data_dir="data", out_dir="out", base="model", init_dir=None, run_id="", resume=False)
    out = {k: v for k, v in flat_params(p).items() if k not in ("data_dir", "out_dir", "checkpoint_dir")}
    return out | {"base_model_dir": "model", "tracking_uri": None, "run_id": None, "extra": {"dataset": ds.name}}


RUN_SH = """#!/usr/bin/env bash
# {dataset}: fine-tune on every training row on a GPU machine (no Spark, Java, network or MLflow needed).
# Run from the repository root. BASE_MODEL (default: {carry}/model) is the encoder folder; $OUT (default:
# {carry}/out) receives test_scores.parquet,
# training_summary.json and train.log; bring that folder back and run
#   python bench/run.py quality-gpu --ingest <that folder>
set -euo pipefail
CARRY={carry}
OUT="${{OUT:-$CARRY/out}}"
mkdir -p "$OUT"
"${{PYTHON:-python3}}" -m adrec_spark.model.offline_train --data "$CARRY/data" --params "$CARRY/params.json" \\
  --base-model "${{BASE_MODEL:-$CARRY/model}}" --out "$OUT" --work "${{TMPDIR:-/tmp}}/adrec-offline-{dataset}" \
  2>&1 | tee "$OUT/train.log"
"""


def write_carry(ds: Dataset, overrides: tuple[str, ...], exported: dict[str, object]) -> dict[str, object]:
    """The carry folder from the exported splits: data, half-precision model, params.json, run.sh."""
    from adrec_spark.config import load_config
    from adrec_spark.model.encoder import resolve_base_model
    from adrec_spark.model.offline_train import half_precision_copy

    carry = folder(ds) / "carry"
    shutil.rmtree(carry, ignore_errors=True)
    carry.mkdir(parents=True)
    export = ds.work / "offline-export"
    rows = {s: recompress_split(export / s, carry / "data" / s) for s in ("train", "valid", "test")}
    if rows != exported["rows"]:
        raise SystemExit(f"the exported splits hold {rows} rows, the export reported {exported['rows']}")
    base = load_config(ds.files, overrides=[*ds.overrides, *overrides]).model.base_model
    model = half_precision_copy(resolve_base_model(base), carry / "model")
    (carry / "params.json").write_text(json.dumps(params_json(ds, overrides), indent=2))
    rel = carry.relative_to(ROOT)
    (carry / "run.sh").write_text(RUN_SH.format(dataset=ds.name, carry=rel))
    (carry / "run.sh").chmod(0o755)
    return {"rows": rows, "carry_bytes": check_carry_size(carry), "base_model": base,
            "base_model_max_abs_rounding_error": model["max_abs_rounding_error"], "carry": str(rel)}


def prepare(dataset: str, extra: tuple[str, ...] = ()) -> Path:
    ds = DATASETS[dataset]
    etl = prepare_etl(ds)
    overrides = recipe(ds, extra)
    print(f"{dataset}: exporting the train/valid/test splits ...", flush=True)
    shutil.rmtree(ds.work / "offline-export", ignore_errors=True)
    exported = step(ds, "export", overrides, code=EXPORT)
    carried = write_carry(ds, overrides, exported)
    manifest = {"dataset": dataset, "files": list(ds.files), "overrides": [*ds.overrides, *overrides],
                "recipe": list(overrides), "etl": etl, "table_version": exported["table_version"],
                "cutoffs": exported["cutoffs"], "split": exported["split"], **carried,
                "prepared": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    (folder(ds) / "manifest.json").write_text(json.dumps(manifest, indent=2))
    rel = carried["carry"]
    print(f"\ncarry folder: {rel} ({carried['carry_bytes'] / 2**20:.1f} MiB of {CARRY_LIMIT_BYTES / 2**20:.0f}); "
          f"rows {carried['rows']}\non the GPU machine, from the repository root (with {rel} carried):\n"
          f"  bash {rel}/run.sh\nthen here, with the folder it wrote ($OUT):\n"
          f"  python bench/run.py quality-gpu --ingest <that folder>")
    return folder(ds) / "carry"


SELECTION_RULE = ("the run with the highest best validation AUC (valid split, before any test row is read); "
                  "the test split is evaluated for that run only")


def training_runs(path: Path, work: Path) -> dict[str, Path]:
    """The training runs at ``path``, by variant: one run folder (``test_scores.parquet`` and
    ``training_summary.json``: variant ``""``), or a folder or ``.tgz`` (what ``bench/gpu_session.sh`` brings
    back) of ``[<dataset>/]<variant>/`` folders, each a run or a failed run's ``train.log`` (extracted under
    ``work``)."""
    import tarfile

    from adrec_spark.model.offline_train import SUMMARY_FILE

    if path.is_file() and path.name.endswith((".tgz", ".tar.gz")):
        shutil.rmtree(work, ignore_errors=True)
        with tarfile.open(path) as tar:
            tar.extractall(work, filter="data")
        path = work
    if (path / SUMMARY_FILE).is_file():
        return {"": path}
    runs = {f.parent.name: f.parent for f in sorted(path.rglob("train.log"))}
    runs |= {f.parent.name: f.parent for f in sorted(path.rglob(SUMMARY_FILE))}
    if not runs:
        raise SystemExit(f"no training run at {path}: give the folder or .tgz the GPU machine wrote")
    return runs


def select_run(runs: dict[str, Path]) -> tuple[str, list[dict[str, object]]]:
    """The run to evaluate (:data:`SELECTION_RULE`) and every run's validation record: its overrides, step 0
    and best validation AUC, steps, epochs, minutes; a run without a summary is listed as failed with the
    last line of its log."""
    import math

    from adrec_spark.model.offline_train import SCORES_FILE, SUMMARY_FILE

    table: list[dict[str, object]] = []
    for variant, path in runs.items():
        if not (path / SUMMARY_FILE).is_file() or not (path / SCORES_FILE).is_file():
            log = path / "train.log"
            last = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
            table.append({"variant": variant, "status": "failed", "reason": last[0] if last else "no log"})
            continue
        sm = json.loads((path / SUMMARY_FILE).read_text())
        table.append({"variant": variant, "status": "trained", "overrides": sm.get("overrides", {}),
                      "tokens": sm.get("tokens"), "initial_valid_auc": sm.get("initial_valid_auc"),
                      "best_valid_auc": sm.get("best_valid_auc"), "steps": sm.get("steps"),
                      "epochs": sm.get("epochs"), "minutes": sm.get("minutes"),
                      "stopped_early": sm.get("stopped_early")})
    ok = [r for r in table if r["status"] == "trained" and isinstance(r["best_valid_auc"], float)
          and math.isfinite(r["best_valid_auc"])]
    if not ok:
        raise SystemExit(f"no run trained to the end: {table}")
    best = max(ok, key=lambda r: r["best_valid_auc"])  # the first of equals
    return str(best["variant"]), table


def ingest(path: Path, dataset: str | None = None) -> Path:
    from adrec_spark.model.offline_train import SCORES_FILE, SUMMARY_FILE

    runs = training_runs(path, WORK / "quality-gpu-ingest")
    variant, selection = select_run(runs)
    scores_dir = runs[variant]
    if len(runs) > 1:
        print(f"runs: {json.dumps(selection, indent=1)}\nselected: {variant} ({SELECTION_RULE})")
    summary_path, scores_path = scores_dir / SUMMARY_FILE, scores_dir / SCORES_FILE
    summary = json.loads(summary_path.read_text())
    dataset = dataset or summary.get("dataset")
    if dataset not in DATASETS:
        raise SystemExit(f"unknown dataset {dataset!r}: give --dataset ({', '.join(DATASETS)})")
    ds = DATASETS[dataset]
    manifest_path = folder(ds) / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"{manifest_path} is missing: the scores must be ingested where they were prepared")
    m = json.loads(manifest_path.read_text())
    ev = step(ds, "ingest", (*m["recipe"], "evaluate.ks=[5, 10]"), code=INGEST, manifest=str(manifest_path),
              scores=str(scores_path.resolve()))
    _print_tables(ev)
    cost = {k: summary.get(k) for k in ("examples", "epochs", "tokens", "minutes", "device", "precision",
                                         "examples_seen", "wall_minutes", "samples_per_sec", "stopped_early")}
    on_gpu = "cuda" in str(summary.get("device", ""))
    name = f"quality-gpu-{dataset}" if on_gpu else f"quality-offline-{dataset}-cpu"
    print(f"\nfine-tuning cost: {cost['examples']:,} examples x {cost['epochs']} epoch(s) at {cost['tokens']} "
          f"tokens, {cost['minutes']:.1f} min on {cost['device']}")
    save(name, {
        "command": f"python bench/run.py quality-gpu --dataset {dataset}"
                   + "".join(f" --set {x}" for x in m["recipe"][len(recipe(ds)):])
                   + (f"; bash {m['carry']}/run.sh (on the training machine); python bench/run.py quality-gpu "
                      "--ingest DIR" if len(runs) == 1 else "; bash bench/gpu_session.sh (on the training machine, "
                      "RUNS naming the runs listed here); python bench/run.py quality-gpu --ingest "
                      f"{dataset}.tgz"),
        "dataset": dataset, "recipe": m["recipe"], "trained_on": {"device": summary.get("device"),
                                                                  "versions": summary.get("versions")},
        "prepared": {k: m[k] for k in ("table_version", "split", "rows", "carry_bytes", "prepared")},
        "training": {"test_auc": summary.get("test", {}).get("auc"),
                     "pretrained_test_auc": summary.get("pretrained_test_auc"),
                     "best_valid_auc": summary.get("best_valid_auc")},
        "cost": cost, "history": summary.get("validation_curve"), "table": ev["table"],
        "comparison": ev["comparison"], "intervals": ev["intervals"],
        **({"selection": {"rule": SELECTION_RULE, "selected": variant, "runs": selection},
            "overrides": summary.get("overrides", {})} if len(runs) > 1 else {})})
    return scores_dir


def run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python bench/run.py quality-gpu", description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), help="the dataset to prepare (or to ingest as)")
    ap.add_argument("--ingest", type=Path, metavar="PATH",
                    help="evaluate the scores in PATH: what run.sh wrote, or bench/gpu_session.sh's <dataset>.tgz "
                         "(several runs: the one with the best validation AUC)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="K=V",
                    help="change the recipe at preparation (repeatable), e.g. train.max_train_rows=2000")
    args = ap.parse_args(argv)
    if args.ingest:
        if args.sets:
            ap.error("--set applies to the preparation; the ingest reads the recipe it was prepared with")
        ingest(args.ingest, args.dataset)
    elif args.dataset:
        prepare(args.dataset, tuple(args.sets))
    else:
        ap.error("give --dataset to prepare, or --ingest DIR")
    return 0
