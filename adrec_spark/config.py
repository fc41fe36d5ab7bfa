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
from typing import Any, Literal, Union

import yaml

from adrec_spark.errors import ConfigError
from adrec_spark.schema import NUMERIC_FEATURES


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
    # Delta jars resolved once by `make setup` (offline afterwards). On a cluster either ship jars from
    # here (spark.jars) or set use_packages: true to let Spark resolve `delta_package` from Maven.
    jars_dir: str | None = ".jars"
    use_packages: bool = False
    delta_package: str = "io.delta:delta-spark_4.2_2.13:4.4.0"
    # Rows per Arrow batch sent to Python workers: bounds the scoring workers' memory. A byte cap as well
    # (spark.sql.execution.arrow.maxBytesPerBatch; a batch ends at whichever limit comes first) suits long texts.
    arrow_max_records_per_batch: int = 2048
    arrow_max_bytes_per_batch: int | None = None
    driver_memory: str | None = "4g"
    log_level: str = "WARN"
    conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.shuffle_partitions >= 1, "spark.shuffle_partitions", "must be >= 1")
        _check(self.arrow_max_records_per_batch >= 1, "spark.arrow_max_records_per_batch", "must be >= 1")
        _check(self.arrow_max_bytes_per_batch is None or 0 < self.arrow_max_bytes_per_batch < 2**31 - 1,
               "spark.arrow_max_bytes_per_batch", "must be between 1 and 2147483646 bytes (or null)")
        _check(self.jars_dir is not None or self.use_packages or "spark.jars" in self.conf,
               "spark.jars_dir", "set a jars folder, use_packages: true, or spark.conf['spark.jars']")


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
    """Time-based split of training examples. ``fraction``: by rank of (event_time, user, ad) over the
    examples of one ETL run (use it for backfills). ``dates``: fixed cut-offs, stable across nightly runs."""

    method: Literal["fraction", "dates"] = "fraction"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    valid_start: str | None = None
    test_start: str | None = None

    def __post_init__(self) -> None:
        _check(0 <= self.valid_fraction < 1, "etl.split.valid_fraction", "must be in [0, 1)")
        _check(0 <= self.test_fraction < 1, "etl.split.test_fraction", "must be in [0, 1)")
        _check(self.valid_fraction + self.test_fraction < 1, "etl.split",
               "valid_fraction + test_fraction must be < 1")
        _check_date(self.valid_start, "etl.split.valid_start")
        _check_date(self.test_start, "etl.split.test_start")
        if self.method == "dates":
            _check(self.valid_start is not None and self.test_start is not None, "etl.split",
                   "method 'dates' needs valid_start and test_start")
            _check(str(self.valid_start) <= str(self.test_start), "etl.split",
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
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        for key in ("lookback_days", "text_max_chars", "history_max_items", "history_max_chars"):
            _check(getattr(self, key) >= 1, f"etl.{key}", "must be >= 1")
        _check(self.dedup_lookback_days >= 0, "etl.dedup_lookback_days", "must be >= 0")
        _check(self.max_clock_skew_minutes >= 0, "etl.max_clock_skew_minutes", "must be >= 0")
        _check(self.attribution_hours >= 0, "etl.attribution_hours", "must be >= 0")
        _check(0 < self.rate_prior < 1, "etl.rate_prior", "must be in (0, 1)")
        _check(self.rate_prior_strength > 0, "etl.rate_prior_strength", "must be > 0")


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
    promotion_margin: float = 0.0
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
        for key in ("max_steps", "max_train_rows", "max_eval_rows", "eval_every_steps", "window_days"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"train.{key}", "must be >= 1 or null")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience", "must be >= 0")
        _check(self.max_grad_norm > 0, "train.max_grad_norm", "must be > 0")
        _check(self.table_version is None or self.table_version >= 0, "train.table_version", "must be >= 0")
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
    popular_pool: int = 50
    chaos: ChaosConfig = field(default_factory=ChaosConfig)
    gpu: ScoreGpuConfig = field(default_factory=ScoreGpuConfig)

    def __post_init__(self) -> None:
        _check(self.token_budget is None or self.token_budget >= 1, "score.token_budget", "must be >= 1")
        for key in ("retrieval_top_n", "top_k", "batch_size", "max_per_advertiser", "popular_pool",
                    "prior_affinity_levels"):
            _check(getattr(self, key) >= 1, f"score.{key}", "must be >= 1")
        _check(self.prior_top_n >= 0, "score.prior_top_n", "must be >= 0")
        _check(0 < self.duplicate_similarity <= 1, "score.duplicate_similarity", "must be in (0, 1]")
        _check(self.torch_threads is None or self.torch_threads >= 1, "score.torch_threads", "must be >= 1")
        _check_alias(self.model_alias, "score.model_alias")


@dataclass(frozen=True)
class EvaluateConfig:
    ks: tuple[int, ...] = (5, 10)
    threshold: float = 0.5
    calibration_bins: int = 10
    report_dir: str = "./reports"
    baselines: tuple[str, ...] = (
        "random", "popularity", "item_rate", "logistic_regression", "als", "pretrained",
    )
    als_rank: int = 16
    als_max_iter: int = 10
    als_reg: float = 0.1
    seed: int = 7

    def __post_init__(self) -> None:
        _check(len(self.ks) > 0 and all(k >= 1 for k in self.ks), "evaluate.ks", "must be positive integers")
        _check(0 < self.threshold < 1, "evaluate.threshold", "must be in (0, 1)")
        _check(self.calibration_bins >= 2, "evaluate.calibration_bins", "must be >= 2")
        known = {"random", "popularity", "item_rate", "logistic_regression", "als", "pretrained"}
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
        return _build(tp, value, key)
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


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
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


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level")
    return data


def parse_override(item: str) -> dict[str, Any]:
    """``'etl.split.method=dates'`` -> ``{'etl': {'split': {'method': 'dates'}}}`` (value parsed as YAML)."""
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


def load_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> AppConfig:
    """Merge YAML ``files`` (later wins) and ``--set`` style ``overrides`` over the defaults."""
    merged: dict[str, Any] = {}
    for f in files:
        merged = _deep_merge(merged, _read_yaml(f))
    for item in overrides:
        merged = _deep_merge(merged, parse_override(item))
    return _build(AppConfig, merged)


def replace(cfg: AppConfig, *overrides: str) -> AppConfig:
    """A copy of ``cfg`` with ``key=value`` overrides applied and re-validated."""
    merged = cfg.to_dict()
    for item in overrides:
        merged = _deep_merge(merged, parse_override(item))
    return _build(AppConfig, merged)
