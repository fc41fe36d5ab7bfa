"""The training job: training_examples at a pinned Delta version -> Parquet staging -> TorchDistributor ->
MLflow run (params, lineage, metrics, plots, pyfunc) -> registry version with alias ``challenger`` ->
promotion gate against ``champion`` on the same test data."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.config import AppConfig, SplitConfig
from adrec_spark.errors import InputDataError, TrainingDataError
from adrec_spark.frames import require_columns
from adrec_spark.io import fs, tables
from adrec_spark.logs import Stopwatch
from adrec_spark.model.data import PAIR_COLUMNS, Batch
from adrec_spark.model.encoder import resolve_base_model
from adrec_spark.model.relevance import ModelSpec
from adrec_spark.model.trainer import TrainParams, TrainSummary, binary_metrics, mean_ndcg_at_k, train_worker
from adrec_spark.model_udf import text_encoder
from adrec_spark.registry import registry
from adrec_spark.scoring import text_similarity as T
from adrec_spark.training import split as split_mod

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
    gate: registry.PromotionDecision
    table_version: int
    rows: dict[str, int]
    summary: TrainSummary
    cutoffs: split_mod.SplitCutoffs


def split_training_data(df: DataFrame, cfg: SplitConfig, *, window_days: int | None) -> tuple[DataFrame,
                                                                                             split_mod.SplitCutoffs]:
    """The training data split by time over all its rows (a pinned table version; with ``window_days`` the latest
    days only): the ``split`` column and the cut-offs that made it (recorded on the model version, so the
    evaluation job and the promotion gate re-apply the same split). Any ``split`` column already in the table
    (written by the ETL of earlier releases) is replaced. Runs Spark jobs on ``df`` (see
    :func:`split_mod.compute_cutoffs`): pass it persisted."""
    cutoffs = split_mod.compute_cutoffs(df, cfg, window_days=window_days)
    log.info("training split over the whole training data: %s", cutoffs.describe())
    return split_mod.assign_split(df, cutoffs), cutoffs


def export_splits(df: DataFrame, out: str, *, partitions: int) -> dict[str, int]:
    """Write each split as Parquet (sorted by time, so a rerun writes the same files); returns row counts."""
    require_columns(df, (*EXPORT_COLUMNS, S.SPLIT), "export_splits")
    counts = {r[S.SPLIT]: int(r["count"]) for r in df.groupBy(S.SPLIT).count().collect()}
    for name in (S.TRAIN, S.VALID, S.TEST):
        if not counts.get(name):
            raise TrainingDataError(f"the {name} split of training_examples is empty ({counts}): run the ETL on "
                                    "more dates or change train.split")
        write_sorted(df.where(F.col(S.SPLIT) == name), f"{out}/{name}", partitions=partitions)
    return {k: counts.get(k, 0) for k in (S.TRAIN, S.VALID, S.TEST)}


def drop_staging(staging: str) -> None:
    """Delete a run's exported splits (user ids and history text: personal data) once training is done with
    them, whether it succeeded or failed, on any storage. ``forget-users`` cleans what a killed run left."""
    try:
        fs.delete_tree(staging)
    except OSError as e:  # the run's own error, if any, matters more
        log.warning("could not delete the training splits at %s (%s): delete them, or run forget-users", staging,
                    e)


def write_sorted(df: DataFrame, path: str, *, partitions: int) -> None:
    """The export columns (and the text-similarity features where ``df`` has them) as Parquet sorted by the
    split key (so a rerun writes the same files)."""
    (df.select(*EXPORT_COLUMNS, *[c for c in S.TEXT_SIMILARITY_FEATURES if c in df.columns])
     .repartitionByRange(partitions, S.EVENT_TS, S.USER_ID, S.AD_ID, S.EVENT_ID)
     .sortWithinPartitions(S.EVENT_TS, S.USER_ID, S.AD_ID, S.EVENT_ID)
     .write.mode("overwrite").parquet(path))


def with_text_similarity_once(df: DataFrame, cfg: AppConfig) -> DataFrame:
    """``df`` with the text-similarity features, each of its distinct texts embedded once by the pretrained
    encoder (:mod:`adrec_spark.scoring.text_similarity`; one Spark job here)."""
    cols = [c for c in df.columns if c not in S.TEXT_SIMILARITY_FEATURES]
    df = df.select(*cols)
    return T.with_text_similarity(df, vectors=T.collect_text_vectors([df], text_encoder(cfg)))


def training_table(spark: SparkSession, cfg: AppConfig, version: int) -> DataFrame:
    """``training_examples`` at ``version`` as the model reads it: the export columns checked, the ETL's split
    dropped (training splits by its own cut-offs), and the text-similarity features added when the model
    reads them."""
    table = tables.read_table(spark, cfg.storage, S.TRAINING_EXAMPLES, version=version)
    require_columns(table, EXPORT_COLUMNS, "training_examples")
    table = table.drop(S.SPLIT)
    if cfg.model.text_similarity_features:
        T.require_history_texts(table, f"training_examples v{version}")
        table = with_text_similarity_once(table, cfg)
    return table


def _distributor_local_mode(spark: SparkSession, run_on: str) -> bool:
    if run_on == "driver":
        return True
    if run_on == "executors":
        return False
    return spark.sparkContext.master.startswith("local")


def _run_distributed(spark: SparkSession, cfg: AppConfig, params: TrainParams) -> TrainSummary:
    from pyspark.ml.torch.distributor import TorchDistributor

    local_mode = _distributor_local_mode(spark, cfg.train.run_on)
    log.info("TorchDistributor: %d process(es), %s, gpu=%s", cfg.train.num_processes,
             "on the driver" if local_mode else "on executors", cfg.train.use_gpu)
    out = TorchDistributor(num_processes=cfg.train.num_processes, local_mode=local_mode,
                           use_gpu=cfg.train.use_gpu).run(train_worker, params.to_json())
    if not isinstance(out, dict) or "test" not in out:
        raise TrainingDataError(f"training ended without a result: {out!r}")
    return out


def train_params(cfg: AppConfig, *, data_dir: str, out_dir: str, base: str, init_dir: str | None, run_id: str,
                 resume: bool) -> TrainParams:
    """What one training process needs, from the config (the training job's and the offline recipe's)."""
    return TrainParams(data_dir=data_dir, out_dir=out_dir, base_model_dir=base, init_model_dir=init_dir,
                       checkpoint_dir=fs.join(cfg.train.checkpoint_dir, cfg.mlflow.model_name), resume=resume,
                       train=cfg.train, model=cfg.model, tracking_uri=cfg.mlflow.tracking_uri, run_id=run_id)


def gate_metrics(model_dir: str | Path, rows: Batch, *, k: int, batch_size: int,
                 features: Sequence[str] = S.NUMERIC_FEATURES) -> registry.GateMetrics:
    """A model's test AUC (of its click probability) and mean per-user NDCG@k (ranking each user's ads by the
    pair logit, as the evaluation and scoring jobs do) on the gate's rows. ``features``: the columns of
    ``rows.numeric``; the model reads the ones its spec names."""
    from adrec_spark.model.inference import Scorer, sigmoid

    if len(rows) == 0:
        return registry.GateMetrics(float("nan"), float("nan"))
    scorer = Scorer(model_dir, batch_size=batch_size)
    numeric = rows.numeric[:, [list(features).index(f) for f in scorer.spec.numeric_features]]
    pair, user = scorer.logit_parts(rows.ad_text, rows.history_text, numeric)
    auc = binary_metrics(rows.label, sigmoid(pair.astype(np.float64) + user))["auc"]
    ndcg = mean_ndcg_at_k(rows.extra[S.USER_ID], rows.extra[S.AD_ID], rows.label, pair, k=k)
    return registry.GateMetrics(auc, ndcg)


def _promotion_gate(cfg: AppConfig, df: DataFrame, staging: str, work: Path,
                    challenger_dir: str) -> tuple[registry.PromotionDecision, str]:
    """Both models on the same test rows that neither trained on (this run's test rows later than the
    champion's own test cut-off, read from its version tags), on AUC and NDCG@K; the decision and what the
    rows were."""
    from adrec_spark.errors import ModelResolutionError
    from adrec_spark.model.data import PairDataset

    t = cfg.train
    try:
        champ = registry.resolve(cfg.mlflow, alias=t.champion_alias)
    except ModelResolutionError:
        champ = None
    champ_cutoffs = split_mod.SplitCutoffs.from_tags(registry.version_tags(cfg.mlflow, champ.version)) \
        if champ else None
    champ_dir = registry.download_model_dir(cfg.mlflow, champ, work / "champion") if champ else None
    specs = [ModelSpec.from_json((Path(d) / "spec.json").read_text()) for d in (challenger_dir, champ_dir) if d]
    gate_rows = split_mod.rows_neither_trained_on(df, champ_cutoffs)
    if any(T.uses_text_similarity(spec.numeric_features) for spec in specs) and \
            not set(S.TEXT_SIMILARITY_FEATURES) <= set(df.columns):  # the champion reads them, this run does not
        gate_rows = with_text_similarity_once(gate_rows, cfg)
    features = [*S.NUMERIC_FEATURES, *[c for c in S.TEXT_SIMILARITY_FEATURES if c in gate_rows.columns]]
    gate_dir = fs.join(staging, "gate")
    write_sorted(gate_rows, gate_dir, partitions=1)
    rows = PairDataset(gate_dir, max_rows=t.max_eval_rows, extra_columns=(S.USER_ID, S.AD_ID),
                       numeric_features=features).read_all()
    if champ is None:
        compared_on = "this run's test rows (no champion)"
    elif champ_cutoffs is None:
        compared_on = (f"this run's test rows: champion v{champ.version} has no recorded split cut-offs (trained "
                       "before they were recorded), so some of these rows may be ones it trained on")
        log.warning("promotion gate: %s", compared_on)
    else:
        compared_on = f"this run's test rows from champion v{champ.version}'s test cut-off on ({len(rows)} rows)"
    challenger = gate_metrics(challenger_dir, rows, k=t.promotion_k, batch_size=t.eval_batch_size, features=features)
    champion = None
    if champ_dir is not None:
        champion = gate_metrics(champ_dir, rows, k=t.promotion_k, batch_size=t.eval_batch_size, features=features)
    decision = registry.decide_promotion(challenger, champion, champ.version if champ else None,
                                         auc_margin=t.promotion_auc_margin, ndcg_margin=t.promotion_ndcg_margin,
                                         k=t.promotion_k, rows=len(rows))
    return decision, compared_on


def _log_plots(run_id: str, out_dir: Path) -> None:
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
    if len(np.unique(pred[S.LABEL])) == 2:
        fig = plots.roc_pr_calibration(pred[S.LABEL], {"fine-tuned": pred[S.SCORE]})
        mlflow.log_figure(fig, "plots/test_roc_pr_calibration.png")
        plt.close(fig)


def run_training(spark: SparkSession, cfg: AppConfig, *, init_from: str | None = None,
                 resume: bool = False) -> TrainingResult:
    """Train, log, register as ``challenger`` and gate the promotion to ``champion``.

    Args:
        init_from: an alias (e.g. ``champion``) to warm-start from, for periodic retraining.
        resume: continue from the last checkpoint of an interrupted run of this model.
    """

    watch = Stopwatch()
    for location in (cfg.storage.staging, cfg.train.checkpoint_dir):  # the trainer's Python must reach both
        fs.to_arrow_uri(location)
    registry.configure_mlflow(cfg.mlflow)
    version = cfg.train.table_version
    if version is None:
        version = tables.table_version(spark, cfg.storage, S.TRAINING_EXAMPLES)
    if version is None:
        raise InputDataError("table 'training_examples' does not exist: run the ETL job first")
    table = training_table(spark, cfg, version).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        df, cutoffs = split_training_data(table, cfg.train.split, window_days=cfg.train.window_days)
        return _train_and_register(spark, cfg, df, cutoffs, version=version, init_from=init_from, resume=resume,
                                   watch=watch)
    finally:
        table.unpersist()


def _train_and_register(spark: SparkSession, cfg: AppConfig, df: DataFrame, cutoffs: split_mod.SplitCutoffs, *,
                        version: int, init_from: str | None, resume: bool, watch: Stopwatch) -> TrainingResult:
    import mlflow


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
                               **{f"data.{k}": v for k, v in cutoffs.to_tags().items()},
                               "init_from": f"{init.uri} ({init_from})" if init else "pretrained",
                               "base_model": cfg.model.base_model})
            mlflow.set_tags({"adrec.job": "train", "adrec.table_version": str(version)})
            init_dir = str(registry.download_model_dir(cfg.mlflow, init, work / "init")) if init else None
            params = train_params(cfg, data_dir=staging, out_dir=str(work / "out"), base=base, init_dir=init_dir,
                                  run_id=run_id, resume=resume)
            summary = _run_distributed(spark, cfg, params)
            test = summary["test"]
            pre = summary.get("pretrained_test", {}).get("auc")
            _log_run_metrics(summary, pre)
            _log_plots(run_id, work / "out")
            mlflow.log_dict(summary, "training_summary.json")
            decision, compared_on = _promotion_gate(cfg, df, staging, work, str(summary["model_dir"]))
            model_uri = registry.log_pyfunc(summary["model_dir"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
            drop_staging(staging)
        new_version = registry.register(cfg.mlflow, model_uri, tags={
            "table_version": str(version), **cutoffs.to_tags(), "split.summary": cutoffs.describe()})
        registry.set_alias(cfg.mlflow, cfg.train.challenger_alias, new_version)
        if decision.promote:
            registry.set_alias(cfg.mlflow, cfg.train.champion_alias, new_version)
        tags = {**decision.tags(), "challenger_test_auc": f"{test['auc']:.6f}",
                "compared_on": f"{cfg.storage.table_path(S.TRAINING_EXAMPLES)}@v{version}: {compared_on}"}
        registry.tag_version(cfg.mlflow, new_version, tags)
        mlflow.set_tags({f"adrec.{k}": v for k, v in tags.items()} | {"adrec.model_version": str(new_version)})
        mlflow.log_metrics({f"gate_{who}_{name}": v for who, m in (("challenger", decision.challenger),
                                                                  ("champion", decision.champion)) if m
                            for name, v in (("auc", m.auc), (f"ndcg_at_{decision.k}", m.ndcg)) if np.isfinite(v)})
    log.info("registered %s v%d as %s; %s (%.0fs)", cfg.mlflow.model_name, new_version, cfg.train.challenger_alias,
             decision.reason, watch.elapsed())
    return TrainingResult(run_id=run_id, model_version=new_version, promoted=decision.promote,
                          decision=decision.reason, test_auc=test["auc"],
                          pretrained_test_auc=pre, gate=decision, table_version=version, rows=rows,
                          summary=summary, cutoffs=cutoffs)


def _log_run_metrics(summary: TrainSummary, pretrained_auc: float | None) -> None:
    import mlflow

    test = summary["test"]
    metrics = {"test_auc": test["auc"], "test_log_loss": test["log_loss"],
               "best_valid_auc": summary["best_valid_auc"], "initial_valid_auc": summary.get("initial_valid_auc"),
               "train_samples_per_sec": summary["samples_per_sec"], "train_seconds": summary["train_seconds"],
               "epochs_run": summary["epochs_run"], "pretrained_test_auc": pretrained_auc}
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(float(v))})
