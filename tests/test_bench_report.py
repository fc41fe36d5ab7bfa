"""The benchmark page is generated from bench/results/*.json, and the benches' ratios are like for like.

Fast: no Spark, no model."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not part of the installed package

from bench import report
from bench.fairness import UnfairComparison, comparison
from bench.scoring_bench import INPROC, JOB, UDF, Options, comparisons, parse_options

SETTINGS = {"precision": "fp32", "cores": 2, "processes": 2, "torch_threads": 1, "partitions": 4, "pairs": 100,
            "batch_size": 64, "output": "delta"}


def test_committed_benchmark_page_is_what_the_script_generates() -> None:
    expected = report.page(report.load())
    assert report.PAGE.read_text() == expected, "docs/benchmarks.md is stale: run `python bench/run.py report`"


def test_readme_summary_table_is_generated_from_the_results() -> None:
    readme = report.README.read_text()
    assert report.SUMMARY_START in readme and report.SUMMARY_END in readme
    assert report.readme_with_summary(readme, report.load()) == readme, (
        "the README's benchmark summary is stale: run `python bench/run.py report`")


def test_page_names_command_and_machine_and_says_not_recorded_when_missing(tmp_path: Path) -> None:
    results = report.load()
    etl = {k: v for k, v in results["etl"].items() if k != "machine"}
    text = report.page({"etl": etl})
    assert "Machine: not recorded." in text
    assert "Command: `make bench-etl`" in text
    machine = {"cpu": "Some CPU", "cores": 2, "python": "3.11.7", "torch": "2.15", "cuda": False, "date": "2026-01-02"}
    assert "Machine: CPU Some CPU, 2 cores" in report.page({"etl": {**etl, "machine": machine}})


def test_stale_readme_figure_is_detected() -> None:
    readme = report.README.read_text()
    start = readme.index(report.SUMMARY_START)
    figure = re.search(r"\d+\.\d+x", readme[start:]).group()  # the block's first ratio, whatever it is now
    tampered = readme[:start] + readme[start:].replace(figure, "99.99x", 1)
    assert tampered != readme
    assert report.readme_with_summary(tampered, report.load()) != tampered


def test_comparison_records_what_both_sides_held_constant() -> None:
    a = {"label": "bf16", "rate": 30.0, "settings": {**SETTINGS, "precision": "bf16"}}
    b = {"label": "fp32", "rate": 10.0, "settings": SETTINGS}
    c = comparison("bf16_vs_fp32", a, b, varies=("precision",))
    assert c["ratio"] == pytest.approx(3.0)
    assert c["varies"] == {"precision": ["bf16", "fp32"]}
    assert c["held_constant"] == {"batch_size": 64, "cores": 2, "output": "delta", "pairs": 100, "partitions": 4,
                                  "processes": 2, "torch_threads": 1}


@pytest.mark.parametrize("key, value", [("precision", "bf16"), ("partitions", 1), ("torch_threads", 2),
                                        ("output", "noop"), ("pairs", 99), ("cores", 4)])
def test_comparison_refuses_an_undeclared_difference(key: str, value: object) -> None:
    a = {"label": "job", "rate": 30.0, "settings": {**SETTINGS, key: value}}
    b = {"label": "udf", "rate": 10.0, "settings": SETTINGS}
    with pytest.raises(UnfairComparison, match=key):
        comparison("job_vs_udf", a, b)


def test_comparison_refuses_a_side_without_its_settings() -> None:
    partial = {k: v for k, v in SETTINGS.items() if k != "output"}
    with pytest.raises(UnfairComparison, match="output"):
        comparison("x", {"label": "a", "rate": 1.0, "settings": partial},
                   {"label": "b", "rate": 1.0, "settings": partial})


def _row(method: str, precision: str, rate: float, **settings: object) -> dict[str, object]:
    base = ({"cores": 2, "processes": 1, "torch_threads": 2, "partitions": None, "output": "memory"}
            if method == INPROC else {"cores": 2, "processes": 2, "torch_threads": 1, "partitions": 4,
                                      "output": "delta"})
    return {"method": method, "precision": precision, "pairs_per_second": rate,
            "settings": {**base, "precision": precision, "pairs": 100, "batch_size": 64, **settings}}


def test_scoring_bench_compares_job_and_spark_udf_at_the_same_settings() -> None:
    rows = [_row(m, p, r) for m, p, r in [(INPROC, "fp32", 50.0), (INPROC, "bf16", 135.0), (JOB, "fp32", 50.0),
                                           (JOB, "bf16", 100.0), (UDF, "fp32", 40.0), (UDF, "bf16", 80.0)]]
    comps = {c["name"]: c for c in comparisons(rows, "bf16")}
    udf = comps["job_vs_spark_udf_bf16"]
    assert udf["ratio"] == pytest.approx(1.25)
    assert udf["varies"] == {}
    assert udf["held_constant"]["precision"] == "bf16" and udf["held_constant"]["partitions"] == 4
    assert set(comps["job_vs_in_process_fp32"]["varies"]) == {"processes", "torch_threads", "partitions", "output"}
    assert comps["bf16_vs_fp32_in_process"]["ratio"] == pytest.approx(2.7)
    # the old bench's spark_udf: one partition, torch's default threads, a no-op sink -> refused
    rows[-1] = _row(UDF, "bf16", 80.0, partitions=1, output="noop")
    with pytest.raises(UnfairComparison, match="partitions"):
        comparisons(rows, "bf16")


def test_status_names_what_a_comparison_varies_by_design() -> None:
    rows = [_row(m, p, r) for m, p, r in [(INPROC, "fp32", 50.0), (JOB, "fp32", 40.0), (UDF, "fp32", 40.0)]]
    comps = {c["name"]: c for c in comparisons(rows, "fp32")}
    assert report.status(comps["job_vs_spark_udf_fp32"]) == "like for like"
    assert report.status(comps["job_vs_in_process_fp32"]) == (
        "like for like but for output, partitions, processes, torch_threads")
    odd = {**comps["job_vs_spark_udf_fp32"], "varies": {"partitions": [4, 1]}}  # not allowed for this pair
    assert report.status(odd) == "not like for like: partitions differ"


def test_committed_scoring_and_training_results_hold_their_comparisons_like_for_like() -> None:
    results = report.load()
    for name in ("scoring", "training"):
        comps = results[name]["comparisons"]
        assert comps, name
        for c in comps:
            assert report.status(c).startswith("like for like"), (name, c["name"])
    assert report.PREDATES not in "\n".join(report.summary_table(results))


def test_reduced_scoring_run_options_and_its_command() -> None:
    o = parse_options(["--users", "2", "--rounds", "1"])
    assert (o.users, o.rounds, o.cascade_users) == (2, 1, 40)
    assert o.command() == "python bench/run.py scoring --users 2 --rounds 1"
    assert Options().command() == "python bench/run.py scoring"
    with pytest.raises(SystemExit):
        parse_options(["--users", "0"])


def test_scoring_bench_scripts_are_valid_python_once_filled_in() -> None:
    from bench import scoring_bench as sb

    filled = {"job": sb.SPARK_JOB.format(root="/r", work="/w", date="2024-01-14", overrides=("a=1",)),
              "spark_udf": sb.SPARK_UDF.format(root="/r", work="/w", pairs="/p", out="/o")}
    for name, code in filled.items():
        compile(code, name, "exec")
    assert '"output": "delta"' in filled["spark_udf"] and ".repartition(parts)" in filled["spark_udf"]


def _quality(methods: dict[str, tuple[float, float]], diffs: dict[str, tuple[float, float, float]],
             model: str = "model", **extra: object) -> dict[str, object]:
    """A hand-written quality JSON: methods' (AUC, NDCG@10) and the model's paired (diff, low, high)."""
    table = {m: {"auc": a, "ndcg@10": n, "log_loss": 0.5} for m, (a, n) in methods.items()}
    comparison = {f"{model} - {m}": {"ndcg_diff@10": d, "ndcg_diff_ci_low@10": lo, "ndcg_diff_ci_high@10": hi,
                                   "n_users": 100.0, "users_better": 50.0, "users_worse": 30.0}
                  for m, (d, lo, hi) in diffs.items()}
    return {"command": "cmd", "recipe": ["model.max_length=128"], "table": table, "comparison": comparison, **extra}


GPU_DEMO = _quality(
    {"model": (0.79, 0.88), "model [by probability]": (0.79, 0.87), "random": (0.5, 0.6),
     "popularity": (0.6, 0.7), "item_rate": (0.7, 0.8), "als": (0.55, 0.72), "logistic_regression": (0.74, 0.83),
     "logistic_regression_text": (0.76, 0.85), "pretrained": (0.52, 0.65)},
    {"logistic_regression_text": (0.03, 0.01, 0.05), "logistic_regression": (0.05, 0.02, 0.08)},
    dataset="demo", cost={"examples": 16000, "epochs": 4, "tokens": 128, "minutes": 2.5,
                          "device": "NVIDIA H200 (cuda:0)", "precision": "bf16"}, trained_on={"device": "cuda:0"})


def test_text_lift_table_per_dataset_from_new_and_old_json() -> None:
    cpu_demo = _quality({"model v1": (0.7, 0.8), "logistic_regression": (0.75, 0.82)}, {}, dataset="demo",
                        cost={"examples": 2000, "epochs": 1, "tokens": 128, "minutes": 4.0, "device": "cpu"})
    old_movielens = _quality({"model v2": (0.7423, 0.8349), "logistic_regression": (0.7406, 0.8349),
                              "pretrained": (0.4703, 0.6185)}, {"logistic_regression": (0.0, -0.0037, 0.0038)},
                             model="model v2",
                             recipe=["train.max_train_rows=12000", "train.epochs=1", "model.max_length=80"])
    page = report.page({"quality-gpu-demo": GPU_DEMO, "quality-demo": cpu_demo, "quality-eval-v2": old_movielens})
    lift = page[page.index("## Text lift"):]
    demo = lift[lift.index("### Demo data"):]
    assert demo.startswith("### Demo data (generated logs): GPU, `bench/results/quality-gpu-demo.json`")  # GPU first
    assert "| logistic regression + text similarity | 0.7600 | 0.8500 | +0.0300 | +0.0100 .. +0.0500 |" in demo
    assert "| item rate | 0.7000 | 0.8000 | - | - |" in demo  # no paired row recorded for it
    assert "| fine-tuned model (`model`) | 0.7900 | 0.8800 |  |  |" in demo
    assert "Fine-tuning cost: 16,000 examples x 4 epoch(s) at 128 tokens, 2.5 min on NVIDIA H200 (cuda:0) (bf16)." \
        in demo
    # best baseline by NDCG@10 and by AUC is the text-similarity regression: 0.88 - 0.85, 0.79 - 0.76
    assert ("Gain over the best baseline: NDCG@10 +0.0300 against logistic_regression_text (paired, 95% interval "
            "+0.0100 .. +0.0500); test AUC +0.0300 against logistic_regression_text.") in demo
    movielens = lift[lift.index("### MovieLens-100k"):lift.index("### Demo data")]
    assert "CPU, `bench/results/quality-eval-v2.json`" in movielens
    assert "| logistic regression + text similarity | not in this run | - | - | - |" in movielens
    assert "| logistic regression | 0.7406 | 0.8349 | +0.0000 | -0.0037 .. +0.0038 |" in movielens
    assert "at most 12000 examples x 1 epoch(s) at 80 tokens (from the recipe" in movielens
    assert "test AUC +0.0017 against logistic_regression." in movielens
    assert "## Demo data (generated logs) quality (`quality-gpu-demo`)" in page


def test_text_lift_says_when_a_dataset_has_no_run() -> None:
    lift = "\n".join(report.text_lift_section({"quality-gpu-demo": GPU_DEMO}))
    assert "### MovieLens-100k\n\nNo run recorded yet." in lift
    assert report.dataset_of("quality-offline-movielens-cpu", {}) == "movielens"
    assert report.dataset_of("quality-24k-rows", {}) == "movielens"  # older JSON: MovieLens


def test_summary_names_the_model_and_both_regressions_for_each_dataset() -> None:
    demo = _quality({"model v2": (0.6908, 0.6557), "logistic_regression": (0.6565, 0.6063),
                     "logistic_regression_text": (0.6910, 0.6553)}, {}, dataset="demo")
    rows = [r[:2] for r in report.summary_rows({"quality-demo": demo})]
    assert rows == [["Demo data (CPU) NDCG@10 / test AUC, model v2", "0.6557 / 0.6908"],
                    ["Demo data (CPU) NDCG@10 / test AUC, logistic regression", "0.6063 / 0.6565"],
                    ["Demo data (CPU) NDCG@10 / test AUC, logistic regression + text similarity", "0.6553 / 0.6910"]]
    rows = [r[0] for r in report.summary_rows({"quality-demo": demo, "quality-gpu-demo": GPU_DEMO})]
    assert rows[0] == "Demo data (GPU) NDCG@10 / test AUC, model" and rows[3].startswith("Demo data (CPU)")


SCORER_GPU = {
    "command": "python bench/run.py scorer", "machine": {"gpu": "NVIDIA H200", "cores": 16}, "device": "cuda:0",
    "precision": "bf16", "precisions": ["bf16"], "pairs": 8000, "users": 114, "ads_per_user": 70, "threads": 2,
    "model_source": "MiniLM", "pair_tokens": {"mean": 119.7}, "tokenize_distinct_texts_s": 0.025,
    "assembly_pairs_per_s_one_core": 405607.3, "results": {}, "ratios": {},
    "by_precision": {"bf16": {"legacy_pairs_per_s": 3000.0, "scorer_pairs_per_s": 62000.0, "scorer_vs_legacy": 20.7,
                              "cross_encoder_pairs_per_s": 2900.0, "scorer_vs_cross_encoder": 21.4,
                              "logit_correlation_with_legacy": 1.0, "logit_correlation_with_fp32": 1.0}},
    "sweep_pairs": 100000, "token_budget_sweep": [
        {"token_budget": 16384, "pairs_per_s": 43818.7, "gpu_busy": 0.448, "peak_memory_gib": 0.336},
        {"token_budget": 65536, "pairs_per_s": 72844.4, "gpu_busy": 0.913, "peak_memory_gib": 0.731}],
    "best_pairs_per_s": 72844.4, "fraction_of_ceiling": 0.2142, "ceiling_pairs_per_s": "~340,000 on one H200"}


def test_gpu_scorer_sweep_and_summary() -> None:
    section = "\n".join(report.scorer_section("scorer-gpu", SCORER_GPU))
    assert "| 65,536 | 72,844 | 91% | 0.73 GiB |" in section
    assert "Best: 72,844 pairs/s, 21% of the physical ceiling (~340,000 on one H200)." in section
    rows = [r[:2] for r in report.summary_rows({"scorer-gpu": SCORER_GPU})]
    assert rows == [["scorer on NVIDIA H200 (bf16): pairs/s, / `CrossEncoder.predict`", "72,844 (21% of the ceiling), "
                     "21.4x"], ["scorer on GPU: busy at the best token budget", "91% (budget 65,536)"]]


def test_quality_section_lists_every_run_of_a_session_and_the_one_evaluated() -> None:
    runs = [{"variant": "base", "status": "trained", "overrides": {}, "tokens": 128, "initial_valid_auc": 0.7337,
             "best_valid_auc": 0.7341, "steps": 1250, "epochs": 1, "minutes": 0.85, "stopped_early": True},
            {"variant": "t384", "status": "trained", "overrides": {"max_length": 384}, "tokens": 384,
             "initial_valid_auc": 0.7337, "best_valid_auc": 0.7345, "steps": 1250, "epochs": 1, "minutes": 1.8,
             "stopped_early": True},
            {"variant": "oom", "status": "failed", "reason": "CUDA out of memory"}]
    d = {**GPU_DEMO, "selection": {"rule": "the best validation AUC", "selected": "t384", "runs": runs}}
    section = "\n".join(report.quality_section("quality-gpu-demo", d))
    assert "include the sharing), picked by the best validation AUC:" in section
    assert "| base | `the recipe` | 128 | 0.7337 | 0.7341 | 1,250 (1 epoch(s)) | 0.8 min, stopped early |" in section
    assert "| t384 (evaluated) | `max_length=384` | 384 | 0.7337 | 0.7345 |" in section
    assert "| oom | - | - | - | - | - | failed: CUDA out of memory |" in section


def _curve(*points: tuple[int, float]) -> list[dict[str, float]]:
    return [{"step": step, "valid_auc": auc, "valid_log_loss": 0.3} for step, auc in points]


def test_text_lift_says_whether_fine_tuning_moved_validation_auc_off_its_start() -> None:
    """The fused model starts from a logistic regression and keeps its best state, step 0 included: the page says
    plainly when no evaluation after step 0 beat it (the model kept its starting state)."""
    kept = _quality({"model v1": (0.69, 0.65), "logistic_regression_text": (0.691, 0.655)}, {}, dataset="demo",
                    cost={"examples": 2000, "epochs": 1, "tokens": 128, "minutes": 2.3, "device": "cpu"},
                    history=_curve((0, 0.6822), (125, 0.6796)))
    demo = "\n".join(report.text_lift_section({"quality-demo": kept}))
    assert ("Validation AUC while fine-tuning: 0.6822 at step 0 (the starting logistic regression), best 0.6822 at "
            "step 0 of 125: no evaluation after step 0 beat it, so the model is its starting state.") in demo
    moved = {**kept, "history": _curve((0, 0.70), (100, 0.72), (200, 0.71))}
    demo = "\n".join(report.text_lift_section({"quality-demo": moved}))
    assert ("Validation AUC while fine-tuning: 0.7000 at step 0 (the starting logistic regression), best 0.7200 at "
            "step 100 of 200 (+0.0200).") in demo
    demo = "\n".join(report.text_lift_section({"quality-demo": {**kept, "history": None}}))
    assert "Validation AUC while fine-tuning: not recorded in this JSON." in demo


@pytest.mark.parametrize("master, parallelism, cores", [
    ("local[2]", 4, 2),  # the session sets spark.default.parallelism to the shuffle partitions: not the cores
    ("local", 4, 1),
    ("local[3, 2]", 8, 3),
    ("spark://host:7077", 8, 8),
])
def test_a_spark_benchs_cores_are_its_task_slots_not_its_default_parallelism(master, parallelism, cores) -> None:
    from bench.common import spark_cores

    assert spark_cores(master, parallelism) == cores
