"""Paired significance tests for two classifiers scored on the same test set.

- McNemar's exact test: of the examples exactly one model gets right, is the split between the two
  models compatible with 50/50? (two-sided binomial test on the discordant pairs, `scipy.stats.binomtest`)
- Paired bootstrap: resample test examples with replacement (the same indices for both models) and
  take the bias-corrected 2.5/97.5 percentiles of the accuracy and macro-F1 differences.
- Holm's step-down adjustment when many pairs are tested at once.

The point estimates of accuracy/macro-F1 always come from `ftvs.metrics.classification_metrics`; the
bootstrap needs thousands of macro-F1 evaluations, so it uses a vectorised count-based macro-F1 with the
same definition (every class of `label_names` counted, F1 = 0 for a class never predicted and absent),
checked against `classification_metrics` in the tests. Within a resample, a class present in the data
but not drawn is left out of the average instead of scoring 0 (see `fast_macro_f1`).
"""

from __future__ import annotations

import numpy as np

ALPHA = 0.05


def mcnemar_exact(y_true, pred_a, pred_b) -> dict:
    """Exact McNemar test. `a_only`: examples only A gets right; `b_only`: only B gets right."""
    from scipy.stats import binomtest

    y = np.asarray(y_true)
    ca, cb = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    a_only, b_only = int((ca & ~cb).sum()), int((~ca & cb).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(binomtest(a_only, n, 0.5, alternative="two-sided").pvalue)
    return {
        "a_only_correct": a_only,
        "b_only_correct": b_only,
        "both_correct": int((ca & cb).sum()),
        "both_wrong": int((~ca & ~cb).sum()),
        "discordant": n,
        "p_value": min(1.0, p),
    }


def _macro_f1_from_counts(tp, pred_count, true_count) -> np.ndarray:
    """Macro-F1 over the last axis from per-class counts; F1 = 2tp / (pred + true), 0 where both are 0."""
    denom = pred_count + true_count
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(np.broadcast_shapes(tp.shape, denom.shape)), where=denom > 0)
    return f1.mean(axis=-1)


def fast_macro_f1(y_true, y_pred, num_labels: int, weights=None) -> np.ndarray | float:
    """Macro-F1 of one prediction vector, or of many resamples given as a weight matrix [B, n]
    (weights[b, i] = how often example i is drawn in resample b)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    correct = (y_true == y_pred).astype(np.float64)
    onehot_t = np.zeros((n, num_labels))
    onehot_t[np.arange(n), y_true] = 1.0
    onehot_p = np.zeros((n, num_labels))
    onehot_p[np.arange(n), y_pred] = 1.0
    if weights is None:
        tp = (onehot_t * correct[:, None]).sum(0)
        return float(_macro_f1_from_counts(tp, onehot_p.sum(0), onehot_t.sum(0)))
    w = np.asarray(weights, dtype=np.float64)
    tp = w @ (onehot_t * correct[:, None])
    pred_count, true_count = w @ onehot_p, w @ onehot_t
    # A class that occurs in the full test set (or is predicted there) but drops out of a resample has no
    # defined F1 in it: it is left out of that resample's average rather than scored 0, which would bias
    # resampled macro-F1 downwards on small test sets. Classes absent from the full sample count as 0 in
    # every resample, exactly as in the point estimate, so a resample equal to the data gives the same value.
    absent_full = int(((onehot_p.sum(0) + onehot_t.sum(0)) == 0).sum())
    denom = pred_count + true_count
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(denom), where=denom > 0)
    return f1.sum(axis=-1) / np.maximum(1, (denom > 0).sum(axis=-1) + absent_full)


def resample_weights(n: int, n_resamples: int, seed: int, chunk: int = 250):
    """Yield [chunk, n] count matrices of bootstrap draws (multinomial = n draws with replacement)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = (np.arange(b)[:, None] * n + idx).ravel()
        w = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        done += b
        yield w


def bootstrap_interval(diffs, point: float, confidence: float = 0.95) -> dict:
    """Bias-corrected (BC) percentile interval of a bootstrap distribution around `point`.

    The plain percentile interval assumes the resampled statistic is centred on the estimate; macro-F1 on
    small per-class counts is not (resampling duplicates examples and drops others), so the quantiles are
    shifted by z0 = Φ⁻¹(share of resamples below the estimate). With thousands of test examples z0 ≈ 0
    and this is the ordinary percentile interval.
    """
    from scipy.stats import norm

    d = np.asarray(diffs, dtype=np.float64)
    b = len(d)
    share = ((d < point).sum() + 0.5 * (d == point).sum()) / b
    z0 = float(norm.ppf(min(max(share, 1 / (2 * b)), 1 - 1 / (2 * b))))
    z = float(norm.ppf((1 + confidence) / 2))
    lo_q, hi_q = float(norm.cdf(2 * z0 - z)), float(norm.cdf(2 * z0 + z))
    lo, hi = np.percentile(d, [100 * lo_q, 100 * hi_q])
    return {
        "diff": float(point),
        "ci_low": float(min(lo, point)),
        "ci_high": float(max(hi, point)),
        "std": float(d.std(ddof=1)) if b > 1 else 0.0,
        "excludes_zero": bool(lo > 0 or hi < 0),
        "bias_z0": z0,
    }


def paired_bootstrap(
    y_true, pred_a, pred_b, num_labels: int, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict:
    """Bias-corrected percentile bootstrap CI of (A - B) accuracy and macro-F1, same resampled indices for
    both."""
    y = np.asarray(y_true, dtype=np.int64)
    pa, pb = np.asarray(pred_a, dtype=np.int64), np.asarray(pred_b, dtype=np.int64)
    n = len(y)
    if n == 0:
        raise ValueError("empty test set")
    ca, cb = (pa == y).astype(np.float64), (pb == y).astype(np.float64)
    acc_d, f1_d = [], []
    for w in resample_weights(n, n_resamples, seed):
        acc_d.append((w @ (ca - cb)) / n)
        f1_d.append(fast_macro_f1(y, pa, num_labels, w) - fast_macro_f1(y, pb, num_labels, w))
    acc_d, f1_d = np.concatenate(acc_d), np.concatenate(f1_d)

    def summary(diffs, point):
        out = bootstrap_interval(diffs, point, confidence)
        out["p_a_not_better"] = float((diffs <= 0).mean())
        return out

    return {
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "confidence": confidence,
        "accuracy": summary(acc_d, ca.mean() - cb.mean()),
        "macro_f1": summary(f1_d, fast_macro_f1(y, pa, num_labels) - fast_macro_f1(y, pb, num_labels)),
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare_pair(y_true, pred_a, pred_b, num_labels: int, n_resamples: int = 2000, seed: int = 0) -> dict:
    """McNemar + paired bootstrap for one pair; `significant` = McNemar p < 0.05 (unadjusted)."""
    mc = mcnemar_exact(y_true, pred_a, pred_b)
    boot = paired_bootstrap(y_true, pred_a, pred_b, num_labels, n_resamples=n_resamples, seed=seed)
    return {"mcnemar": mc, "bootstrap": boot, "significant": mc["p_value"] < ALPHA}
