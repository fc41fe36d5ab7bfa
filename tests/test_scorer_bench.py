"""The scorer bench's model choice: a given encoder folder (the quality bench's half-precision carry copy, the
only MiniLM a GPU machine without the package has) is run, widened to fp32, and named in the JSON."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not part of the installed package

from adrec_spark.model.offline_train import half_precision_copy, safetensors_dtypes
from bench import scorer_bench as SB
from tests.tiny_bert import make_tiny_bert


def test_a_given_half_precision_encoder_is_run_from_fp32_and_named(tmp_path) -> None:
    import torch
    from safetensors.torch import load_file

    from adrec_spark.model.relevance import load_model

    half = tmp_path / "half"
    half_precision_copy(make_tiny_bert(tmp_path / "tiny"), half)
    model_dir, encoder_dir, source = SB._model_folder(tmp_path / "work", 64, half)
    assert source == f"{half} (weights stored as F16, run from fp32)"
    assert safetensors_dtypes(encoder_dir / "model.safetensors") == {"F32"}
    model = load_model(model_dir)[0]
    stored = load_file(half / "model.safetensors")
    name = next(k for k in stored if k.endswith("word_embeddings.weight"))
    weights = [v for k, v in model.state_dict().items() if k.endswith("word_embeddings.weight")]
    assert len(weights) == 1 and torch.equal(weights[0], stored[name].float())
