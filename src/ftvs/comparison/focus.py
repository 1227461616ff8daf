"""Which runs the report narrates: the best configuration per arm and its typical seed."""

from __future__ import annotations

from ftvs.comparison.runs import Run


def per_class_difference(run_a: Run, run_b: Run) -> dict:
    """Per-class test F1 of A minus B, sorted from A's biggest lead to B's."""
    pa = (run_a.metrics.get("test") or {}).get("per_class") or {}
    pb = (run_b.metrics.get("test") or {}).get("per_class") or {}
    diffs = [
        {
            "class": c,
            "f1_a": pa[c]["f1"],
            "f1_b": pb[c]["f1"],
            "diff": pa[c]["f1"] - pb[c]["f1"],
            "support": pa[c].get("support"),
        }
        for c in pa
        if c in pb
    ]
    diffs.sort(key=lambda d: -d["diff"])
    return {
        "a": run_a.name,
        "b": run_b.name,
        "classes": diffs,
        "a_better": sum(d["diff"] > 0 for d in diffs),
        "b_better": sum(d["diff"] < 0 for d in diffs),
        "ties": sum(d["diff"] == 0 for d in diffs),
    }


def representative(group: dict, rows_by_name: dict) -> str:
    """The typical run of a seed group: test macro-F1 closest to the group mean (ties: first listed)."""
    mean = group["macro_f1_mean"] or 0.0
    return min(group["runs"], key=lambda n: abs((rows_by_name[n]["macro_f1"] or 0.0) - mean))


def focus(groups: list[dict], rows: list[dict]) -> dict:
    """Which runs the narrative and the per-run figures use: per arm, the full-data group with the best
    mean test macro-F1 and its typical run; `runs`: the typical run of every full-data group (best first)."""
    by_name = {r["run"]: r for r in rows}
    full = [g for g in groups if (g["train_fraction"] or 1.0) == 1.0] or groups
    full = sorted(full, key=lambda g: -(g["macro_f1_mean"] or 0.0))
    by_arm = {}
    for g in full:  # a distilled student learned from another arm: it never stands for "from scratch"
        if g["arm"] not in by_arm and g["method"] != "distilled":
            by_arm[g["arm"]] = {
                "group": g["label"],
                "run": representative(g, by_name),
                "n": g["n"],
                "macro_f1_mean": g["macro_f1_mean"],
                "macro_f1_std": g["macro_f1_std"],
            }
    return {
        "by_arm": by_arm,
        "arm_order": list(by_arm),
        "runs": [representative(g, by_name) for g in full],
        "rule": "per arm: the full-data configuration with the best mean test macro-F1; within it the seed "
        "whose macro-F1 is closest to the configuration mean",
    }


def best_runs_of_two_arms(runs: list[Run], foc: dict) -> tuple[Run, Run] | None:
    """The typical runs of the two best arms (by their best configuration's mean macro-F1)."""
    order = foc["arm_order"]
    if len(order) < 2:
        return None
    by_name = {r.name: r for r in runs}
    return by_name[foc["by_arm"][order[0]]["run"]], by_name[foc["by_arm"][order[1]]["run"]]
