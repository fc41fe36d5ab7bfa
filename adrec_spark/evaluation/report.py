"""The evaluation report a person reads: one self-contained HTML file (tables and plots, no server, no network).

Plots are drawn with matplotlib's Agg canvas directly (no pyplot, so no global backend state) and embedded as
base64 PNG ``data:`` URIs. Every piece of text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

MISSING = "–"  # shown for NaN / missing cells
# Metrics where lower is better (matched on the name before any "@K"); counts are never highlighted.
LOWER_IS_BETTER = frozenset({"log_loss", "ece", "brier", "gini", "gini_advertiser", "top_advertiser_share"})
COUNT_METRICS = frozenset({"n", "n_users", "n_users_skipped", "n_recommendations", "users_better",
                           "users_worse"})
NOT_RANKED = COUNT_METRICS | {"positive_rate"}
RANKING_PLOT_METRICS = ("auc", "mrr")
RANKING_PLOT_PREFIXES = ("ndcg@", "map@", "hit_rate@")
BEYOND_PLOT_METRICS = ("coverage", "ild_category", "ild_embedding", "personalization", "novelty",
                       "gini_advertiser", "top_advertiser_share")

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } .subtitle { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th { background: #f4f4f4; } td.method, th.method { text-align: left; }
td.best { background: #d9f2d9; font-weight: bold; }
td .ci { color: #666; font-size: 0.8em; font-weight: normal; }
td .flag { color: #a00; font-size: 0.8em; font-weight: bold; }
.plots img { max-width: 100%; margin: 0.5em 0; border: 1px solid #eee; }
.legend { color: #666; font-size: 0.85em; }
"""


def write_report(
    path: str | Path,
    *,
    title: str,
    table: pd.DataFrame,
    curves: Mapping[str, Mapping[str, pd.DataFrame]],
    beyond: pd.DataFrame | None = None,
    notes: Sequence[str] = (),
    subtitle: str = "",
    comparison: pd.DataFrame | None = None,
    info: Mapping[tuple[str, str], object] | None = None,
) -> Path:
    """Write the report and return its path.

    Args:
        path: the HTML file to write (parent folders are created).
        title, subtitle: page heading.
        table: one row per method (the index), one column per metric; the best value of each column is
            highlighted (higher is better except for log_loss, ece, brier and the Gini/top-share metrics).
        curves: per method, the frames of :func:`adrec_spark.evaluation.metrics.score_curves` (``roc``, ``pr``,
            ``calibration``); missing or empty frames are left out of the plots.
        beyond: optional beyond-accuracy metrics, one row per method or model (the index).
        notes: free-text lines shown under the heading.
        comparison: optional paired differences of the model against each baseline (one row each), shown
            as they are (no highlight).
        info: optional per (method, metric column) :class:`~adrec_spark.evaluation.uncertainty.MetricInfo`:
            its interval is shown under the number and its flags next to it; a flagged ``degenerate`` or
            ``empty_input`` value is never highlighted as the best.
    """
    path = Path(path)
    info = info or {}
    colors = _method_colors([*table.index, *curves, *(beyond.index if beyond is not None else [])])
    sections = [_section("Metrics", _table_html(table, info=info) + _legend() + _flag_legend(info))]
    if comparison is not None and not comparison.empty:
        sections.append(_section("The model against each baseline, paired over users",
                                 _table_html(comparison, highlight=False)
                                 + '<p class="legend">Per user, the model\'s NDCG minus the baseline\'s: mean, 95% '
                                   "interval (normal approximation over users), users better and worse. An "
                                   "interval that contains 0 is not a win or a loss.</p>"))
    plots = [_roc_plot(curves, colors), _pr_plot(curves, colors), _calibration_plot(curves, colors),
             _bar_plot(table, _ranking_columns(table), colors, "Ranking and AUC")]
    if beyond is not None:
        sections.append(_section("Beyond accuracy", _table_html(beyond, info=info)))
        plots.append(_small_multiples(beyond, [c for c in BEYOND_PLOT_METRICS if c in beyond.columns], colors))
    sections.append(_section("Plots", '<div class="plots">' + "".join(p for p in plots if p) + "</div>"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page(title, subtitle, notes, sections), encoding="utf-8")
    log.info("report written to %s (%d methods, %d plots)", path, len(table), sum(1 for p in plots if p))
    return path


# ------------------------------------------------------------------------------------------------- HTML


def _page(title: str, subtitle: str, notes: Sequence[str], sections: Iterable[str]) -> str:
    esc = html.escape
    notes_html = "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n" + (f'<p class="subtitle">{esc(subtitle)}</p>\n' if subtitle else "")
        + notes_html + "\n".join(sections) + "\n</body>\n</html>\n"
    )


def _section(heading: str, body: str) -> str:
    return f"<section>\n<h2>{html.escape(heading)}</h2>\n{body}\n</section>"


def _legend() -> str:
    lower = ", ".join(sorted(LOWER_IS_BETTER))
    return (f'<p class="legend">Best value per column highlighted; higher is better except {html.escape(lower)}. '
            f"{MISSING} = not available.</p>")


FLAG_TEXT = {
    "degenerate": "fixed by construction (every ranked user has at most K candidates): says nothing",
    "empty_input": "most of its inputs are empty (no history): says nothing",
    "small_n": "too few users or positives to tell methods apart",
    "undefined": "not defined on this data (e.g. one class only)",
}
_UNTRUSTED = ("degenerate", "empty_input")


def _flags(info: Mapping[tuple[str, str], object], method: object, metric: object) -> list[str]:
    flag = getattr(info.get((str(method), str(metric))), "flag", "") or ""
    return [f for f in flag.split(",") if f]


def _flag_legend(info: Mapping[tuple[str, str], object]) -> str:
    used = sorted({f for key in info for f in _flags(info, *key)})
    if not used:
        return ""
    items = "".join(f"<li><b>{html.escape(f)}</b>: {html.escape(FLAG_TEXT.get(f, f))}</li>" for f in used)
    return ('<p class="legend">Under a number: its interval (evaluate.confidence); next to it, its flags:</p>'
            f'<ul class="legend">{items}</ul>')


def _annotated(text: str, info: Mapping[tuple[str, str], object], method: object, metric: object) -> str:
    i = info.get((str(method), str(metric)))
    lo, hi = getattr(i, "ci_low", math.nan), getattr(i, "ci_high", math.nan)
    if text != MISSING and isinstance(lo, float) and math.isfinite(lo) and math.isfinite(hi):
        text += f'<br><span class="ci">[{lo:.4f}, {hi:.4f}]</span>'
    flags = _flags(info, method, metric)
    if flags:
        text += " " + " ".join(f'<span class="flag" title="{html.escape(FLAG_TEXT.get(f, f))}">&#9888; '
                               f"{html.escape(f)}</span>" for f in flags)
    return text


def _table_html(df: pd.DataFrame, *, highlight: bool = True,
                info: Mapping[tuple[str, str], object] | None = None) -> str:
    info = info or {}
    trusted = {col: df[col].where([not set(_flags(info, m, col)) & set(_UNTRUSTED) for m in df.index])
               for col in df.columns}
    best = {col: best_rows(trusted[col], str(col)) if highlight else set() for col in df.columns}
    index_name = html.escape(str(df.index.name or "method"))
    head = f'<tr><th class="method">{index_name}</th>' + "".join(
        f"<th>{html.escape(str(c))}</th>" for c in df.columns) + "</tr>"
    rows = []
    for label, row in df.iterrows():
        cells = "".join(_cell(_annotated(format_value(row[col], str(col)), info, label, col), best=label in best[col])
                        for col in df.columns)
        rows.append(f'<tr><td class="method">{html.escape(str(label))}</td>{cells}</tr>')
    return "<table>\n<thead>" + head + "</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _cell(text: str, *, best: bool) -> str:
    return f'<td class="best">{text}</td>' if best else f"<td>{text}</td>"


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (``ece@5`` is judged as ``ece``)."""
    return metric.split("@", 1)[0] in LOWER_IS_BETTER


def best_rows(values: pd.Series, metric: str) -> set[object]:
    """Index labels holding the best value of a numeric metric column (all of them on a tie; none for counts)."""
    if metric in NOT_RANKED:
        return set()
    numeric = pd.to_numeric(values, errors="coerce").dropna()
    if numeric.empty:
        return set()
    target = numeric.min() if lower_is_better(metric) else numeric.max()
    return set(numeric.index[numeric == target])


def format_value(value: object, metric: str = "") -> str:
    """A cell as text: NaN/None as "–", counts as integers, other numbers with 4 decimals, the rest escaped."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
            return MISSING
        return html.escape(str(value))
    number = float(value)
    if math.isnan(number):
        return MISSING
    if metric in COUNT_METRICS and number.is_integer():
        return f"{int(number):d}"
    return f"{number:.4f}"


# ------------------------------------------------------------------------------------------------ plots


def _method_colors(methods: Iterable[object]) -> dict[str, str]:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    names = list(dict.fromkeys(str(m) for m in methods))
    return {m: palette[i % len(palette)] for i, m in enumerate(names)}


def _figure(width: float = 6.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">\n'


def _usable(curves: Mapping[str, Mapping[str, pd.DataFrame]], kind: str) -> dict[str, pd.DataFrame]:
    return {str(m): c[kind] for m, c in curves.items() if kind in c and c[kind] is not None and not c[kind].empty}


def _line_plot(frames: Mapping[str, pd.DataFrame], colors: Mapping[str, str], *, x: str, y: str, title: str,
               xlabel: str, ylabel: str, diagonal: bool, marker: str = "") -> str:
    if not frames:
        return ""
    fig = _figure()
    ax = fig.add_subplot()
    if diagonal:
        ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1, label="_nolegend_")
    for method, frame in frames.items():
        ax.plot(frame[x], frame[y], marker=marker, color=colors.get(method), label=method)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _img(fig, title)


def _roc_plot(curves: Mapping[str, Mapping[str, pd.DataFrame]], colors: Mapping[str, str]) -> str:
    return _line_plot(_usable(curves, "roc"), colors, x="fpr", y="tpr", title="ROC curves",
                      xlabel="false positive rate", ylabel="true positive rate", diagonal=True)


def _pr_plot(curves: Mapping[str, Mapping[str, pd.DataFrame]], colors: Mapping[str, str]) -> str:
    return _line_plot(_usable(curves, "pr"), colors, x="recall", y="precision", title="Precision-recall curves",
                      xlabel="recall", ylabel="precision", diagonal=False)


def _calibration_plot(curves: Mapping[str, Mapping[str, pd.DataFrame]], colors: Mapping[str, str]) -> str:
    return _line_plot(_usable(curves, "calibration"), colors, x="mean_score", y="frac_positive",
                      title="Calibration (reliability diagram)", xlabel="mean predicted probability",
                      ylabel="observed click rate", diagonal=True, marker="o")


def _ranking_columns(table: pd.DataFrame) -> list[str]:
    names = [str(c) for c in table.columns]
    return [c for c in names if c in RANKING_PLOT_METRICS or c.startswith(RANKING_PLOT_PREFIXES)]


def _bar_plot(table: pd.DataFrame, metrics: Sequence[str], colors: Mapping[str, str], title: str) -> str:
    """Grouped bars: one group per metric, one bar per method (NaN bars are left out)."""
    if not metrics or table.empty:
        return ""
    fig = _figure(max(6.0, 1.2 * len(metrics) + 2), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / len(table)
    for i, (method, row) in enumerate(table.iterrows()):
        values = pd.to_numeric(row[list(metrics)], errors="coerce").to_numpy(dtype=float)
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, values, width=width, color=colors.get(str(method)), label=str(method))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], list(metrics))
    ax.set(title=title, ylabel="value")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _img(fig, title)


def _small_multiples(df: pd.DataFrame, metrics: Sequence[str], colors: Mapping[str, str]) -> str:
    """One panel per beyond-accuracy metric (their scales differ: novelty is in bits)."""
    if not metrics or df.empty:
        return ""
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = _figure(3.2 * ncols, 3.0 * nrows)
    labels = [str(m) for m in df.index]
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        values = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=float)
        ax.bar(range(len(labels)), values, color=[colors.get(m) for m in labels])
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
        ax.set_title(metric + (" (lower is better)" if lower_is_better(metric) else ""), fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _img(fig, "Beyond-accuracy metrics")
