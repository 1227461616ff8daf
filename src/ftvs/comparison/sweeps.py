"""Sweeps found among the runs: test macro-F1 against the training-set size and against the model size."""

from __future__ import annotations

from ftvs.aggregate import crossovers, mean_std
from ftvs.comparison.runs import ARM_LABEL, Run
from ftvs.comparison.tables import group_label


def data_size_sweep(runs: list[Run], rows: list[dict]) -> list[dict]:
    """Per configuration measured at two or more train fractions: mean ± std macro-F1 per fraction."""
    series: dict[tuple, dict[float, list[dict]]] = {}
    for r, row in zip(runs, rows):
        series.setdefault((r.arm, r.method, r.model_name), {}).setdefault(r.train_fraction, []).append(row)
    out = []
    for (arm, method, model_name), by_frac in series.items():
        if len(by_frac) < 2:
            continue
        points = []
        for frac, members in sorted(by_frac.items()):
            mean, std = mean_std(m["macro_f1"] for m in members)
            n_train, _ = mean_std(m["num_train_examples"] for m in members)
            points.append(
                {
                    "train_fraction": frac,
                    "num_train_examples": int(n_train) if n_train else None,
                    "macro_f1_mean": mean,
                    "macro_f1_std": std,
                    "n": len(members),
                }
            )
        out.append(
            {
                "arm": arm,
                "method": method,
                "model_name": model_name,
                "label": group_label((arm, method, model_name, 1.0)),
                "points": points,
            }
        )
    return out


def model_size_sweep(runs: list[Run], rows: list[dict]) -> list[dict]:
    """Per arm and method with two or more full-data model sizes: mean ± std macro-F1 per size."""
    series: dict[tuple, dict] = {}
    for r, row in zip(runs, rows):
        if r.train_fraction != 1.0 or row["params_total"] is None:
            continue
        series.setdefault((r.arm, r.method), {}).setdefault(r.model_name, []).append(row)
    out = []
    for (arm, method), by_model in series.items():
        if len(by_model) < 2:
            continue
        points = []
        for model_name, members in by_model.items():
            mean, std = mean_std(m["macro_f1"] for m in members)
            points.append(
                {
                    "model_name": model_name,
                    "preset": members[0]["preset"],
                    "params_total": members[0]["params_total"],
                    "params_trainable": members[0]["params_trainable"],
                    "macro_f1_mean": mean,
                    "macro_f1_std": std,
                    "n": len(members),
                }
            )
        points.sort(key=lambda p: p["params_total"])
        out.append(
            {
                "arm": arm,
                "method": method,
                "label": ARM_LABEL.get(arm, arm) + ("" if arm != "finetune" else f" ({method})"),
                "points": points,
            }
        )
    return out


def data_size_crossings(data_size: list[dict]) -> list[dict]:
    """Every change of leader between two data-size curves (`ftvs.aggregate.crossovers`), flat."""
    curves = [
        {
            "label": s["label"],
            "arm": s["arm"],
            "points": [
                {
                    "num_train_examples": p["num_train_examples"],
                    "mean": p["macro_f1_mean"],
                    "std": p["macro_f1_std"],
                }
                for p in s["points"]
            ],
        }
        for s in data_size
    ]
    return [c for pair in crossovers(curves) for c in pair["crossings"]]


def sweeps(runs: list[Run], rows: list[dict], studies: list[dict]) -> dict:
    """Data-size sweep (macro-F1 vs #train examples per configuration) and model-size sweep (macro-F1 vs
    params per arm), from the runs' train_fraction / preset tags. Empty lists when there is no sweep."""
    data_size = data_size_sweep(runs, rows)
    declared = [
        s["doc"].get("sweeps") for s in studies if isinstance(s.get("doc"), dict) and s["doc"].get("sweeps")
    ]
    return {
        "data_size": data_size,
        "model_size": model_size_sweep(runs, rows),
        "crossovers": data_size_crossings(data_size),
        "declared": declared,
    }
