"""Typed configuration: frozen dataclasses, merged from defaults, YAML files and ``--set`` overrides.

The dataclass defaults *are* the embedded local default (``conf/local.yaml`` spells them out and a test
keeps the two equal). Every key is checked on the driver before Spark starts: unknown keys and values of
the wrong type or range raise :class:`~adrec_spark.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from adrec_spark.errors import ConfigError
from adrec_spark.schema import NUMERIC_FEATURES, TEXT_SIMILARITY_FEATURES, TEXT_SIMILARITY_USER_FEATURES

T = TypeVar("T")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config '{key}': {msg}")


def _check_alias(value: str, key: str) -> None:
    """MLflow alias rules: letters, digits, _ and -; 'latest' and 'v<number>' are reserved."""
    import re

    _check(bool(re.fullmatch(r"[A-Za-z0-9_\-]{1,255}", value)), key,
           f"{value!r} is not a valid alias (letters, digits, _ and - only)")
    _check(value.lower() != "latest" and not re.fullmatch(r"[vV]\d+", value), key,
           f"{value!r} is reserved by MLflow")


def _check_date(value: str | None, key: str) -> None:
    if value is None:
        return
    try:
        dt.date.fromisoformat(value)
    except ValueError as e:
        raise ConfigError(f"config '{key}': {value!r} is not an ISO date (YYYY-MM-DD)") from e


@dataclass(frozen=True)
class SparkConfig:
    """How the Spark session is built. ``master`` is ignored under spark-submit when it sets one."""

    master: str | None = "local[2]"
    app_name: str = "adrec-spark"
    shuffle_partitions: int = 4
    # Delta jars resolved once (offline afterwards). null: found from any working directory, in
    # $ADREC_JARS_DIR, else the source checkout's .jars (`make setup`), else ~/.cache/adrec-spark/jars
    # (`python -m adrec_spark.jars`); see adrec_spark/jars.py. On a cluster either ship the jars
    # (spark.conf['spark.jars']) or set use_packages: true to let Spark resolve `delta_package` from Maven.
    jars_dir: str | None = None
    use_packages: bool = False
    delta_package: str = "io.delta:delta-spark_4.2_2.13:4.4.0"
    # Rows per Arrow batch sent to Python workers: bounds the scoring workers' memory. A byte cap as well
    # (spark.sql.execution.arrow.maxBytesPerBatch; a batch ends at whichever limit comes first) suits long texts.
    arrow_max_records_per_batch: int = 2048
    arrow_max_bytes_per_batch: int | None = None
    driver_memory: str | None = "4g"
    log_level: str = "WARN"
    # Seconds between the progress lines long jobs log on the driver (scoring, ETL, evaluation); 0: none.
    progress_interval_s: float = 30.0
    conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.shuffle_partitions >= 1, "spark.shuffle_partitions", "must be >= 1")
        _check(self.progress_interval_s >= 0, "spark.progress_interval_s", "must be >= 0 (0: no progress lines)")
        _check(self.arrow_max_records_per_batch >= 1, "spark.arrow_max_records_per_batch", "must be >= 1")
        _check(self.arrow_max_bytes_per_batch is None or 0 < self.arrow_max_bytes_per_batch < 2**31 - 1,
               "spark.arrow_max_bytes_per_batch", "must be between 1 and 2147483646 bytes (or null)")


@dataclass(frozen=True)
class StorageConfig:
    """Where tables and raw inputs live: local folders by default, any Hadoop URI (s3a://, abfss://)."""

    lakehouse: str = "./lakehouse"
    raw_events: str = "./data/raw/events"
    raw_ads: str = "./data/raw/ads"
    input_format: Literal["json", "parquet", "csv"] = "json"
    staging: str = "./lakehouse/_staging"
    write_retries: int = 5

    def __post_init__(self) -> None:
        _check(self.write_retries >= 0, "storage.write_retries", "must be >= 0")

    def table_path(self, table: str) -> str:
        return f"{self.lakehouse.rstrip('/')}/{table}"


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    registry_uri: str | None = None
    experiment: str = "adrec-spark"
    artifact_location: str | None = "./mlartifacts"
    model_name: str = "adrec-relevance"


@dataclass(frozen=True)
class SplitConfig:
    """Time-based train/valid/test split of the training data, decided by the training job over the whole
    pinned table version (so nightly ETL runs and a backfill give the same split; every test row is later
    than every train row). ``fraction``: by rank of (event time, user, ad, event id); ``days``: the last
    ``test_days`` calendar days (UTC) are test, the ``valid_days`` before them valid; ``dates``: fixed
    cut-offs at midnight UTC."""

    method: Literal["fraction", "days", "dates"] = "fraction"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    valid_days: int = 1
    test_days: int = 1
    valid_start: str | None = None
    test_start: str | None = None

    def __post_init__(self) -> None:
        _check(0 <= self.valid_fraction < 1, "train.split.valid_fraction", "must be in [0, 1)")
        _check(0 <= self.test_fraction < 1, "train.split.test_fraction", "must be in [0, 1)")
        _check(self.valid_fraction + self.test_fraction < 1, "train.split",
               "valid_fraction + test_fraction must be < 1")
        _check(self.valid_days >= 1, "train.split.valid_days", "must be >= 1")
        _check(self.test_days >= 1, "train.split.test_days", "must be >= 1")
        _check_date(self.valid_start, "train.split.valid_start")
        _check_date(self.test_start, "train.split.test_start")
        if self.method == "dates":
            _check(self.valid_start is not None and self.test_start is not None, "train.split",
                   "method 'dates' needs valid_start and test_start")
            _check(str(self.valid_start) <= str(self.test_start), "train.split",
                   "valid_start must not be after test_start")


@dataclass(frozen=True)
class EtlConfig:
    lookback_days: int = 30
    dedup_lookback_days: int = 7
    max_clock_skew_minutes: int = 10
    attribution_hours: float = 24.0
    text_max_chars: int = 512
    history_max_items: int = 20
    history_max_chars: int = 1200
    rate_prior: float = 0.1
    rate_prior_strength: float = 10.0
    # A date whose share of rejected input rows exceeds this fails (on_rejected_excess: fail, the default:
    # nothing is written) or is logged as a warning (warn).
    max_rejected_fraction: float = 0.2
    on_rejected_excess: Literal["fail", "warn"] = "fail"

    def __post_init__(self) -> None:
        for key in ("lookback_days", "text_max_chars", "history_max_items", "history_max_chars"):
            _check(getattr(self, key) >= 1, f"etl.{key}", "must be >= 1")
        _check(self.dedup_lookback_days >= 0, "etl.dedup_lookback_days", "must be >= 0")
        _check(self.max_clock_skew_minutes >= 0, "etl.max_clock_skew_minutes", "must be >= 0")
        _check(self.attribution_hours >= 0, "etl.attribution_hours", "must be >= 0")
        _check(0 < self.rate_prior < 1, "etl.rate_prior", "must be in (0, 1)")
        _check(self.rate_prior_strength > 0, "etl.rate_prior_strength", "must be > 0")
        _check(0 <= self.max_rejected_fraction <= 1, "etl.max_rejected_fraction", "must be in [0, 1]")


@dataclass(frozen=True)
class ModelConfig:
    """The relevance model. ``base_model``: 'all-MiniLM-L6-v2' (the packaged weights), a local Hugging Face
    model folder, or a model name already in the local Hugging Face cache (never downloaded)."""

    base_model: str = "all-MiniLM-L6-v2"
    max_length: int = 256
    pooling: Literal["mean", "cls"] = "mean"
    dropout: float = 0.1
    numeric_hidden: int = 32
    # Numeric features that describe the user only (how strict a rater, how active): they enter the model as
    # an additive per-user bias, not the pair head, so ranking one user's ads never depends on them (see
    # adrec_spark/model/relevance.py). Empty: every feature goes through the pair head.
    user_features: tuple[str, ...] = ("user_rate", "user_log_impressions")
    # Add the text-similarity features (schema.TEXT_SIMILARITY_FEATURES: the ad's cosine under the pretrained
    # encoder to the user's clicked ads, searches and reviews, and their counts) to the numeric features the
    # model reads in training, evaluation and scoring. Off by default: each of those runs then embeds every
    # distinct text once more, and the fine-tuned text path reads the same texts already; the evaluation's
    # logistic_regression_text baseline measures what the features are worth first.
    text_similarity_features: bool = False

    def numeric_features(self) -> tuple[str, ...]:
        """The numeric features a model trained with this config reads, in order."""
        return (*NUMERIC_FEATURES, *TEXT_SIMILARITY_FEATURES) if self.text_similarity_features else NUMERIC_FEATURES

    def model_user_features(self) -> tuple[str, ...]:
        """``user_features`` plus, with the text-similarity features, their counts (they describe the user
        alone); none when ``user_features`` is empty (every feature through the pair head)."""
        if self.text_similarity_features and self.user_features:
            return (*self.user_features, *TEXT_SIMILARITY_USER_FEATURES)
        return self.user_features

    def __post_init__(self) -> None:
        unknown = sorted(set(self.user_features) - set(NUMERIC_FEATURES))
        _check(not unknown, "model.user_features", f"unknown {unknown}; numeric features: {list(NUMERIC_FEATURES)}")
        _check(16 <= self.max_length <= 4096, "model.max_length", "must be in [16, 4096]")
        _check(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")
        _check(self.numeric_hidden >= 1, "model.numeric_hidden", "must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    loss: Literal["bce", "mse"] = "bce"
    # A pairwise (RankNet) loss between one user's rows with different labels, on the logit less the user
    # bias, added with this weight; batches then hold about users_per_batch users each. 0: pointwise only.
    ranking_loss_weight: float = 0.0
    users_per_batch: int = 4
    learning_rate: float = 5e-5
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    epochs: int = 2
    batch_size: int = 32
    eval_batch_size: int = 128
    max_steps: int | None = None
    max_train_rows: int | None = None  # train on the most recent N rows of the train split
    # The starting logistic regression (``wide_init: linear``) reads only the numeric columns: it is fitted on the
    # most recent N rows of the train split (null: all; never fewer than fine-tuning reads).
    linear_init_rows: int | None = 1_000_000
    max_eval_rows: int | None = None
    early_stopping_patience: int = 2
    eval_every_steps: int | None = None
    trainable: Literal["all", "head", "top_k"] = "all"
    top_k_layers: int = 2
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    seed: int = 42
    num_processes: int = 1
    use_gpu: bool = False
    checkpoint_dir: str = "./checkpoints"
    window_days: int | None = None
    table_version: int | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    # The champion gate: on test rows neither model trained on, the challenger must not be worse on test AUC
    # nor on NDCG@promotion_k, and better on at least one by its margin (a tie never promotes).
    promotion_auc_margin: float = 0.002
    promotion_ndcg_margin: float = 0.002
    promotion_k: int = 10
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    # Where TorchDistributor runs the training processes: on the driver (local mode, the default when the
    # master is local) or in barrier tasks on the executors (paths must then be on shared storage).
    run_on: Literal["auto", "driver", "executors"] = "auto"
    log_every_steps: int = 20
    shuffle_buffer_rows: int = 20000
    zero_shot_baseline: bool = True
    # Start the wide term at a logistic (or ridge) regression on the numeric features, the text path at zero:
    # fine-tuning then learns the residual over that classical model ("random": no such start).
    wide_init: Literal["linear", "random"] = "linear"

    def __post_init__(self) -> None:
        for key in ("learning_rate", "head_learning_rate"):
            _check(getattr(self, key) > 0, f"train.{key}", "must be > 0")
        _check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")
        _check(self.ranking_loss_weight >= 0, "train.ranking_loss_weight", "must be >= 0")
        _check(1 <= self.users_per_batch <= self.batch_size, "train.users_per_batch", "must be in [1, batch_size]")
        for key in ("epochs", "batch_size", "eval_batch_size", "num_processes", "log_every_steps",
                    "shuffle_buffer_rows", "lora_r", "top_k_layers"):
            _check(getattr(self, key) >= 1, f"train.{key}", "must be >= 1")
        for key in ("max_steps", "max_train_rows", "linear_init_rows", "max_eval_rows", "eval_every_steps",
                    "window_days"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"train.{key}", "must be >= 1 or null")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience", "must be >= 0")
        _check(self.max_grad_norm > 0, "train.max_grad_norm", "must be > 0")
        _check(self.table_version is None or self.table_version >= 0, "train.table_version", "must be >= 0")
        for key in ("promotion_auc_margin", "promotion_ndcg_margin"):
            _check(getattr(self, key) > 0, f"train.{key}", "must be > 0 (a tie must never promote)")
        _check(self.promotion_k >= 1, "train.promotion_k", "must be >= 1")
        _check(self.challenger_alias != self.champion_alias, "train.challenger_alias",
               "must differ from train.champion_alias")
        _check_alias(self.challenger_alias, "train.challenger_alias")
        _check_alias(self.champion_alias, "train.champion_alias")


@dataclass(frozen=True)
class ChaosConfig:
    """Fault injection for reliability tests; all off by default."""

    fail_first_attempt_every_n_partitions: int = 0
    sleep_seconds_per_batch: float = 0.0

    def __post_init__(self) -> None:
        _check(self.fail_first_attempt_every_n_partitions >= 0,
               "score.chaos.fail_first_attempt_every_n_partitions", "must be >= 0")
        _check(self.sleep_seconds_per_batch >= 0, "score.chaos.sleep_seconds_per_batch", "must be >= 0")


@dataclass(frozen=True)
class ColdStartConfig:
    """Users without a usable history. ``explore``: users who were shown ads get the best ads (by the upper
    confidence bound below) of the categories they were shown, and the rest of their candidates (all of them
    for users about whom nothing is known) are drawn from the ``pool_size`` ads with the highest upper
    confidence bound on their click rate, with probability proportional to that bound, seeded per (user,
    date) so a rerun draws the same. ``popular``: every such user gets the most clicked ads (the old way)."""

    strategy: Literal["explore", "popular"] = "explore"
    pool_size: int = 200
    # The bound: smoothed rate + ucb_z * sqrt(rate (1 - rate) / (impressions + etl.rate_prior_strength)).
    ucb_z: float = 1.0
    # Share of a shown user's candidates taken from the categories they were shown (the rest is explored).
    shown_fraction: float = 0.5

    def __post_init__(self) -> None:
        _check(self.pool_size >= 1, "score.cold_start.pool_size", "must be >= 1")
        _check(self.ucb_z >= 0, "score.cold_start.ucb_z", "must be >= 0")
        _check(0 <= self.shown_fraction <= 1, "score.cold_start.shown_fraction", "must be in [0, 1]")


@dataclass(frozen=True)
class ScoreGpuConfig:
    """GPUs for the cross-encoder stage only (Spark stage-level scheduling): with ``task_amount`` set, the
    scoring stage's tasks each ask for that share of a GPU (0.25: four tasks share one) and ``task_cpus``
    cores, while every other stage asks for none. Needs a cluster (standalone, YARN, Kubernetes) whose
    executors have GPUs (``spark.executor.resource.gpu.*``). With ``executor_amount`` the stage also asks for
    executors with that many GPUs (found by ``discovery_script``), which needs dynamic allocation."""

    task_amount: float | None = None
    task_cpus: int = 1
    executor_amount: int | None = None
    executor_cores: int | None = None
    discovery_script: str | None = None

    def __post_init__(self) -> None:
        a = self.task_amount
        _check(a is None or (0 < a <= 1) or float(a).is_integer(), "score.gpu.task_amount",
               "must be a fraction in (0, 1] (tasks sharing a GPU) or a whole number of GPUs")
        _check(self.task_cpus >= 1, "score.gpu.task_cpus", "must be >= 1")
        _check(self.executor_amount is None or self.executor_amount >= 1, "score.gpu.executor_amount", "must be >= 1")
        _check(self.executor_amount is None or a is not None, "score.gpu.executor_amount",
               "needs score.gpu.task_amount (the GPU share of each scoring task)")
        _check(self.executor_cores is None or self.executor_cores >= 1, "score.gpu.executor_cores", "must be >= 1")


@dataclass(frozen=True)
class ScoreConfig:
    model_alias: str = "champion"
    model_version: int | None = None
    # incremental: reuse the previous date's score of every pair whose user profile and ad are unchanged (same
    # model version and score-affecting settings), score the rest; the candidates and the re-rank run in full,
    # so the result equals a full run. Falls back to full, with the reason logged, when there is no usable
    # previous date (see docs/operations.md). `adrec score --full` forces a full run.
    mode: Literal["incremental", "full"] = "incremental"
    candidates: Literal["cascade", "all"] = "cascade"
    retrieval_top_n: int = 25
    prior_top_n: int = 45
    # The prior (the cross-encoder's score of an ad for an empty history) is scored at this many levels of the
    # user-ad category affinity and interpolated at each user's own (1: one neutral prior for everyone).
    prior_affinity_levels: int = 5
    top_k: int = 10
    # 'auto' is bf16 on a GPU and, on CPU, measured once per host (cached under the temp dir): the fastest of
    # fp32, bf16 and int8 on a calibration batch whose scores track fp32's (correlation >= 0.999).
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    batch_size: int = 64
    # Padded tokens per forward pass (pairs x the longest pair of the micro-batch); null: batch_size * 128.
    # On a GPU raise both (e.g. batch_size 1024, token_budget 65536).
    token_budget: int | None = None
    torch_threads: int | None = 1
    max_per_advertiser: int = 2
    duplicate_similarity: float = 0.95
    # "Because you clicked X" only when X's embedding has at least this cosine similarity with the ad.
    reason_min_similarity: float = 0.5
    popular_pool: int = 50
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)
    chaos: ChaosConfig = field(default_factory=ChaosConfig)
    gpu: ScoreGpuConfig = field(default_factory=ScoreGpuConfig)

    def __post_init__(self) -> None:
        _check(self.token_budget is None or self.token_budget >= 1, "score.token_budget", "must be >= 1")
        for key in ("retrieval_top_n", "top_k", "batch_size", "max_per_advertiser", "popular_pool",
                    "prior_affinity_levels"):
            _check(getattr(self, key) >= 1, f"score.{key}", "must be >= 1")
        _check(self.prior_top_n >= 0, "score.prior_top_n", "must be >= 0")
        _check(0 < self.duplicate_similarity <= 1, "score.duplicate_similarity", "must be in (0, 1]")
        _check(-1 <= self.reason_min_similarity <= 1, "score.reason_min_similarity", "must be in [-1, 1]")
        _check(self.torch_threads is None or self.torch_threads >= 1, "score.torch_threads", "must be >= 1")
        _check_alias(self.model_alias, "score.model_alias")


@dataclass(frozen=True)
class EvaluateConfig:
    ks: tuple[int, ...] = (5, 10)
    threshold: float = 0.5
    calibration_bins: int = 10
    report_dir: str = "./reports"
    # logistic_regression_text: the logistic regression plus text-similarity features from the pretrained
    # encoder (the ad's cosine to the user's clicked ads, searches and reviews).
    baselines: tuple[str, ...] = (
        "random", "popularity", "item_rate", "logistic_regression", "logistic_regression_text", "als", "pretrained",
    )
    als_rank: int = 16
    als_max_iter: int = 10
    als_reg: float = 0.1
    seed: int = 7
    # Intervals: bootstrap resamples over users (ranking and pointwise metrics; DeLong for AUC) and their level.
    bootstrap_samples: int = 500
    confidence: float = 0.95
    # A metric resting on fewer users (ranking) or positives (click metrics) than this is flagged small_n.
    min_users: int = 30
    min_positives: int = 30

    def __post_init__(self) -> None:
        _check(self.bootstrap_samples >= 0, "evaluate.bootstrap_samples", "must be >= 0 (0: no bootstrap)")
        _check(0 < self.confidence < 1, "evaluate.confidence", "must be in (0, 1)")
        _check(self.min_users >= 0 and self.min_positives >= 0, "evaluate.min_users",
               "min_users and min_positives must be >= 0")
        _check(len(self.ks) > 0 and all(k >= 1 for k in self.ks), "evaluate.ks", "must be positive integers")
        _check(0 < self.threshold < 1, "evaluate.threshold", "must be in (0, 1)")
        _check(self.calibration_bins >= 2, "evaluate.calibration_bins", "must be >= 2")
        known = {"random", "popularity", "item_rate", "logistic_regression", "logistic_regression_text", "als",
                 "pretrained"}
        unknown = sorted(set(self.baselines) - known)
        _check(not unknown, "evaluate.baselines", f"unknown {unknown}; known: {sorted(known)}")


@dataclass(frozen=True)
class PrivacyConfig:
    """Pseudonymous output: user ids in scores and recommendations become salted SHA-256 hashes."""

    pseudonymize_user_ids: bool = False
    salt_env: str = "ADREC_PSEUDONYM_SALT"


@dataclass(frozen=True)
class AppConfig:
    spark: SparkConfig = field(default_factory=SparkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    etl: EtlConfig = field(default_factory=EtlConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{'etl.lookback_days': 30, ...}``: for logging every parameter to MLflow."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) and \
                    not prefix.endswith(".conf"):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out


# ---------------------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"config '{key}': must not be null")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config '{key}': {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config '{key}': expected a mapping of settings, got {value!r}")
        return build_section(tp, value, key)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config '{key}': expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config '{key}': expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config '{key}': expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config '{key}': expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config '{key}': unsupported type {_type_name(tp)}")


# Keys that moved or were replaced: a clear error that says where, instead of "unknown key".
MOVED_KEYS = {
    "etl.split": "the split is decided by the training job over the whole training data now: move it to "
                 "'train.split' (method fraction|days|dates, valid/test fractions or days, cut-off dates)",
    "train.promotion_margin": "the champion gate compares test AUC and NDCG@K now: use "
                              "'train.promotion_auc_margin' and 'train.promotion_ndcg_margin' (both > 0) and "
                              "'train.promotion_k'",
}


def build_section(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """The config dataclass ``cls`` from a mapping (YAML or JSON values coerced to the field types; unknown and
    moved keys rejected with the key's full name ``prefix.key``)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if full in MOVED_KEYS:
            raise ConfigError(f"config '{full}' is no longer a setting: {MOVED_KEYS[full]}")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(names)}"
            raise ConfigError(f"config: unknown key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - all fields have defaults
        raise ConfigError(f"config '{prefix}': {e}") from e


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "conf":
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# The configs shipped inside the package (the wheel carries them as package data). In a source checkout
# ``adrec_spark/conf`` is a link to the top-level ``conf/`` folder, so each file has one copy.
CONF_DIR = Path(__file__).resolve().parent / "conf"


def packaged_configs() -> list[str]:
    """Names of the packaged configs, usable as ``--conf NAME`` from any folder."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def resolve_config_file(name: str | Path) -> Path:
    """A config file's path: an existing file as given, else a bare name (``demo``, ``cluster.yaml``) of a
    packaged config. Anything else is an error naming the absolute path it tried and the packaged names."""
    p = Path(name)
    if p.is_file():
        return p
    if p.parent == Path(".") and p.suffix in ("", ".yaml"):
        packaged = CONF_DIR / f"{p.stem}.yaml"
        if packaged.is_file():
            return packaged
    raise ConfigError(f"config file not found: {p.absolute()} (packaged configs, usable by name from any "
                      f"folder: {', '.join(packaged_configs())})")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def _leaf_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of the settings in ``data`` (a mapping under a ``conf`` key is one setting)."""
    out = []
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and key != "conf":
            out += _leaf_keys(value, f"{full}.")
        else:
            out.append(full)
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``'train.split.method=dates'`` -> ``{'train': {'split': {'method': 'dates'}}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from e
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config_with_sources(files: Iterable[str | Path] = (),
                             overrides: Iterable[str] = ()) -> tuple[AppConfig, dict[str, str]]:
    """:func:`load_config`, plus where each setting given came from (``file PATH`` or ``--set K=V``), by key."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in files:
        path = resolve_config_file(f)
        data = _read_yaml(path)
        merged = _deep_merge(merged, data)
        sources.update(dict.fromkeys(_leaf_keys(data), f"file {path.absolute()}"))
    for item in overrides:
        data = parse_override(item)
        merged = _deep_merge(merged, data)
        sources.update(dict.fromkeys(_leaf_keys(data), f"--set {item}"))
    return build_section(AppConfig, merged), sources


def load_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> AppConfig:
    """Merge YAML ``files`` (paths, or names of packaged configs; later wins) and ``--set`` style
    ``overrides`` over the defaults."""
    return load_config_with_sources(files, overrides)[0]


def _yaml_value(value: Any) -> str:
    """One value as single-line YAML (flow style), the way safe_load reads it back."""
    plain = list(value) if isinstance(value, tuple) else value
    text = yaml.safe_dump([plain], default_flow_style=True, width=float("inf")).strip()
    return text[1:-1]


def config_yaml(cfg: AppConfig, sources: Mapping[str, str] | None = None) -> str:
    """``cfg`` as YAML that :func:`load_config` reads back to an equal config; each setting is followed by a
    comment saying where it came from (``default`` unless ``sources`` names a file or a ``--set``)."""
    sources = sources or {}
    lines: list[str] = []

    def walk(node: Any, prefix: str, indent: str) -> None:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                walk(value, f"{prefix}{f.name}.", indent + "  ")
            else:
                origin = sources.get(f"{prefix}{f.name}", "default")
                lines.append(f"{indent}{f.name}: {_yaml_value(value)}  # {origin}")

    walk(cfg, "", "")
    return "\n".join(lines) + "\n"


def replace(cfg: AppConfig, *overrides: str) -> AppConfig:
    """A copy of ``cfg`` with ``key=value`` overrides applied and re-validated."""
    merged = cfg.to_dict()
    for item in overrides:
        merged = _deep_merge(merged, parse_override(item))
    return build_section(AppConfig, merged)
