"""A tiny BERT built from a config (random weights, a small word-level vocabulary) for fast unit tests."""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "good", "great", "love", "best", "cheap", "deal", "travel", "flights", "hotel", "laptop", "phone",
    "camera", "shoes", "dress", "fitness", "gym", "yoga", "coffee", "pizza", "wine", "dog", "cat", "book",
    "novel", "car", "bad", "poor", "broken", "clicked", "searched", "bought", "reviewed", "ad", "about",
    "discover", "our", "perfect", "if", "you",
)


def make_tiny_bert(folder: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "|", ":", ",", ".", "-", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
