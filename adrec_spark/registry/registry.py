"""MLflow tracking and Model Registry: experiment set-up, logging the pyfunc, aliases, the promotion gate and
resolving ``name@alias`` to a pinned version and a local model folder."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from adrec_spark.config import MlflowConfig
from adrec_spark.errors import ModelResolutionError
from adrec_spark.io import fs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: int
    alias: str | None
    run_id: str | None
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def configure_mlflow(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured stores; create the experiment (with its artifact root) if needed.
    Returns the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking_uri)
    if cfg.registry_uri:
        mlflow.set_registry_uri(cfg.registry_uri)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is None:
        location = fs.mlflow_artifact_uri(cfg.artifact_location) if cfg.artifact_location else None
        exp_id = mlflow.create_experiment(cfg.experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def client(cfg: MlflowConfig):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.registry_uri or cfg.tracking_uri)


def resolve(cfg: MlflowConfig, *, alias: str | None = None, version: int | None = None,
            name: str | None = None) -> ResolvedModel:
    """Pin ``name@alias`` (or an explicit version) to one version; a clear error if it does not exist."""
    from mlflow.exceptions import MlflowException

    name = name or cfg.model_name
    c = client(cfg)
    try:
        if version is not None:
            mv = c.get_model_version(name, str(version))
        else:
            mv = c.get_model_version_by_alias(name, alias or "champion")
    except MlflowException as e:
        known = _known_aliases(c, name)
        what = f"version {version}" if version is not None else f"alias '{alias}'"
        hint = (f"; it has aliases {known}" if known else
                "; no version has an alias yet (train one: `adrec train`)") if known is not None else \
            f"; no registered model named '{name}' (train one: `adrec train`)"
        raise ModelResolutionError(f"model '{name}' {what} not found in {cfg.tracking_uri}{hint}") from e
    return ResolvedModel(name=name, version=int(mv.version), alias=alias, run_id=mv.run_id, source=mv.source)


def _known_aliases(c: object, name: str) -> dict[str, str] | None:
    try:
        return dict(c.get_registered_model(name).aliases)  # type: ignore[attr-defined]
    except Exception:
        return None


def download_model_dir(cfg: MlflowConfig, model: ResolvedModel, dest: str | Path) -> Path:
    """Copy the registered version's model folder (spec.json, encoder/, tokenizer/, head.pt) to ``dest``."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking_uri)
    if cfg.registry_uri:
        mlflow.set_registry_uri(cfg.registry_uri)
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".download")
    shutil.rmtree(tmp, ignore_errors=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.uri, dst_path=str(tmp)))
    found = [p.parent for p in local.rglob("spec.json")]
    if not found:
        raise ModelResolutionError(f"{model.uri} holds no adrec-spark model folder (spec.json missing)")
    shutil.move(str(found[0]), dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def log_pyfunc(model_dir: str | Path, *, name: str = "model") -> str:
    """Log ``model_dir`` as a pyfunc (signature, input example, explicit requirements) to the active run.
    Returns the logged model's URI."""
    import mlflow
    from mlflow.models import infer_signature

    from adrec_spark.model.relevance import ModelSpec
    from adrec_spark.registry.pyfunc import PACKAGE_DIR, RelevancePyfunc, example_input, pip_requirements

    spec = ModelSpec.from_json((Path(model_dir) / "spec.json").read_text())
    example = example_input(numeric_features=spec.numeric_features)
    signature = infer_signature(example, [0.5, 0.5])
    info = mlflow.pyfunc.log_model(
        name=name, python_model=RelevancePyfunc(), artifacts={"model_dir": str(model_dir)},
        code_paths=[str(PACKAGE_DIR)], pip_requirements=pip_requirements(), signature=signature,
        input_example=example)
    return info.model_uri


def register(cfg: MlflowConfig, model_uri: str, *, tags: dict[str, str] | None = None) -> int:
    import mlflow

    mv = mlflow.register_model(model_uri, cfg.model_name, tags=tags)
    return int(mv.version)


def set_alias(cfg: MlflowConfig, alias: str, version: int) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client(cfg).set_registered_model_alias(cfg.model_name, alias, str(version))
    except MlflowException as e:
        raise ModelResolutionError(
            f"cannot set alias '{alias}' on {cfg.model_name} version {version}: {e.message}") from e
    log.info("alias %s -> %s version %d", alias, cfg.model_name, version)


def tag_version(cfg: MlflowConfig, version: int, tags: dict[str, object]) -> None:
    c = client(cfg)
    for k, v in tags.items():
        c.set_model_version_tag(cfg.model_name, str(version), k, str(v))


def version_tags(cfg: MlflowConfig, version: int, *, name: str | None = None) -> dict[str, str]:
    """The tags of one registered version (the split cut-offs and gate numbers the training job recorded)."""
    return dict(client(cfg).get_model_version(name or cfg.model_name, str(version)).tags)


@dataclass(frozen=True)
class GateMetrics:
    """One model's numbers on the gate's rows: test AUC and the mean per-user NDCG@K."""

    auc: float
    ndcg: float


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    challenger: GateMetrics
    champion: GateMetrics | None
    champion_version: int | None
    auc_margin: float
    ndcg_margin: float
    k: int
    rows: int

    def tags(self) -> dict[str, str]:
        """Every number of the decision, as registry version tags."""
        def num(x: float | None) -> str:
            return "" if x is None else f"{x:.6f}"

        k = self.k
        return {"promotion_decision": "promoted" if self.promote else "kept_champion",
                "promotion_reason": self.reason, "promotion_auc_margin": str(self.auc_margin),
                "promotion_ndcg_margin": str(self.ndcg_margin), "promotion_k": str(k), "gate_rows": str(self.rows),
                "challenger_gate_auc": num(self.challenger.auc),
                f"challenger_gate_ndcg_at_{k}": num(self.challenger.ndcg),
                "champion_gate_auc": num(self.champion.auc if self.champion else None),
                f"champion_gate_ndcg_at_{k}": num(self.champion.ndcg if self.champion else None),
                "champion_version_compared": "" if self.champion_version is None else str(self.champion_version)}


def decide_promotion(challenger: GateMetrics, champion: GateMetrics | None, champion_version: int | None, *,
                     auc_margin: float, ndcg_margin: float, k: int, rows: int) -> PromotionDecision:
    """Should the challenger become champion? Both models' numbers come from the same ``rows`` test rows that
    neither trained on.

    No champion: promote. Otherwise promote only when the challenger is not worse on test AUC nor on
    NDCG@``k``, and better on at least one by its margin (margins > 0: a tie never promotes). No rows, or a
    NaN on either side (e.g. a single class, or no user with a click), never promotes; the reason says which.
    """
    def decision(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, reason, challenger, champion, champion_version, auc_margin,
                                 ndcg_margin, k, rows)

    if champion_version is None or champion is None:
        return decision(True, "no champion yet")
    ndcg = f"NDCG@{k}"
    if rows == 0:
        return decision(False, f"kept champion v{champion_version}: no test rows that neither model trained on")
    nan = [f"{who} {name}" for who, m in (("challenger", challenger), (f"champion v{champion_version}", champion))
           for name, v in (("AUC", m.auc), (ndcg, m.ndcg)) if math.isnan(v)]
    if nan:
        return decision(False, f"kept champion v{champion_version}: {', '.join(nan)} undefined (NaN) on the "
                               f"{rows} gate rows; a NaN never promotes")
    d_auc, d_ndcg = challenger.auc - champion.auc, challenger.ndcg - champion.ndcg
    numbers = (f"AUC {challenger.auc:.4f} vs {champion.auc:.4f} ({d_auc:+.4f}), {ndcg} {challenger.ndcg:.4f} vs "
               f"{champion.ndcg:.4f} ({d_ndcg:+.4f}) on {rows} rows neither model trained on")
    worse = [name for name, d in (("AUC", d_auc), (ndcg, d_ndcg)) if d < 0]
    if worse:
        return decision(False, f"kept champion v{champion_version}: challenger worse on {' and '.join(worse)}; "
                               + numbers)
    eps = 1e-12
    better = [name for name, d, m in (("AUC", d_auc, auc_margin), (ndcg, d_ndcg, ndcg_margin)) if d >= m - eps]
    if not better:
        return decision(False, f"kept champion v{champion_version}: challenger not better by the margin (AUC "
                               f"+{auc_margin}, {ndcg} +{ndcg_margin}) on either; " + numbers)
    return decision(True, f"promoted over champion v{champion_version}: better on {' and '.join(better)} by the "
                          "margin, worse on neither; " + numbers)


def local_model_cache(root: str | Path, model: ResolvedModel) -> Path:
    """Unique per registry entry (the run id), so two registries never share a cached folder name."""
    return Path(root) / f"{model.name}-v{model.version}-{(model.run_id or 'norun')[:12]}"


def ensure_local_model(cfg: MlflowConfig, model: ResolvedModel, cache_root: str | Path) -> Path:
    """The version's model folder under ``cache_root`` (downloaded once, reused after).

    Jobs sharing the cache may download the same version at the same time: each downloads into a folder of
    its own and renames it into place (atomic), so the cached folder is always complete; a job that loses the
    race keeps the winner's copy."""
    path = local_model_cache(cache_root, model)
    if (path / "spec.json").is_file():
        return path
    os.makedirs(cache_root, exist_ok=True)
    own = Path(tempfile.mkdtemp(prefix=f"{path.name}.", suffix=".partial", dir=cache_root))
    try:
        download_model_dir(cfg, model, own / "model")
        try:
            os.rename(own / "model", path)
        except OSError as e:
            if not (path / "spec.json").is_file():
                raise ModelResolutionError(f"cannot cache {model.uri} at {path}: {e} (remove the folder if it "
                                           "is an incomplete copy)") from e
    finally:
        shutil.rmtree(own, ignore_errors=True)
    return path
