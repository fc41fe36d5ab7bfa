"""The model as an MLflow pyfunc: a custom PythonModel with explicit pip requirements (mlflow.transformers
would pull in torchvision), so it loads anywhere, including through ``mlflow.pyfunc.spark_udf``."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from adrec_spark import schema as S

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # adrec_spark/
_REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "pyarrow", "pyyaml")


def pip_requirements() -> list[str]:
    """The installed versions of what the pyfunc imports at load and predict time."""
    out = []
    for name in _REQUIREMENTS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


class RelevancePyfunc(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with ``history_text``, ``ad_text`` and the numeric features; output: the click
    probability per row. Precision and threads come from ``ADREC_PYFUNC_PRECISION`` (default fp32) and
    ``ADREC_PYFUNC_THREADS``."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from adrec_spark.model.inference import Scorer

        threads = os.environ.get("ADREC_PYFUNC_THREADS")
        self.scorer = Scorer(context.artifacts["model_dir"],
                             precision=os.environ.get("ADREC_PYFUNC_PRECISION", "fp32"),
                             threads=int(threads) if threads else None)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict | None = None) -> np.ndarray:
        features = list(self.scorer.spec.numeric_features)  # this model's, the text-similarity ones too if it has them
        missing = [c for c in (S.HISTORY_TEXT, S.AD_TEXT, *features) if c not in model_input.columns]
        if missing:
            raise ValueError(f"model input lacks column(s) {', '.join(missing)}")
        numeric = model_input[features].to_numpy(dtype=np.float64)
        return self.scorer.score(model_input[S.AD_TEXT].tolist(), model_input[S.HISTORY_TEXT].tolist(), numeric)


def example_input(n: int = 2, numeric_features: tuple[str, ...] | list[str] = S.NUMERIC_FEATURES) -> pd.DataFrame:
    df = pd.DataFrame({S.HISTORY_TEXT: ["clicked: Budget flights to Lisbon | searched: cheap flights", ""][:n],
                       S.AD_TEXT: ["Last-minute city break in Prague | free cancellation", "Yoga mat"][:n]})
    for c in numeric_features:
        df[c] = [0.1, 0.0][:n]
    return df
