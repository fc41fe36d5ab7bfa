"""The relevance model: a BERT cross-encoder over (ad text, user history) fused with numeric features.

    logit = pair(x) + user(z_u)
    pair  = head([pool(encoder(ad [SEP] history)) ; mlp(z_p)]) + wide(z_p)      (ranks one user's ads)
    user  = wide(z_u)                                                         (the user's own click bias)

z are the standardized numeric features: z_u the ones that describe only the user (``spec.user_features``,
e.g. how strict a rater the user is), z_p the others (ad quality, user-ad match). The numeric features enter
the head while the encoder trains (not stacked afterwards), and the wide term lets the classical signal act
directly. User-only features feed just the additive user bias: for one user scored at one moment it is the
same for every ad, so ranking by the full logit equals ranking by ``pair``, which is what
:meth:`RelevanceModel.logit_parts` exposes for ranking metrics on point-in-time test rows (where each row of
a user has its own user features). This module never imports Spark.

Saved layout (one folder, what MLflow logs as the model artifact)::

    spec.json           ModelSpec: feature names, standardization, max_length, pooling, sizes
    encoder/            the fine-tuned encoder (save_pretrained)
    tokenizer/          its tokenizer
    head.pt             the non-encoder weights (state dict)
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from adrec_spark.model.encoder import load_encoder, load_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class ModelSpec:
    numeric_features: list[str]
    numeric_mean: list[float]
    numeric_std: list[float]
    max_length: int = 256
    pooling: str = "mean"
    numeric_hidden: int = 32
    dropout: float = 0.1
    base_model: str = ""
    # Numeric features that depend on the user only: they enter just the additive user bias (see above).
    user_features: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported model format {data.get('format_version')}, expected {FORMAT_VERSION}")
        return cls(**data)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-6)


class RelevanceModel(nn.Module):
    def __init__(self, encoder: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.encoder = encoder
        self.spec = spec
        n = len(spec.numeric_features)
        hidden = int(encoder.config.hidden_size)
        self.register_buffer("num_mean", torch.tensor(spec.numeric_mean, dtype=torch.float32))
        self.register_buffer("num_std", torch.tensor(spec.numeric_std, dtype=torch.float32).clamp(min=1e-6))
        unknown = sorted(set(spec.user_features) - set(spec.numeric_features))
        if unknown:
            raise ValueError(f"user_features {unknown} are not among the numeric features {spec.numeric_features}")
        mask = [1.0 if f in spec.user_features else 0.0 for f in spec.numeric_features]
        self.register_buffer("user_mask", torch.tensor(mask, dtype=torch.float32), persistent=False)
        self.num_mlp = nn.Sequential(nn.Linear(n, spec.numeric_hidden), nn.GELU(),
                                     nn.Linear(spec.numeric_hidden, spec.numeric_hidden), nn.GELU())
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(hidden + spec.numeric_hidden, 1)
        self.wide = nn.Linear(n, 1)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        hidden = out.last_hidden_state
        if self.spec.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, attention_mask)

    def text_logit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The part of the pair logit that reads the text: the head's weights on the pooled encoder output. It
        depends on the token ids alone, so a pair whose ad and history texts did not change keeps it, whatever
        its counts did (incremental scoring carries it over)."""
        pooled = self.dropout(self.pool(input_ids, attention_mask, token_type_ids))
        hidden = pooled.shape[-1]
        return (pooled @ self.head.weight[:, :hidden].t()).squeeze(-1)

    def numeric_logit_parts(self, numeric: torch.Tensor, dtype: torch.dtype | None = None,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pair, user) parts of the logit from the numeric features alone: the head's weights on the numeric
        MLP, its bias and the wide term of the pair features; the wide term of the user-only features."""
        dtype = dtype or self.head.weight.dtype
        z = ((numeric.to(self.num_mean.dtype) - self.num_mean) / self.num_std).to(dtype)
        mask = self.user_mask.to(dtype)
        z_pair, z_user = z * (1 - mask), z * mask
        hidden = self.head.weight.shape[1] - self.spec.numeric_hidden
        pair = (self.num_mlp(z_pair) @ self.head.weight[:, hidden:].t() + self.head.bias + self.wide(z_pair))
        user = z_user @ self.wide.weight.t()
        return pair.squeeze(-1), user.squeeze(-1)

    def logit_parts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, numeric: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pair, user): the logit is their sum; ``user`` depends on the user-only features alone. The pair
        logit is :meth:`text_logit` plus the pair part of :meth:`numeric_logit_parts` (the head is linear over
        the pooled text and the numeric MLP side by side)."""
        text = self.text_logit(input_ids, attention_mask, token_type_ids)
        pair, user = self.numeric_logit_parts(numeric, text.dtype)
        return text + pair, user

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, numeric: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, return_parts: bool = False) -> torch.Tensor:
        """The click logit (n,); with ``return_parts`` the (2, n) stack of pair and user logits (through the
        module call, so DistributedDataParallel sees it)."""
        pair, user = self.logit_parts(input_ids, attention_mask, numeric, token_type_ids)
        return torch.stack([pair, user]) if return_parts else pair + user

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def save(self, out_dir: str | Path, tokenizer: object) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out / "encoder")
        tokenizer.save_pretrained(out / "tokenizer")  # type: ignore[attr-defined]
        torch.save({k: v.detach().float().cpu() for k, v in self.head_state_dict().items()}, out / "head.pt")
        (out / "spec.json").write_text(self.spec.to_json())
        return out


def build_model(base_path: str | Path, spec: ModelSpec, *, seed: int | None = None) -> RelevanceModel:
    """A fresh model: pretrained encoder from ``base_path``, newly initialised head."""
    if seed is not None:
        torch.manual_seed(seed)
    encoder = load_encoder(base_path)
    return RelevanceModel(encoder, spec)


def load_model(model_dir: str | Path) -> tuple[RelevanceModel, object]:
    """(model, tokenizer) from a saved folder, in fp32 on the CPU, in eval mode."""
    d = Path(model_dir)
    for part in ("spec.json", "encoder", "tokenizer", "head.pt"):
        if not (d / part).exists():
            raise FileNotFoundError(f"{d} is not a saved relevance model: {part} is missing")
    spec = ModelSpec.from_json((d / "spec.json").read_text())
    model = RelevanceModel(load_encoder(d / "encoder"), spec)
    missing, unexpected = model.load_state_dict(torch.load(d / "head.pt", map_location="cpu"), strict=False)
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise ValueError(f"head weights do not match the model: missing {missing}, unexpected {unexpected}")
    model.eval()
    return model, load_tokenizer(d / "tokenizer")
