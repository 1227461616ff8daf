"""Paired significance for every pair of runs scored on one test set: McNemar exact test, paired
bootstrap intervals of the accuracy and macro-F1 differences, Holm adjustment (see `ftvs.stats`)."""

from __future__ import annotations

import itertools

import numpy as np

from ftvs.comparison.runs import Run
from ftvs.errors import FtvsError
from ftvs.stats import ALPHA, bootstrap_interval, fast_macro_f1, holm, mcnemar_exact, resample_weights


def check_same_test_set(runs: list[Run]) -> dict:
    """All runs must share one test set (same labels in the same order and, where recorded, the same test
    file content); FtvsError naming the odd one."""
    ref = runs[0]
    ref_y = ref.predictions.get("y_true") or []
    ref_names = ref.predictions.get("label_names")
    for r in runs[1:]:
        y = r.predictions.get("y_true") or []
        problem = None
        if r.predictions.get("label_names") != ref_names:
            problem = "different label sets"
        elif len(y) != len(ref_y):
            problem = f"{len(y)} vs {len(ref_y)} test examples"
        elif y != ref_y:
            n_diff = sum(a != b for a, b in zip(y, ref_y))
            problem = f"labels differ at {n_diff} of {len(y)} positions"
        elif None not in (r.predictions.get("split_hash"), ref.predictions.get("split_hash")) and (
            r.predictions["split_hash"] != ref.predictions["split_hash"]
        ):
            problem = "same labels but different test texts"
        if problem:
            raise FtvsError(
                f"runs {ref.name!r} (data {ref.data_dir}) and {r.name!r} (data {r.data_dir}) were not "
                "scored on the "
                f"same test set ({problem}); compare runs of one prepared data folder only"
            )
    return {
        "num_examples": len(ref_y),
        "num_labels": len(ref_names or []),
        "label_names": ref_names,
        "data_dirs": sorted({str(r.data_dir) for r in runs}),
    }


def significance(runs: list[Run], n_resamples: int = 2000, seed: int = 0) -> dict:
    """McNemar exact test and paired bootstrap CIs (accuracy, macro-F1) for every pair of runs.

    All runs are resampled with the same indices, so each pair's bootstrap is paired; the per-run
    resampled scores are computed once and differenced per pair.
    """
    test = check_same_test_set(runs)
    y = np.asarray(runs[0].predictions["y_true"], dtype=np.int64)
    num_labels = test["num_labels"]
    preds = [np.asarray(r.predictions["y_pred"], dtype=np.int64) for r in runs]
    n = len(y)
    acc_boot = [[] for _ in runs]
    f1_boot = [[] for _ in runs]
    if n and len(runs) > 1:
        for w in resample_weights(n, n_resamples, seed):
            for i, p in enumerate(preds):
                acc_boot[i].append(w @ (p == y).astype(np.float64) / n)
                f1_boot[i].append(fast_macro_f1(y, p, num_labels, w))
    acc_boot = [np.concatenate(a) if a else np.zeros(0) for a in acc_boot]
    f1_boot = [np.concatenate(a) if a else np.zeros(0) for a in f1_boot]
    point_acc = [float((p == y).mean()) if n else 0.0 for p in preds]
    point_f1 = [fast_macro_f1(y, p, num_labels) if n else 0.0 for p in preds]

    def ci(d, point):
        return bootstrap_interval(d, point, 0.95)

    pairs = []
    for i, j in itertools.combinations(range(len(runs)), 2):
        # orient each pair so that A is the one with the higher test macro-F1
        a, b = (i, j) if point_f1[i] >= point_f1[j] else (j, i)
        mc = mcnemar_exact(y, preds[a], preds[b])
        pairs.append(
            {
                "a": runs[a].name,
                "b": runs[b].name,
                "a_arm": runs[a].arm,
                "b_arm": runs[b].arm,
                "mcnemar": mc,
                "accuracy": ci(acc_boot[a] - acc_boot[b], point_acc[a] - point_acc[b]),
                "macro_f1": ci(f1_boot[a] - f1_boot[b], point_f1[a] - point_f1[b]),
            }
        )
    for pair, adj in zip(pairs, holm([p["mcnemar"]["p_value"] for p in pairs])):
        pair["mcnemar"]["p_holm"] = adj
        pair["significant"] = pair["mcnemar"]["p_value"] < ALPHA
        pair["significant_holm"] = adj < ALPHA
    return {
        "test_set": {k: v for k, v in test.items() if k != "label_names"},
        "alpha": ALPHA,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "confidence": 0.95,
        "method": "McNemar exact (two-sided binomial on discordant pairs) + paired bias-corrected percentile "
        "bootstrap; Holm adjustment over all pairs",
        "pairs": pairs,
    }


def find_pair(sig: dict, a: str, b: str) -> dict | None:
    """The significance record of runs a and b, oriented as (a - b)."""
    for p in sig.get("pairs", []):
        if p["a"] == a and p["b"] == b:
            return p
        if p["a"] == b and p["b"] == a:
            flipped = {**p, "a": a, "b": b, "a_arm": p["b_arm"], "b_arm": p["a_arm"]}
            for k in ("accuracy", "macro_f1"):
                d = p[k]
                flipped[k] = {
                    "diff": -d["diff"],
                    "ci_low": -d["ci_high"],
                    "ci_high": -d["ci_low"],
                    "excludes_zero": d["excludes_zero"],
                }
            mc = dict(p["mcnemar"])
            mc["a_only_correct"], mc["b_only_correct"] = mc["b_only_correct"], mc["a_only_correct"]
            flipped["mcnemar"] = mc
            return flipped
    return None
