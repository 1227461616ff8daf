"""Calibration: do a model's confidences mean what they say?

- `expected_calibration_error`: equal-width confidence bins; the example-weighted mean |accuracy - mean
  confidence| over the bins (Guo et al. 2017, "On Calibration of Modern Neural Networks").
- `brier_score`: the multi-class Brier score, mean over examples of sum_k (p_k - [y = k])^2 (0 is perfect,
  2 is the worst possible).
- `fit_temperature`: temperature scaling, one scalar T > 0 dividing the logits, fitted by L-BFGS on the
  validation negative log-likelihood. Predictions (argmax) never change; only confidences do.
- `reliability_diagram`: per-bin accuracy against confidence, the figure every run gets.

Every model (both arms and the TF-IDF baseline) is scored by the same two functions, through
`ftvs.metrics.classification_metrics(..., probs=...)`.
"""

from pathlib import Path

import numpy as np

N_BINS = 15


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each confidence; bins are (i/n, (i+1)/n], with 0 put into the first."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_table(probs, y, n_bins: int = N_BINS) -> dict:
    """Per bin: example count, mean confidence and accuracy (NaN where a bin is empty)."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.int64)
    return confidence_table(probs.max(axis=1), probs.argmax(axis=1) == y, n_bins)


def confidence_table(confidence, correct, n_bins: int = N_BINS) -> dict:
    """`reliability_table` from each example's confidence and whether its prediction was right."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    which = _bins(confidence, n_bins)
    count = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(which, weights=correct, minlength=n_bins)
    safe = np.maximum(count, 1)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "confidence": np.where(count > 0, conf_sum / safe, np.nan),
        "accuracy": np.where(count > 0, correct_sum / safe, np.nan),
    }


def expected_calibration_error(probs, y, n_bins: int = N_BINS) -> float:
    t = reliability_table(probs, y, n_bins)
    n = t["count"].sum()
    if n == 0:
        return 0.0
    gap = np.nan_to_num(np.abs(t["accuracy"] - t["confidence"]))
    return float((t["count"] * gap).sum() / n)


def brier_score(probs, y) -> float:
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 0.0
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def calibration_scores(probs, y, n_bins: int = N_BINS) -> dict:
    return {"ece": expected_calibration_error(probs, y, n_bins), "brier": brier_score(probs, y)}


def fit_temperature(logits, y, max_iter: int = 200) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (logits, y); fitted as log T so T stays
    positive."""
    import torch
    import torch.nn.functional as F

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    target = torch.as_tensor(np.asarray(y), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def temperature_scaling(
    val_logits, val_y, test_logits, test_y, n_bins: int = N_BINS
) -> tuple[dict, np.ndarray]:
    """Fit T on validation, apply it to the test logits: the `calibration` entry of metrics.json and the
    calibrated test probabilities."""
    t = fit_temperature(val_logits, val_y)
    probs = softmax(np.asarray(test_logits, dtype=np.float64) / t)
    after = calibration_scores(probs, test_y, n_bins)
    return {
        "method": "temperature scaling (L-BFGS on validation NLL)",
        "temperature": t,
        "fitted_on": "val",
        "num_fit_examples": len(val_y),
        "ece_after": after["ece"],
        "brier_after": after["brier"],
    }, probs


def reliability_diagram(probs, y, path, title: str = "", probs_after=None, n_bins: int = N_BINS) -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with the share of examples
    per bin underneath; `probs_after` adds the temperature-scaled curve."""
    from ftvs.plots import plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    series = [("model", probs, "C0")] + (
        [("temperature-scaled", probs_after, "C1")] if probs_after is not None else []
    )
    width = 1.0 / n_bins
    for i, (label, p, color) in enumerate(series):
        t = reliability_table(p, y, n_bins)
        ok = t["count"] > 0
        ece = expected_calibration_error(p, y, n_bins)
        ax.plot(
            t["confidence"][ok], t["accuracy"][ok], "o-", color=color, ms=4, label=f"{label} (ECE {ece:.3f})"
        )
        share = t["count"] / max(1, t["count"].sum())
        hist.bar(
            t["edges"][:-1] + width * (0.25 + 0.5 * i), share, width=width / 2, color=color, align="edge"
        )
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "reliability diagram")
    hist.set_xlabel(f"confidence (max class probability, {n_bins} bins)")
    hist.set_ylabel("share")
    hist.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def calibrate_run(run_dir, metrics: dict, test_logits, test_y, validation=None) -> dict:
    """Draw RUN_DIR/reliability_diagram.png and, given `validation=(val_logits, val_y)`, add the fitted
    temperature and the test ECE/Brier after scaling to `metrics["calibration"]`. Returns `metrics`."""
    from ftvs.rundir import RELIABILITY_DIAGRAM

    run_dir = Path(run_dir)
    probs, after = softmax(test_logits), None
    if validation is not None:
        metrics["calibration"], after = temperature_scaling(*validation, test_logits, test_y)
    reliability_diagram(
        probs,
        test_y,
        run_dir / RELIABILITY_DIAGRAM,
        probs_after=after,
        title=f"{metrics.get('run_name', run_dir.name)}: test reliability",
    )
    return metrics


def calibration_row(metrics: dict) -> dict:
    """ECE/Brier before and (when fitted) after temperature scaling, for the comparison table."""
    test, cal = metrics.get("test") or {}, metrics.get("calibration") or {}
    return {
        "ece": test.get("ece"),
        "brier": test.get("brier"),
        "temperature": cal.get("temperature"),
        "ece_after": cal.get("ece_after"),
        "brier_after": cal.get("brier_after"),
    }


MAX_RUNS_DRAWN = 10


def reliability_runs(comparison: dict) -> list[str]:
    """The runs the report's reliability figure and table show: every run of a small comparison, else the
    typical run of each configuration."""
    names = [r["run"] for r in comparison.get("runs") or []]
    if len(names) <= MAX_RUNS_DRAWN:
        return names
    return list((comparison.get("focus") or {}).get("runs") or names[:MAX_RUNS_DRAWN])


def plot_reliability_overlay(runs, names: list[str], path) -> str | None:
    """One reliability curve per named run (from predictions.json: confidence and correctness), for the
    report. Returns the file name, or None when no run has predictions."""
    from ftvs.plots import plt
    from ftvs.rundir import PREDICTIONS

    by_name = {r.name: r for r in runs}
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    drawn = 0
    for name in names:
        run = by_name.get(name)
        if run is None or not (run.path / PREDICTIONS).is_file():
            continue
        p = run.predictions
        t = confidence_table(p["confidence"], np.asarray(p["y_true"]) == np.asarray(p["y_pred"]))
        ok = t["count"] > 0
        ax.plot(t["confidence"][ok], t["accuracy"][ok], "o-", ms=4, label=name)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel(f"confidence (max class probability, {N_BINS} bins)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("test reliability")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name
