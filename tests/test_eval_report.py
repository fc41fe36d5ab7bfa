"""The HTML report: self-contained, complete, highlighted, NaN-safe. No Spark needed."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from adrec_spark.evaluation.report import MISSING, best_rows, format_value, write_report

METHODS = ["bert_cross_encoder", "popularity", "<b>logreg</b> & co"]


def _curves(seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    fpr, tpr, _ = skm.roc_curve(y, s)
    precision, recall, _ = skm.precision_recall_curve(y, s)
    bins = np.minimum((s * 10).astype(int), 9)
    cal = pd.DataFrame({"bin": bins, "s": s, "y": y}).groupby("bin").agg(
        mean_score=("s", "mean"), frac_positive=("y", "mean"), count=("y", "size")).reset_index()
    return {"roc": pd.DataFrame({"fpr": fpr, "tpr": tpr}),
            "pr": pd.DataFrame({"recall": recall, "precision": precision}), "calibration": cal}


@pytest.fixture
def report_inputs():
    table = pd.DataFrame(
        {
            "auc": [0.81, 0.64, 0.77],
            "log_loss": [0.41, np.nan, 0.45],
            "ece": [0.02, np.nan, 0.05],
            "ndcg@10": [0.52, 0.31, 0.47],
            "map@10": [0.40, 0.22, np.nan],
            "mrr": [0.55, 0.35, 0.50],
            "n": [1000.0, 1000.0, 1000.0],
        },
        index=pd.Index(METHODS, name="method"),
    )
    popularity_curves = _curves(2)
    popularity_curves["calibration"] = popularity_curves["calibration"].iloc[0:0]  # not probabilities: empty
    curves = {METHODS[0]: _curves(1), METHODS[1]: popularity_curves, METHODS[2]: _curves(3)}
    beyond = pd.DataFrame(
        {"coverage": [0.3, 0.01, 0.2], "ild_category": [0.6, 0.1, 0.5], "personalization": [0.9, 0.0, 0.8],
         "novelty": [7.5, 2.1, 6.0], "gini_advertiser": [0.4, 0.9, np.nan]},
        index=pd.Index(METHODS, name="model"),
    )
    return table, curves, beyond


def _best_cells(text: str) -> list[str]:
    return re.findall(r'<td class="best">([^<]*)</td>', text)


def test_report_is_complete_and_self_contained(tmp_path, report_inputs) -> None:
    table, curves, beyond = report_inputs
    out = write_report(tmp_path / "sub" / "report.html", title="Nightly eval 2024-01-02 <test>", table=table,
                       curves=curves, beyond=beyond, notes=["test split: 2024-01-01", "a & b"],
                       subtitle="model v3 vs baselines")
    assert out == tmp_path / "sub" / "report.html"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert text.rstrip().endswith("</html>")
    assert "http://" not in text and "https://" not in text
    assert "Nightly eval 2024-01-02 &lt;test&gt;" in text and "<test>" not in text
    assert "a &amp; b" in text
    for method in METHODS:
        assert method.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in text
    assert "<b>logreg</b>" not in text
    for metric in [*table.columns, *beyond.columns]:
        assert f"<th>{metric}</th>" in text
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', text)
    assert len(images) >= 5  # ROC, PR, calibration, ranking bars, beyond bars
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert text.count(MISSING) >= 4  # the NaN cells


def test_report_highlights_best_per_column(tmp_path, report_inputs) -> None:
    table, curves, _ = report_inputs
    text = write_report(tmp_path / "r.html", title="t", table=table, curves=curves).read_text(encoding="utf-8")
    # auc .81 (max), log_loss .41 and ece .02 (min), ndcg .52, map .40, mrr .55; "n" is a count: no highlight
    assert _best_cells(text) == ["0.8100", "0.4100", "0.0200", "0.5200", "0.4000", "0.5500"]
    assert "<td>1000</td>" in text


def test_report_without_beyond_or_curves(tmp_path) -> None:
    table = pd.DataFrame({"auc": [np.nan], "ndcg@5": [0.5]}, index=["only"])
    text = write_report(tmp_path / "r.html", title="t", table=table, curves={}).read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 1  # the ranking bars only
    assert f"<td>{MISSING}</td>" in text


def test_best_rows_and_format_value() -> None:
    s = pd.Series([0.3, np.nan, 0.1, 0.3], index=["a", "b", "c", "d"])
    assert best_rows(s, "auc") == {"a", "d"}  # ties: all highlighted
    assert best_rows(s, "brier") == {"c"}
    assert best_rows(s, "ece@10") == {"c"}
    assert best_rows(s, "n_users") == set()
    assert best_rows(pd.Series([np.nan, None]), "auc") == set()
    assert format_value(float("nan")) == MISSING
    assert format_value(None) == MISSING
    assert format_value(pd.NA) == MISSING
    assert format_value(np.int64(12), "n_users") == "12"
    assert format_value(0.123456, "auc") == "0.1235"
    assert format_value("<x>") == "&lt;x&gt;"


def test_report_shows_the_paired_comparison_without_highlights(tmp_path, report_inputs) -> None:
    table, curves, _ = report_inputs
    comparison = pd.DataFrame({"ndcg_diff@10": [0.012, -0.0004], "ndcg_diff_ci_low@10": [0.004, -0.006],
                               "ndcg_diff_ci_high@10": [0.02, 0.005], "n_users": [153.0, 153.0],
                               "users_better": [60.0, 41.0], "users_worse": [30.0, 44.0]},
                              index=["model v2 - popularity", "model v2 - logistic_regression"])
    text = write_report(tmp_path / "r.html", title="t", table=table, curves=curves,
                        comparison=comparison).read_text(encoding="utf-8")
    assert "paired over users" in text
    assert "model v2 - logistic_regression" in text and "<td>-0.0004</td>" in text and "<td>44</td>" in text
    assert _best_cells(text) == ["0.8100", "0.4100", "0.0200", "0.5200", "0.4000", "0.5500"]  # metrics only
    plain = write_report(tmp_path / "p.html", title="t", table=table, curves=curves).read_text(encoding="utf-8")
    assert "paired over users" not in plain


def test_headline_prints_the_table_and_the_paired_comparison(report_inputs) -> None:
    from adrec_spark.cli import headline

    table, _, beyond = report_inputs
    comparison = pd.DataFrame({"ndcg_diff@10": [0.0027], "ndcg_diff_ci_low@10": [-0.0069],
                               "ndcg_diff_ci_high@10": [0.0124], "n_users": [148.0], "users_better": [70.0],
                               "users_worse": [60.0]}, index=["model v2 - logistic_regression"])
    text = headline(table, beyond, comparison)
    assert "0.8100" in text and "coverage" in text
    assert text.endswith("paired over users:\nmodel v2 - logistic_regression: NDCG@10 +0.0027 (95% interval "
                         "-0.0069 .. +0.0124; users better 70, worse 60)")
    assert "paired" not in headline(table, None)


def test_report_and_headline_flag_metrics_that_mean_nothing(tmp_path, report_inputs) -> None:
    from adrec_spark.cli import headline
    from adrec_spark.evaluation.uncertainty import MetricInfo

    table, curves, beyond = report_inputs
    table = table.assign(**{"hit_rate@10": [1.0, 1.0, 1.0]})
    info = {(m, "hit_rate@10"): MetricInfo(n_users=12.0, flag="degenerate,small_n") for m in METHODS}
    info[(METHODS[0], "auc")] = MetricInfo(n_rows=1000.0, n_positives=13.0, n_users=12.0, ci_low=0.65, ci_high=0.95,
                                           flag="small_n")
    info[(METHODS[1], "auc")] = MetricInfo(flag="empty_input")
    text = write_report(tmp_path / "r.html", title="t", table=table, curves=curves, info=info).read_text("utf-8")
    assert '<span class="ci">[0.6500, 0.9500]</span>' in text
    assert text.count("&#9888; degenerate") == 3 and "&#9888; small_n" in text and "&#9888; empty_input" in text
    assert "fixed by construction" in text and "too few users or positives" in text  # the legend says why
    # a degenerate value is never the best of its column (hit rate 1.0 for all: no highlight there)
    assert not any("1.0000" in c for c in re.findall(r'<td class="best">(.*?)</td>', text))
    shown = headline(table, beyond, None, info)
    assert "1.0000 [degenerate,small_n]" in shown and "0.8100 [small_n]" in shown
    assert "0.6400 [empty_input]" in shown and "flags: degenerate = fixed by construction" in shown
    assert "[" not in headline(table, beyond)  # nothing flagged without info
