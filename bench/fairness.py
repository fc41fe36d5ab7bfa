"""Comparisons that say what they hold constant.

A benchmark ratio means something only when both sides did the same work. Each measurement carries its
settings (precision, cores, torch threads per process, processes, partitions, pairs, batch size, output);
:func:`comparison` builds one ratio from two measurements, records the settings both share as
``held_constant`` and the ones that differ as ``varies``, and refuses a ratio where a setting differs that the
comparison does not declare as what it compares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# What every comparison must hold equal unless it names the key as what it compares.
MUST_HOLD = ("precision", "cores", "torch_threads", "processes", "partitions", "pairs", "batch_size", "output")


class UnfairComparison(ValueError):
    """Two measurements differ in a setting the comparison does not declare."""


def comparison(name: str, numerator: Mapping[str, Any], denominator: Mapping[str, Any], *,
               varies: Iterable[str] = (), note: str = "") -> dict[str, object]:
    """The ratio ``numerator["rate"] / denominator["rate"]`` with its bookkeeping.

    Args:
        name: the comparison's key in the results.
        numerator, denominator: ``{"label": str, "rate": float, "settings": {key: value}}``.
        varies: the settings this comparison is about (e.g. ``("precision",)``); any other setting that
            differs between the two sides raises :class:`UnfairComparison`.
        note: what else differs that the settings cannot express (e.g. work one side does and the other not).

    Returns:
        ``{"name", "ratio", "numerator", "denominator", "held_constant", "varies", "note"}``.
    """
    a, b = dict(numerator["settings"]), dict(denominator["settings"])
    missing = [k for k in MUST_HOLD if k not in a or k not in b]
    if missing:
        raise UnfairComparison(f"comparison {name!r}: setting(s) {', '.join(missing)} not recorded on both sides")
    declared = set(varies)
    differs = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    undeclared = [k for k in differs if k not in declared]
    if undeclared:
        detail = "; ".join(f"{k}: {differs[k][0]!r} vs {differs[k][1]!r}" for k in undeclared)
        raise UnfairComparison(f"comparison {name!r} ({numerator['label']} / {denominator['label']}) is not like "
                               f"for like: {detail}")
    rate_a, rate_b = float(numerator["rate"]), float(denominator["rate"])
    return {"name": name, "ratio": rate_a / rate_b, "numerator": {"label": numerator["label"], "rate": rate_a},
            "denominator": {"label": denominator["label"], "rate": rate_b},
            "held_constant": {k: a[k] for k in sorted(a) if k in b and k not in differs},
            "varies": differs, "note": note}
