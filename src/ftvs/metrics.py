"""The one metrics function: every model (scratch, fine-tuned, TF-IDF baseline) is scored by it."""

import math

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def classification_metrics(y_true, y_pred, label_names, loss: float | None = None, probs=None) -> dict:
    """Accuracy, macro/weighted precision/recall/F1, per-class scores and the confusion matrix; with the
    class probabilities `probs` [N, C], also the calibration scores `ece` and `brier`.

    Classes absent from both `y_true` and `y_pred` still get a row (zero support), so runs on the same
    data always report the same label set.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = list(range(len(label_names)))
    out: dict = {"accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(label_names)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    if loss is not None:
        out["loss"] = float(loss)
    if probs is not None:
        from ftvs.calibration import calibration_scores

        out.update(calibration_scores(probs, y_true))
    return out


def summary_metrics(y_true, y_pred, num_labels: int) -> dict:
    """Accuracy and macro-F1 only: the cheap per-epoch numbers for history.jsonl."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    _, _, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(num_labels)), average="macro", zero_division=0
    )
    return {"accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0, "macro_f1": float(f)}


GAP_KEYS = ("accuracy", "macro_f1", "loss")


def train_val_gap(train: dict, val: dict) -> dict:
    """Train minus val for accuracy, macro-F1 and loss, where both are known numbers. Positive accuracy/F1
    gaps and negative loss gaps mean the model fits its training data better than unseen data."""
    out = {}
    for k in GAP_KEYS:
        a, b = train.get(k), val.get(k)
        if (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isfinite(a)
            and math.isfinite(b)
        ):
            out[k] = a - b
    return out


def epoch_gap(row: dict) -> dict:
    """`train_val_gap` of one history.jsonl row (keys `train_<metric>`, `val_<metric>`)."""
    return train_val_gap(
        {k: row.get(f"train_{k}") for k in GAP_KEYS}, {k: row.get(f"val_{k}") for k in GAP_KEYS}
    )
