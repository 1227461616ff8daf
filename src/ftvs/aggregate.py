"""Seed groups and sweep curves: the one mean ± std and the one crossover definition.

Both `ftvs compare` (comparison.json, the report) and `ftvs study` (study.json, the terminal summary)
aggregate with these functions, so the two can never disagree about a number or a crossover.
"""

from __future__ import annotations

import itertools
import math

CROSSOVER_RULE = (
    "between two consecutive measured training-set sizes, the arm behind at the smaller size "
    "is level or ahead at the larger (mean macro-F1 over seeds)"
)


def finite(v) -> float | None:
    """float(v), or None for None, text, NaN and infinities (missing numbers in a JSON record)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the finite values; (None, None) without any.

    The std of a single seed is None, not 0.0: one run measures no seed-to-seed variance, and a 0
    would read as "perfectly stable" in a table or as a zero-width error bar.
    """
    vals = [f for f in (finite(v) for v in values) if f is not None]
    if not vals:
        return None, None
    mean = math.fsum(vals) / len(vals)
    if len(vals) == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def _delta_points(a: dict, b: dict) -> list[dict]:
    pa = {
        p["num_train_examples"]: p
        for p in a["points"]
        if p.get("num_train_examples") and p.get("mean") is not None
    }
    pb = {
        p["num_train_examples"]: p
        for p in b["points"]
        if p.get("num_train_examples") and p.get("mean") is not None
    }
    # the stds of two independent means add in quadrature; an unknown (one-seed) std counts as 0
    return [
        {
            "num_train_examples": n,
            **{k: pa[n][k] for k in ("train_fraction",) if k in pa[n]},
            "delta": pa[n]["mean"] - pb[n]["mean"],
            "delta_std": math.sqrt((pa[n].get("std") or 0.0) ** 2 + (pb[n].get("std") or 0.0) ** 2),
        }
        for n in sorted(set(pa) & set(pb))
    ]


def _crossings(points: list[dict], a_label: str, b_label: str) -> list[dict]:
    out = []
    for lo, hi in itertools.pairwise(points):
        d0, d1 = lo["delta"], hi["delta"]
        if not ((d0 > 0 >= d1) or (d0 < 0 <= d1)):
            continue
        x0, x1 = math.log(lo["num_train_examples"]), math.log(hi["num_train_examples"])
        at = math.exp(x0 + d0 / (d0 - d1) * (x1 - x0))
        out.append(
            {
                "a": a_label,
                "b": b_label,
                "between_examples": [lo["num_train_examples"], hi["num_train_examples"]],
                "leader_below": a_label if d0 > 0 else b_label,
                "leader_above": b_label if d0 > 0 else a_label,
                "interpolated_examples": at,
            }
        )
    return out


def crossovers(curves: list[dict]) -> list[dict]:
    """Where two data-size curves cross, for every pair of curves.

    `curves`: [{"label", "arm", "points": [{"num_train_examples", "mean", "std", "train_fraction"
    (optional, passed through)}]}], `mean`/`std` the test macro-F1 over seeds at that size. Returns one
    record per pair, A the fine-tuned curve when exactly one of the two is: {"a", "b", "a_arm", "b_arm",
    "rule", "points": [{"num_train_examples", "delta" (A − B), "delta_std"}], "crossings": [{"a", "b",
    "between_examples": [lo, hi], "leader_below", "leader_above", "interpolated_examples"}]}.

    A crossing is a change of leader between two consecutive sizes measured for both curves: the curve
    behind at the smaller size is level or ahead at the larger one. A curve that is ahead at every size,
    including the smallest, has no crossing: "catching up" needs a gap to close, so an arm that leads from
    the start is reported as leading, not as crossing at the smallest size. Levelling counts (the gap is
    closed), and so does every later change of leader, so a curve pair can cross more than once.
    `interpolated_examples` places the crossing by linear interpolation of A − B in log(#examples).
    """
    out = []
    for a, b in itertools.combinations(curves, 2):
        if b.get("arm") == "finetune" and a.get("arm") != "finetune":
            a, b = b, a
        points = _delta_points(a, b)
        out.append(
            {
                "a": a["label"],
                "b": b["label"],
                "a_arm": a.get("arm"),
                "b_arm": b.get("arm"),
                "rule": CROSSOVER_RULE,
                "points": points,
                "crossings": _crossings(points, a["label"], b["label"]),
            }
        )
    return out
