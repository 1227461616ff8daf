"""The comparison of a set of runs: compute everything once, write comparison.json/.md and the figures."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from ftvs.comparison.decide import mark_dominated, pareto, recommend
from ftvs.comparison.describe import describe_dataset, describe_model
from ftvs.comparison.distill import distillation
from ftvs.comparison.focus import best_runs_of_two_arms, focus, per_class_difference
from ftvs.comparison.learning_curve import learning_curves
from ftvs.comparison.runs import load_runs
from ftvs.comparison.significance import significance
from ftvs.comparison.sweeps import sweeps
from ftvs.comparison.tables import make_groups, markdown_table, table_row
from ftvs.comparison.tuning import tuning
from ftvs.fileio import atomic_write_bytes, write_json
from ftvs.plots_compare import make_figures
from ftvs.plots_decide import decide_figures

COMPARISON_VERSION = 1
COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"


def compare(
    paths, out_dir, n_resamples: int = 2000, seed: int = 0, figures: bool = True, log=print, constraints=None
) -> dict:
    """Load runs, compute everything, write comparison.json/.md and figures into out_dir; return the dict.
    `constraints`: {name: limit} of `ftvs.comparison.decide.CONSTRAINTS` for the recommendation."""
    runs, studies = load_runs(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [table_row(r) for r in runs]
    groups = make_groups(runs, rows)
    sig = significance(runs, n_resamples=n_resamples, seed=seed)
    comparison = {
        "ftvs_comparison_version": COMPARISON_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "runs": rows,
        "groups": groups,
        "significance": sig,
        "models": [describe_model(r) for r in runs],
        "dataset": describe_dataset(runs, seed=seed),
        "sweeps": sweeps(runs, rows, studies),
        "studies": [s["path"] for s in studies],
        "reference_results": [
            ref for s in studies for ref in (s["doc"].get("reference_results") or []) if isinstance(ref, dict)
        ],
        "histories": {r.name: r.history for r in runs},
        "focus": focus(groups, rows),
        "tuning": tuning(studies),
        "distillation": distillation(runs, rows, groups, sig),
        "per_class_diff": None,
        "figures": {},
    }
    comparison["recommendation"] = recommend(groups, rows, sig, constraints)
    comparison["pareto"] = pareto(groups)
    mark_dominated(rows, comparison["pareto"])
    comparison["learning_curves"] = learning_curves(comparison, seed=seed)
    pair = best_runs_of_two_arms(runs, comparison["focus"])
    if pair:
        comparison["per_class_diff"] = per_class_difference(*pair)
    if figures:
        comparison["figures"] = make_figures(runs, comparison, out) | decide_figures(comparison, out)
    write_json(out / COMPARISON_JSON, comparison)
    atomic_write_bytes(out / COMPARISON_MD, (markdown_table(rows) + "\n").encode())
    log(f"compare: {len(runs)} runs, {len(sig['pairs'])} pairs -> {out / COMPARISON_JSON}")
    return comparison
