"""The training job: training_examples at a pinned Delta version -> Parquet staging -> TorchDistributor ->
MLflow run (params, lineage, metrics, plots, pyfunc) -> registry version with alias ``challenger`` ->
promotion gate against ``champion`` on the same test data."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import AppConfig
from adrec_spark.errors import InputDataError, TrainingDataError
from adrec_spark.etl import split as split_mod
from adrec_spark.frames import require_columns
from adrec_spark.io import fs, tables
from adrec_spark.model.data import PAIR_COLUMNS
from adrec_spark.model.encoder import resolve_base_model
from adrec_spark.model.training import TrainParams, binary_metrics, train_worker
from adrec_spark.registry import registry

log = logging.getLogger(__name__)

EXPORT_COLUMNS = (*PAIR_COLUMNS, S.USER_ID, S.AD_ID, S.EVENT_TS, S.EVENT_ID)


@dataclass(frozen=True)
class TrainingResult:
    run_id: str
    model_version: int
    promoted: bool
    decision: str
    test_auc: float
    pretrained_test_auc: float | None
    champion_test_auc: float | None
    table_version: int
    rows: dict[str, int]
    summary: dict[str, object]


def select_window(df: DataFrame, *, window_days: int | None, valid_fraction: float,
                  test_fraction: float) -> DataFrame:
    """The latest ``window_days`` of examples, re-split by time inside the window (for periodic retraining).
    Without a window the ETL's split is kept."""
    if window_days is None:
        return df
    latest = df.agg(F.max(S.EVENT_TIME)).first()[0]
    if latest is None:
        return df
    start = latest - dt.timedelta(days=window_days)
    windowed = df.where(F.col(S.EVENT_TIME) > F.lit(start)).drop(S.SPLIT).persist(StorageLevel.MEMORY_AND_DISK)
    cutoffs = split_mod.fraction_cutoffs(windowed, valid_fraction=valid_fraction, test_fraction=test_fraction)
    log.info("retraining window: examples after %s, re-split at %s", start, cutoffs)
    return split_mod.assign_split(windowed, cutoffs)


def export_splits(df: DataFrame, out: str, *, partitions: int) -> dict[str, int]:
    """Write each split as Parquet (sorted by time, so a rerun writes the same files); returns row counts."""
    require_columns(df, (*EXPORT_COLUMNS, S.SPLIT), "export_splits")
    counts = {r[S.SPLIT]: int(r["count"]) for r in df.groupBy(S.SPLIT).count().collect()}
    for name in (S.TRAIN, S.VALID, S.TEST):
        if not counts.get(name):
            raise TrainingDataError(f"the {name} split of training_examples is empty ({counts}): run the ETL on "
                                    "more dates or change etl.split")
        (df.where(F.col(S.SPLIT) == name).select(*EXPORT_COLUMNS)
         .repartitionByRange(partitions, S.EVENT_TS, S.USER_ID, S.AD_ID, S.EVENT_ID)
         .sortWithinPartitions(S.EVENT_TS, S.USER_ID, S.AD_ID, S.EVENT_ID)
         .write.mode("overwrite").parquet(f"{out}/{name}"))
    return {k: counts.get(k, 0) for k in (S.TRAIN, S.VALID, S.TEST)}


def drop_staging(staging: str) -> None:
    """Delete a run's exported splits (user ids and history text: personal data) once training is done with
    them, whether it succeeded or failed, on any storage. ``forget-users`` cleans what a killed run left."""
    try:
        fs.delete_tree(staging)
    except OSError as e:  # the run's own error, if any, matters more
        log.warning("could not delete the training splits at %s (%s): delete them, or run forget-users", staging,
                    e)


def _distributor_local_mode(spark: SparkSession, run_on: str) -> bool:
    if run_on == "driver":
        return True
    if run_on == "executors":
        return False
    return spark.sparkContext.master.startswith("local")


def _run_distributed(spark: SparkSession, cfg: AppConfig, params: TrainParams) -> dict[str, object]:
    from pyspark.ml.torch.distributor import TorchDistributor

    local_mode = _distributor_local_mode(spark, cfg.train.run_on)
    log.info("TorchDistributor: %d process(es), %s, gpu=%s", cfg.train.num_processes,
             "on the driver" if local_mode else "on executors", cfg.train.use_gpu)
    out = TorchDistributor(num_processes=cfg.train.num_processes, local_mode=local_mode,
                           use_gpu=cfg.train.use_gpu).run(train_worker, params.to_json())
    if not isinstance(out, dict) or "test" not in out:
        raise TrainingDataError(f"training ended without a result: {out!r}")
    return out


def _params(cfg: AppConfig, *, data_dir: str, out_dir: str, base: str, init_dir: str | None, run_id: str,
            resume: bool) -> TrainParams:
    t, m = cfg.train, cfg.model
    return TrainParams(
        data_dir=data_dir, out_dir=out_dir, base_model_dir=base, init_model_dir=init_dir,
        checkpoint_dir=fs.join(t.checkpoint_dir, cfg.mlflow.model_name), resume=resume,
        max_length=m.max_length, pooling=m.pooling, dropout=m.dropout, numeric_hidden=m.numeric_hidden,
        user_features=list(m.user_features),
        loss=t.loss, ranking_loss_weight=t.ranking_loss_weight, users_per_batch=t.users_per_batch,
        learning_rate=t.learning_rate, head_learning_rate=t.head_learning_rate,
        weight_decay=t.weight_decay, warmup_ratio=t.warmup_ratio, max_grad_norm=t.max_grad_norm, epochs=t.epochs,
        batch_size=t.batch_size, eval_batch_size=t.eval_batch_size, max_steps=t.max_steps,
        max_train_rows=t.max_train_rows, max_eval_rows=t.max_eval_rows,
        early_stopping_patience=t.early_stopping_patience, eval_every_steps=t.eval_every_steps,
        trainable=t.trainable, top_k_layers=t.top_k_layers, lora=t.lora, lora_r=t.lora_r, lora_alpha=t.lora_alpha,
        lora_dropout=t.lora_dropout, precision=t.precision, seed=t.seed, use_gpu=t.use_gpu,
        log_every_steps=t.log_every_steps, shuffle_buffer_rows=t.shuffle_buffer_rows,
        zero_shot_baseline=t.zero_shot_baseline and init_dir is None, wide_init=t.wide_init,
        tracking_uri=cfg.mlflow.tracking_uri, run_id=run_id)


def _champion_auc(cfg: AppConfig, data_dir: str, work: Path) -> tuple[float | None, int | None]:
    """The current champion's test AUC on this run's test split (None when there is no champion)."""
    from adrec_spark.errors import ModelResolutionError
    from adrec_spark.model.data import PairDataset
    from adrec_spark.model.inference import Scorer

    try:
        champ = registry.resolve(cfg.mlflow, alias=cfg.train.champion_alias)
    except ModelResolutionError:
        return None, None
    model_dir = registry.download_model_dir(cfg.mlflow, champ, work / "champion")
    test = PairDataset(fs.join(data_dir, S.TEST), max_rows=cfg.train.max_eval_rows).read_all()
    scores = Scorer(model_dir, batch_size=cfg.train.eval_batch_size).score(test.ad_text, test.history_text,
                                                                         test.numeric)
    return binary_metrics(test.label, scores)["auc"], champ.version


def _log_plots(run_id: str, summary: dict[str, object], out_dir: Path) -> None:
    import matplotlib.pyplot as plt
    import mlflow
    from mlflow.tracking import MlflowClient

    from adrec_spark.training import plots

    c = MlflowClient()
    loss = [(m.step, m.value) for m in c.get_metric_history(run_id, "train_loss")]
    auc = [(m.step, m.value) for m in c.get_metric_history(run_id, "valid_auc")]
    fig = plots.learning_curves(loss, auc)
    mlflow.log_figure(fig, "plots/learning_curves.png")
    plt.close(fig)
    pred = np.load(out_dir / "test_predictions.npz")
    if len(np.unique(pred["label"])) == 2:
        fig = plots.roc_pr_calibration(pred["label"], {"fine-tuned": pred["score"]})
        mlflow.log_figure(fig, "plots/test_roc_pr_calibration.png")
        plt.close(fig)


def run_training(spark: SparkSession, cfg: AppConfig, *, init_from: str | None = None,
                 resume: bool = False) -> TrainingResult:
    """Train, log, register as ``challenger`` and gate the promotion to ``champion``.

    Args:
        init_from: an alias (e.g. ``champion``) to warm-start from, for periodic retraining.
        resume: continue from the last checkpoint of an interrupted run of this model.
    """
    import mlflow

    t0 = time.perf_counter()
    for location in (cfg.storage.staging, cfg.train.checkpoint_dir):  # the trainer's Python must reach both
        fs.to_arrow_uri(location)
    registry.configure_mlflow(cfg.mlflow)
    version = cfg.train.table_version
    if version is None:
        version = tables.table_version(spark, cfg.storage, S.TRAINING_EXAMPLES)
    if version is None:
        raise InputDataError("table 'training_examples' does not exist: run the ETL job first")
    df = tables.read_table(spark, cfg.storage, S.TRAINING_EXAMPLES, version=version)
    require_columns(df, (*EXPORT_COLUMNS, S.SPLIT, S.EVENT_TIME), "training_examples")
    df = select_window(df, window_days=cfg.train.window_days, valid_fraction=cfg.etl.split.valid_fraction,
                       test_fraction=cfg.etl.split.test_fraction)

    init = registry.resolve(cfg.mlflow, alias=init_from) if init_from else None
    base = str(resolve_base_model(cfg.model.base_model))
    with mlflow.start_run(run_name=f"train-{cfg.mlflow.model_name}") as run:
        run_id = run.info.run_id
        staging = fs.join(cfg.storage.staging, "training", run_id)
        work = Path(tempfile.mkdtemp(prefix="adrec-train-"))
        try:
            rows = export_splits(df, staging, partitions=max(1, cfg.train.num_processes * 2))
            positives = {r[S.SPLIT]: int(r["p"])
                         for r in df.groupBy(S.SPLIT).agg(F.sum(S.LABEL).alias("p")).collect()}
            mlflow.log_params({k: v for k, v in cfg.flat().items()
                               if k.split(".")[0] in ("train", "model", "etl") and v is not None})
            mlflow.log_params({"data.table": cfg.storage.table_path(S.TRAINING_EXAMPLES),
                               "data.table_version": version, **{f"data.rows_{k}": v for k, v in rows.items()},
                               **{f"data.positives_{k}": positives.get(k, 0) for k in rows},
                               "init_from": f"{init.uri} ({init_from})" if init else "pretrained",
                               "base_model": cfg.model.base_model})
            mlflow.set_tags({"adrec.job": "train", "adrec.table_version": str(version)})
            init_dir = str(registry.download_model_dir(cfg.mlflow, init, work / "init")) if init else None
            params = _params(cfg, data_dir=staging, out_dir=str(work / "out"), base=base, init_dir=init_dir,
                             run_id=run_id, resume=resume)
            summary = _run_distributed(spark, cfg, params)
            test = summary["test"]  # type: ignore[index]
            pre = summary.get("pretrained_test", {}).get("auc")  # type: ignore[union-attr]
            metrics = {"test_auc": test["auc"], "test_log_loss": test["log_loss"],  # type: ignore[index]
                       "best_valid_auc": summary["best_valid_auc"], "train_samples_per_sec": summary["samples_per_sec"],
                       "train_seconds": summary["train_seconds"], "epochs_run": summary["epochs_run"]}
            if pre is not None:
                metrics["pretrained_test_auc"] = pre
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})  # type: ignore[arg-type]
            _log_plots(run_id, summary, work / "out")
            mlflow.log_dict(summary, "training_summary.json")
            champion_auc, champion_version = _champion_auc(cfg, staging, work)
            model_uri = registry.log_pyfunc(summary["model_dir"])  # type: ignore[arg-type]
        finally:
            shutil.rmtree(work, ignore_errors=True)
            drop_staging(staging)
        new_version = registry.register(cfg.mlflow, model_uri, tags={"table_version": str(version)})
        registry.set_alias(cfg.mlflow, cfg.train.challenger_alias, new_version)
        decision = registry.decide_promotion(float(test["auc"]), champion_auc, champion_version,  # type: ignore
                                             cfg.train.promotion_margin)
        if decision.promote:
            registry.set_alias(cfg.mlflow, cfg.train.champion_alias, new_version)
        tags = {"promotion_decision": "promoted" if decision.promote else "kept_champion",
                "promotion_reason": decision.reason, "challenger_test_auc": f"{decision.challenger_auc:.6f}",
                "champion_test_auc": "" if champion_auc is None else f"{champion_auc:.6f}",
                "champion_version_compared": "" if champion_version is None else str(champion_version),
                "compared_on": f"{cfg.storage.table_path(S.TRAINING_EXAMPLES)}@v{version} test split"}
        registry.tag_version(cfg.mlflow, new_version, tags)
        mlflow.set_tags({f"adrec.{k}": v for k, v in tags.items()} | {"adrec.model_version": str(new_version)})
        if champion_auc is not None:
            mlflow.log_metric("champion_test_auc", champion_auc)
    log.info("registered %s v%d as %s; %s (%.0fs)", cfg.mlflow.model_name, new_version, cfg.train.challenger_alias,
             decision.reason, time.perf_counter() - t0)
    return TrainingResult(run_id=run_id, model_version=new_version, promoted=decision.promote,
                          decision=decision.reason, test_auc=float(test["auc"]),  # type: ignore[index]
                          pretrained_test_auc=pre, champion_test_auc=champion_auc, table_version=version,
                          rows=rows, summary=summary)
