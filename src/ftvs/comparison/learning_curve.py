"""Learning curves: a saturating power law per configuration of a data-size sweep, and how many labelled
examples the from-scratch arm would need to reach the fine-tuned arm's score.

The model is macro-F1(n) = a − b·n^(−c) (a the ceiling, c how fast it is approached), fitted by least
squares to every run of the sweep (each seed at each size), in n / n_max for conditioning. Its intervals
come from a bootstrap over seeds: at every size the runs are drawn with replacement and the curve refitted
(`N_BOOTSTRAP` times); the 2.5/97.5 percentiles give the band of the curve, of its parameters and of the
number of examples. With one seed per size every resample is the data itself and there is no interval.

The number of examples where the from-scratch curve reaches the fine-tuned arm's full-data mean macro-F1
(without a fine-tuned arm: the best other arm's, e.g. the TF-IDF baseline's) is always an extrapolation
of the fit; beyond `HORIZON`× the largest size measured (or when the fitted ceiling is below the target)
it is reported as "beyond 10× the largest size measured", not as a number. A fit whose RMSE over the runs
exceeds `POOR_FIT_RMSE` (e.g. a from-scratch model still at chance on the smallest sizes: an S-shaped curve
that no saturating power law follows) is flagged `poor_fit` and not extrapolated at all.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

N_BOOTSTRAP = 200
HORIZON = 10.0  # extrapolate at most this many times the largest measured training-set size
POOR_FIT_RMSE = 0.03  # macro-F1: a fit further than this from the measured runs is not extrapolated
MODEL = "macro-F1(n) = a − b·n^(−c)"


def power_law(n, a: float, b: float, c: float):
    return a - b * np.power(np.asarray(n, dtype=np.float64), -c)


def fit_power_law(n, y) -> dict | None:
    """Least-squares a, b, c of `power_law` on the points (n, y); None with fewer than 3 sizes or when
    the fit does not converge."""
    from scipy.optimize import curve_fit

    n, y = np.asarray(n, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(set(n.tolist())) < 3:
        return None
    scale = float(n.max())
    x = n / scale
    a0 = min(1.0, float(y.max()) + 0.02)
    p0 = (a0, max(a0 - float(y[x == x.max()].mean()), 0.01), 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (a, b_scaled, c), _ = curve_fit(
                lambda x, a, b, c: a - b * np.power(x, -c),
                x,
                y,
                p0=p0,
                bounds=([0.0, 0.0, 1e-3], [1.0, 10.0, 5.0]),
                maxfev=20000,
            )
    except (RuntimeError, ValueError):
        return None
    b = float(b_scaled) * scale ** float(c)  # back to b·n^(−c) with n in examples
    rmse = float(np.sqrt(np.mean((power_law(n, a, b, c) - y) ** 2)))
    return {"a": float(a), "b": b, "c": float(c), "rmse": rmse}


def examples_to_reach(fit: dict, target: float) -> float:
    """n where the fitted curve reaches `target` (inf when its ceiling a is at or below it)."""
    if fit["a"] <= target:
        return math.inf
    if fit["b"] <= 0:
        return 0.0
    return float((fit["b"] / (fit["a"] - target)) ** (1.0 / fit["c"]))


def _resample(points: list[tuple[int, float]], rng) -> tuple[list, list]:
    by_n: dict[int, list[float]] = {}
    for n, y in points:
        by_n.setdefault(n, []).append(y)
    ns, ys = [], []
    for n, vals in by_n.items():
        for v in rng.choice(vals, size=len(vals), replace=True):
            ns.append(n)
            ys.append(float(v))
    return ns, ys


def _percentiles(values) -> list[float] | None:
    v = np.asarray(values, dtype=np.float64)
    return None if len(v) < 2 else [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def fit_series(label: str, arm: str, points: list[tuple[int, float]], seed: int = 0) -> dict | None:
    """The fit of one configuration's (n, macro-F1) points, its bootstrap band and parameter intervals."""
    fit = fit_power_law([p[0] for p in points], [p[1] for p in points])
    if fit is None:
        return None
    sizes = sorted({p[0] for p in points})
    grid = np.geomspace(sizes[0], HORIZON * sizes[-1], 40)
    several = any(sum(1 for q in points if q[0] == n) > 1 for n in sizes)
    boots = []
    if several:
        rng = np.random.default_rng(seed)
        for _ in range(N_BOOTSTRAP):
            f = fit_power_law(*_resample(points, rng))
            if f is not None:
                boots.append(f)
    curves = np.array([power_law(grid, f["a"], f["b"], f["c"]) for f in boots]) if boots else None
    return {
        "label": label,
        "arm": arm,
        **fit,
        "poor_fit": fit["rmse"] > POOR_FIT_RMSE,
        "sizes": sizes,
        "n_points": len(points),
        "n_bootstrap": len(boots),
        "intervals": {k: _percentiles([f[k] for f in boots]) for k in ("a", "b", "c")} if boots else None,
        "grid": grid.tolist(),
        "curve": power_law(grid, fit["a"], fit["b"], fit["c"]).tolist(),
        "band": None
        if curves is None
        else [np.percentile(curves, 2.5, axis=0).tolist(), np.percentile(curves, 97.5, axis=0).tolist()],
        "_boots": boots,
    }


def _reach(fit: dict, target: dict, measured: list[dict]) -> dict:
    """When the from-scratch fit reaches the fine-tuned score: measured, extrapolated or beyond."""
    largest = fit["sizes"][-1]
    limit = HORIZON * largest
    out = {
        "label": fit["label"],
        "target_label": target["label"],
        "target_macro_f1": target["macro_f1"],
        "largest_measured": largest,
        "horizon": limit,
        "extrapolation": True,
        "ci": None,
    }
    reached = [p for p in measured if (p["macro_f1_mean"] or 0.0) >= target["macro_f1"]]
    if reached:
        return {
            **out,
            "status": "measured",
            "examples": reached[0]["num_train_examples"],
            "extrapolation": False,
        }
    if fit["poor_fit"]:  # no extrapolation from a curve the model does not describe
        return {**out, "status": "poor fit", "examples": None}
    n = examples_to_reach(fit, target["macro_f1"])
    out["status"] = "extrapolated" if n <= limit else "beyond"
    out["examples"] = n if n <= limit else None
    if fit["_boots"]:
        ns = np.minimum([examples_to_reach(f, target["macro_f1"]) for f in fit["_boots"]], 2 * limit)
        lo, hi = np.percentile(ns, [2.5, 97.5])  # past the horizon counts as "beyond", whatever its size
        out["ci"] = [float(lo) if lo <= limit else None, float(hi) if hi <= limit else None]
    return out


def _target(comparison: dict) -> dict | None:
    """The score to reach: the fine-tuned arm's best full-data configuration's mean macro-F1; without a
    fine-tuned arm, the best full-data configuration of another arm that is not from scratch."""
    by_arm = (comparison.get("focus") or {}).get("by_arm") or {}
    others = [v for arm, v in by_arm.items() if arm not in ("finetune", "scratch")]
    best = by_arm.get("finetune") or max(others, key=lambda v: v.get("macro_f1_mean") or 0.0, default=None)
    if not best or best.get("macro_f1_mean") is None:
        return None
    return {"label": best["group"], "macro_f1": best["macro_f1_mean"]}


def learning_curves(comparison: dict, seed: int = 0) -> dict:
    """comparison.json `learning_curves`: a fit per data-size sweep configuration (3+ sizes) and, for each
    from-scratch one, the examples at which it would reach the fine-tuned arm's score."""
    rows = comparison["runs"]
    fits, reach = [], []
    target = _target(comparison)
    for s in (comparison.get("sweeps") or {}).get("data_size") or []:
        key = (s["arm"], s["method"], s["model_name"])
        points = [
            (int(r["num_train_examples"]), float(r["macro_f1"]))
            for r in rows
            if (r["arm"], r["method"], r["model_name"]) == key
            and r["num_train_examples"]
            and r["macro_f1"] is not None
        ]
        fit = fit_series(s["label"], s["arm"], points, seed=seed)
        if fit is None:
            continue
        if s["arm"] == "scratch" and target:
            reach.append(_reach(fit, target, s["points"]))
        fits.append(fit)
    for f in fits:
        f.pop("_boots")
    return {
        "model": MODEL,
        "horizon": HORIZON,
        "n_bootstrap": N_BOOTSTRAP,
        "target": target,
        "fits": fits,
        "reach": reach,
    }
