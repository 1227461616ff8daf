"""What to deploy: the recommendation under the user's constraints, and the Pareto fronts.

The unit is a configuration (a seed group of `tables.make_groups`): its numbers are means over seeds, and
the paired tests use its typical seed (`focus.representative`), as everywhere in the report. Only
full-data configurations are candidates (a data-size sweep's smaller fractions are not a deployment
choice when the full training set exists).

The rule (`RULE`): keep the configurations that meet every constraint; the one with the best mean test
macro-F1 is picked, unless a cheaper one (lower batch-1 latency; where latency is not measured for both,
lower inference time per 1,000 examples) is not significantly different from it: the paired McNemar test,
Holm-adjusted over all pairs, is not significant (p ≥ 0.05). Then the most accurate of those cheaper,
tied configurations is picked. When no
configuration meets the constraints there is no pick, and `closest` names the configuration that fails
the fewest constraints (then the one missing them by the smallest relative margin) and what it fails.
"""

from __future__ import annotations

import argparse
import math

from ftvs.aggregate import finite
from ftvs.comparison.focus import representative
from ftvs.comparison.significance import find_pair
from ftvs.errors import FtvsError

# name: (group field (mean over seeds), "max" or "min", scale from the field to the unit, unit, what)
CONSTRAINTS = {
    "max_latency_ms": ("latency_p50_ms", "max", 1.0, "ms", "batch-1 latency (p50)"),
    "max_throughput_s_per_1k": ("throughput_s_per_1k", "max", 1.0, "s", "batch-64 time per 1,000 texts"),
    "max_params": ("params_total", "max", 1.0, "", "parameters"),
    "max_disk_mb": ("size_on_disk_bytes", "max", 1e-6, "MB", "size on disk"),
    "min_macro_f1": ("macro_f1", "min", 1.0, "", "mean test macro-F1"),
}
# the inference cost that makes one configuration "cheaper" than another, first measured for both
COST_FIELDS = ("latency_p50_ms", "throughput_s_per_1k", "inference_seconds_per_1000")
RULE = (
    "best mean test macro-F1 among the full-data configurations meeting every constraint; a cheaper "
    "configuration (batch-1 latency, else inference time) that the paired test does not separate from "
    "that one (McNemar exact, Holm-adjusted over all pairs: p ≥ 0.05) is picked instead"
)


def check_constraints(given: dict | None, where: str = "--") -> dict:
    """The constraints that are set, validated: {name: float}; FtvsError naming a bad one."""
    if given is not None and not isinstance(given, dict):
        raise FtvsError(f"{where.rstrip('.-')} must be a mapping of constraints ({', '.join(CONSTRAINTS)})")
    out = {}
    for name, value in (given or {}).items():
        if name not in CONSTRAINTS:
            raise FtvsError(f"unknown constraint {where}{name}; choose from {', '.join(CONSTRAINTS)}")
        if value is None:
            continue
        v = finite(value)
        if v is None or v <= 0 or (name == "min_macro_f1" and v > 1):
            allowed = "a number in (0, 1]" if name == "min_macro_f1" else "a positive number"
            raise FtvsError(f"{where}{name} must be {allowed}, got {value!r}")
        out[name] = v
    return out


def add_constraint_args(p: argparse.ArgumentParser) -> None:
    """The constraint flags of `ftvs compare`, `ftvs report` and `ftvs study`."""
    g = p.add_argument_group("deployment constraints (the report's recommendation)")
    for name, (_, kind, _, unit, what) in CONSTRAINTS.items():
        g.add_argument(
            f"--{name}",
            type=float,
            default=None,
            metavar="X",
            help=f"recommend only configurations whose {what} is "
            f"{'at most' if kind == 'max' else 'at least'} X{' ' + unit if unit else ''}",
        )


def constraints_from_args(args) -> dict:
    return check_constraints({name: getattr(args, name, None) for name in CONSTRAINTS})


def value_of(group: dict, name: str) -> float | None:
    field, _, scale, _, _ = CONSTRAINTS[name]
    v = finite(group.get(f"{field}_mean"))
    return None if v is None else v * scale


def _failures(group: dict, constraints: dict) -> list[dict]:
    out = []
    for name, limit in constraints.items():
        kind = CONSTRAINTS[name][1]
        v = value_of(group, name)
        if v is None:
            out.append({"constraint": name, "limit": limit, "value": None, "margin": math.inf})
        elif (kind == "max" and v > limit) or (kind == "min" and v < limit):
            margin = v / limit - 1 if kind == "max" else (limit - v) / limit
            out.append({"constraint": name, "limit": limit, "value": v, "margin": margin})
    return out


def _cost(a: dict, b: dict) -> tuple[str | None, float | None, float | None]:
    """The first inference cost measured for both candidates, and its two values."""
    for field in COST_FIELDS:
        ca, cb = finite(a.get(field)), finite(b.get(field))
        if ca is not None and cb is not None:
            return field, ca, cb
    return None, None, None


def _tie(best: dict, other: dict, sig: dict) -> dict | None:
    """The paired tests of two configurations' typical seeds, when they do not separate them."""
    p = find_pair(sig, best["run"], other["run"])
    if p is None or p.get("significant_holm"):
        return None
    return {
        "p_holm": p["mcnemar"].get("p_holm"),
        "macro_f1_diff": p["macro_f1"]["diff"],
        "macro_f1_ci": [p["macro_f1"]["ci_low"], p["macro_f1"]["ci_high"]],
    }


def _candidate(g: dict, rows_by_name: dict, constraints: dict) -> dict:
    fails = _failures(g, constraints)
    return {
        "label": g["label"],
        "arm": g["arm"],
        "run": representative(g, rows_by_name),
        "runs": g["runs"],
        "n": g["n"],
        **{k: g.get(f"{k}_mean") for k in ("macro_f1", "accuracy", "train_seconds_total")},
        "macro_f1_std": g.get("macro_f1_std"),
        **{k: g.get(f"{k}_mean") for k in (*COST_FIELDS, "latency_p95_ms", "params_total")},
        "disk_mb": value_of(g, "max_disk_mb"),
        "meets": not fails,
        "fails": [{k: v for k, v in f.items() if k != "margin"} for f in fails],
        "_margin": (len(fails), sum(f["margin"] for f in fails)),
    }


def _gives_up(pick: dict, best: dict) -> dict | None:
    """What the pick costs against the most accurate configuration (None when it is that one)."""
    if pick["label"] == best["label"]:
        return None
    out = {"than": best["label"], "macro_f1_diff": (pick["macro_f1"] or 0.0) - (best["macro_f1"] or 0.0)}
    for k in (*COST_FIELDS, "params_total", "disk_mb", "train_seconds_total"):
        if finite(pick.get(k)) and finite(best.get(k)):
            out[f"{k}_ratio"] = pick[k] / best[k]  # pick ÷ most accurate: below 1 = the pick is cheaper
    return out


def _choose(ranked: list[dict], sig: dict) -> tuple[dict, dict | None]:
    """The rule on configurations ranked by macro-F1: the first, or the most accurate of the cheaper ones
    its paired tests do not separate from it (with the tie's numbers)."""
    best = ranked[0]
    for c in ranked[1:]:
        field, c_cost, b_cost = _cost(c, best)
        tie = _tie(best, c, sig) if field and c_cost < b_cost else None
        if tie:
            return c, {**tie, "with": best["label"], "cost": field, "cost_ratio": c_cost / b_cost}
    return best, None


def recommend(groups: list[dict], rows: list[dict], sig: dict, constraints: dict | None = None) -> dict:
    """comparison.json `recommendation`: the pick under `constraints`, the rule and the numbers.

    `binding`: the constraints that changed the decision, i.e. those failed by the configuration the same
    rule picks without constraints; `decided_by`: "constraints", "significance tie", "best" or "nothing
    qualifies"."""
    constraints = check_constraints(constraints)
    rows_by_name = {r["run"]: r for r in rows}
    full = [g for g in groups if (g.get("train_fraction") or 1.0) == 1.0] or groups
    cands = [_candidate(g, rows_by_name, constraints) for g in full if g.get("macro_f1_mean") is not None]
    cands.sort(key=lambda c: -c["macro_f1"])
    out = {
        "constraints": constraints,
        "rule": RULE,
        "pick": None,
        "tie": None,
        "binding": [],
        "gives_up": None,
    }
    out["most_accurate"] = cands[0]["label"] if cands else None
    ok = [c for c in cands if c["meets"]]
    if not ok:
        closest = min(cands, key=lambda c: c["_margin"], default=None)
        out["closest"] = None if closest is None else {"label": closest["label"], "fails": closest["fails"]}
        out["decided_by"] = "nothing qualifies"
    else:
        out["pick"], out["tie"] = _choose(ok, sig)
        free, _ = _choose(cands, sig)
        out["unconstrained"] = free["label"]
        if free["label"] != out["pick"]["label"]:
            out["binding"] = [f["constraint"] for f in free["fails"]]
        out["decided_by"] = (
            "constraints" if out["binding"] else ("significance tie" if out["tie"] else "best")
        )
        out["gives_up"] = _gives_up(out["pick"], cands[0])
    for c in cands:
        c.pop("_margin")
    out["candidates"] = cands
    return out


def _front(points: list[dict]) -> list[dict]:
    """Marks each point dominated by another (macro-F1 at least as high at no higher cost, one strictly)."""
    for p in points:
        p["dominated_by"] = next(
            (
                q["label"]
                for q in sorted(points, key=lambda q: (q["cost"], -q["macro_f1"]))
                if q is not p
                and q["macro_f1"] >= p["macro_f1"]
                and q["cost"] <= p["cost"]
                and (q["macro_f1"] > p["macro_f1"] or q["cost"] < p["cost"])
            ),
            None,
        )
    return points


def mark_dominated(rows: list[dict], fronts: dict) -> None:
    """Each run of the table gets `dominated` {"inference", "training"}: the configuration that dominates
    its own (None on the front, absent for a run outside the fronts, e.g. a data-size sweep fraction)."""
    for axis, data in fronts.items():
        by_run = {run: p["dominated_by"] for p in data["points"] for run in p["runs"]}
        for r in rows:
            if r["run"] in by_run:
                r.setdefault("dominated", {})[axis] = by_run[r["run"]]


def pareto(groups: list[dict]) -> dict:
    """comparison.json `pareto`: macro-F1 against inference cost and against training cost, per full-data
    configuration, each point with `dominated_by` (None on the front)."""
    full = [g for g in groups if (g.get("train_fraction") or 1.0) == 1.0] or groups
    out = {}
    for axis, fields in (("inference", COST_FIELDS), ("training", ("train_seconds_total",))):
        # one cost for every point: the first one measured for all configurations
        field = next((f for f in fields if all(finite(g.get(f"{f}_mean")) for g in full)), None)
        points = []
        if field:
            points = _front(
                [
                    {
                        "label": g["label"],
                        "arm": g["arm"],
                        "runs": g["runs"],
                        "macro_f1": g["macro_f1_mean"],
                        "cost": g[f"{field}_mean"],
                    }  # fmt: skip
                    for g in full
                    if g.get("macro_f1_mean") is not None
                ]
            )
        out[axis] = {
            "cost": field,
            "front": [p["label"] for p in sorted(points, key=lambda p: p["cost"]) if not p["dominated_by"]],
            "points": points,
        }
    return out
