"""One row per run (scores, costs, convergence, overfitting gaps), seed groups, and the Markdown table."""

from __future__ import annotations

from pathlib import Path

from ftvs import fmt, rundir
from ftvs.aggregate import finite, mean_std
from ftvs.calibration import calibration_row
from ftvs.comparison.runs import Run, resolve_data_dir
from ftvs.errors import FtvsError
from ftvs.fileio import read_json
from ftvs.latency import latency_row
from ftvs.metrics import epoch_gap

DECIDE_FIELDS = ("latency_p50_ms", "latency_p95_ms", "throughput_s_per_1k", "size_on_disk_bytes")
GROUP_FIELDS = (
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "best_epoch",
    "train_seconds_total",
    "inference_seconds_per_1000",
    "params_total",
    "params_trainable",
    "num_train_examples",
    "gap_best_macro_f1",
    "gap_last_macro_f1",
    *DECIDE_FIELDS,
)


def convergence(history: list[dict]) -> dict:
    """Epoch of the val macro-F1 peak, epochs/seconds to reach 95% of it, largest epoch-to-epoch val-F1
    drop, and the val-loss minimum epoch with the rise from it to the last epoch."""
    rows = [r for r in history if finite(r.get("val_macro_f1")) is not None]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r["val_macro_f1"])
    target = 0.95 * best["val_macro_f1"]
    reach = next(r for r in rows if r["val_macro_f1"] >= target)
    f1s = [r["val_macro_f1"] for r in rows]
    drops = [a - b for a, b in zip(f1s, f1s[1:])]
    out = {
        "epochs": len(rows),
        "best_epoch": int(best["epoch"]),
        "best_val_macro_f1": float(best["val_macro_f1"]),
        "epochs_to_95pct_best": int(reach["epoch"]),
        "seconds_to_95pct_best": finite(reach.get("elapsed_seconds")),
        "max_val_f1_drop": float(max(drops)) if drops else 0.0,
        "last_val_macro_f1": float(f1s[-1]),
    }
    losses = [(r["epoch"], finite(r.get("val_loss"))) for r in rows if finite(r.get("val_loss")) is not None]
    if losses:
        ep_min, loss_min = min(losses, key=lambda t: t[1])
        out.update(
            {
                "val_loss_min_epoch": int(ep_min),
                "val_loss_min": loss_min,
                "val_loss_rise_after_min": float(losses[-1][1] - loss_min),
            }
        )
    return out


def _gaps(run: Run) -> dict:
    """metrics.json's train–val gaps, else recomputed from the history (runs evaluated before gaps were
    recorded)."""
    gap = run.metrics.get("train_val_gap") or {}
    if run.history and not gap:
        best = max(run.history, key=lambda r: r.get("val_macro_f1") or -1)
        gap = {"best": epoch_gap(best), "last": epoch_gap(run.history[-1])}
    return {
        f"gap_{when}_{k}": finite((gap.get(when) or {}).get(k))
        for when in ("best", "last")
        for k in ("macro_f1", "loss")
    }


def _timing(run: Run, conv: dict) -> dict:
    tr = run.metrics.get("training") or {}
    epochs_run = tr.get("epochs_run") or (len(run.history) or None)
    seconds = finite(tr.get("seconds_total"))
    per_epoch = finite(tr.get("seconds_per_epoch")) or (
        seconds / epochs_run if seconds and epochs_run else None
    )
    return {
        "train_seconds_total": seconds,
        "train_seconds_per_epoch": per_epoch,
        "epochs_run": epochs_run,
        "best_epoch": tr.get("best_epoch", conv.get("best_epoch")),
        "epochs_to_95pct_best": conv.get("epochs_to_95pct_best"),
        "seconds_to_95pct_best": conv.get("seconds_to_95pct_best"),
        "stop_reason": tr.get("stop_reason"),
    }


def table_row(run: Run) -> dict:
    m = run.metrics
    t, inf = m.get("test") or {}, m.get("inference") or {}
    params = m.get("params") or {}
    conv = convergence(run.history)
    tok = (m.get("model") or {}).get("tokenizer") or {}
    gaps = _gaps(run)
    return {
        "run": run.name,
        "path": str(run.path),
        "dataset": m.get("dataset"),
        "arm": run.arm,
        "method": run.method,
        "model_name": run.model_name,
        "seed": run.seed,
        "train_fraction": run.train_fraction,
        "preset": run.preset,
        "num_train_examples": _num_train(run),
        "params_total": params.get("total"),
        "params_trainable": _trainable(run, params),
        "accuracy": finite(t.get("accuracy")),
        "macro_f1": finite(t.get("macro_f1")),
        "weighted_f1": finite(t.get("weighted_f1")),
        "test_loss": finite(t.get("loss")),
        **_timing(run, conv),
        "inference_seconds_per_1000": finite(inf.get("seconds_per_1000")),
        "inference_device": inf.get("device"),
        **latency_row(m),
        "size_on_disk_bytes": m.get("size_on_disk_bytes"),
        "best_val_macro_f1": finite((m.get("best_val") or {}).get("macro_f1")),
        "gap_best_macro_f1": gaps["gap_best_macro_f1"],
        "gap_best_loss": gaps["gap_best_loss"],
        "gap_last_macro_f1": gaps["gap_last_macro_f1"],
        "gap_last_loss": gaps["gap_last_loss"],
        "tokenizer": tok.get("type") or tok.get("name"),
        "vocab_size": tok.get("vocab_size"),
        "num_test_examples": m.get("num_test_examples"),
        "convergence": conv,
        "calibration": calibration_row(m),
    }


def _trainable(run: Run, params: dict):
    """Trainable parameters while training (train_summary / config `resolved`), else metrics.json's count
    (a reloaded model for evaluation may report 0 trainable)."""
    for v in (
        run.summary.get("params_trainable"),
        (run.config.get("resolved") or {}).get("params_trainable"),
    ):
        if isinstance(v, int) and v > 0:
            return v
    return params.get("trainable")


def _num_train(run: Run):
    for v in (run.tag("num_train_examples"), (run.config.get("resolved") or {}).get("num_train_examples")):
        if isinstance(v, int | float) and v > 0:
            return int(v)
    d = resolve_data_dir(run)
    if d is not None:
        try:
            return int(read_json(d / rundir.DATA_METADATA)["splits"]["train"]["count"])
        except (KeyError, TypeError, ValueError, FtvsError):
            return None
    return None


def make_groups(runs: list[Run], rows: list[dict]) -> list[dict]:
    """Runs sharing (arm, method, model_name, train_fraction), i.e. seeds of one configuration."""
    by_key: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        by_key.setdefault(r.group_key, []).append(i)
    groups = []
    for key, idx in by_key.items():
        members = [rows[i] for i in idx]
        g = {
            "key": list(key),
            "arm": key[0],
            "method": key[1],
            "model_name": key[2],
            "train_fraction": key[3],
            "label": group_label(key),
            "runs": [m["run"] for m in members],
            "n": len(members),
            "seeds": [m["seed"] for m in members],
        }
        for field in GROUP_FIELDS:
            g[f"{field}_mean"], g[f"{field}_std"] = mean_std(m[field] for m in members)
        groups.append(g)
    return groups


def group_label(key) -> str:
    arm, method, model_name, frac = key
    if arm == "baseline":
        base = "TF-IDF + LogReg"
    elif arm == "scratch":
        base = model_name if str(model_name).startswith("scratch") else f"scratch {model_name}"
        base += " distilled" if method == "distilled" else ""
    else:
        base = f"{Path(str(model_name)).name} ({method})"
    return base if frac in (None, 1.0) else f"{base} @ {frac:g} train"


def _whole(v) -> str:
    return fmt.MISSING if v is None else str(v)


def _three(v) -> str:
    return fmt.fixed(v, 3)


TABLE_COLUMNS = [
    ("run", "run", str),
    ("arm", "arm", str),
    ("method", "method", str),
    ("params total", "params_total", fmt.count),
    ("params trainable", "params_trainable", fmt.count),
    ("accuracy", "accuracy", fmt.fixed),
    ("macro-F1", "macro_f1", fmt.fixed),
    ("weighted-F1", "weighted_f1", fmt.fixed),
    ("train s", "train_seconds_total", fmt.seconds),
    ("s/epoch", "train_seconds_per_epoch", fmt.seconds),
    ("epochs", "epochs_run", _whole),
    ("best epoch", "best_epoch", _whole),
    ("infer s/1k", "inference_seconds_per_1000", _three),
    ("disk", "size_on_disk_bytes", fmt.nbytes),
    ("gap F1 best", "gap_best_macro_f1", _three),
    ("gap F1 last", "gap_last_macro_f1", _three),
    ("gap loss best", "gap_best_loss", _three),
    ("gap loss last", "gap_last_loss", _three),
]


def table_cells(rows: list[dict], columns=TABLE_COLUMNS) -> tuple[list[str], list[list[str]]]:
    return [c[0] for c in columns], [[fn(r.get(key)) for _, key, fn in columns] for r in rows]


def markdown_table(rows: list[dict], columns=TABLE_COLUMNS) -> str:
    header, cells = table_cells(rows, columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)
