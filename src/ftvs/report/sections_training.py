"""Report part 3, training and evaluation: results tables, curves, convergence, stability, overfitting."""

from __future__ import annotations

from ftvs import fmt
from ftvs.fmt import f3, f4
from ftvs.report.context import LOSS_RISE, OVERFIT_GAP, Ctx

RESULT_COLUMNS = [
    "run",
    "arm",
    "params",
    "accuracy",
    "macro-F1",
    "weighted-F1",
    "train s",
    "s/epoch",
    "best/epochs",
    "to 95%",
    "infer s/1k",
]


def result_rows(x: Ctx) -> list[list[str]]:
    out = []
    for r in x.narrative_rows:
        out.append(
            [
                r["run"],
                r["arm"] if r["arm"] != "finetune" else f"finetune/{r['method']}",
                fmt.count(r["params_total"]),
                f4(r["accuracy"]),
                f4(r["macro_f1"]),
                f4(r["weighted_f1"]),
                fmt.seconds(r["train_seconds_total"]),
                fmt.seconds(r["train_seconds_per_epoch"]),
                f"{r['best_epoch'] if r['best_epoch'] is not None else '–'}/"
                f"{r['epochs_run'] if r['epochs_run'] is not None else '–'}",
                "–" if r["epochs_to_95pct_best"] is None else str(r["epochs_to_95pct_best"]),
                f3(r["inference_seconds_per_1000"]),
            ]
        )
    return out


def _configuration_table(x: Ctx) -> list[dict]:
    """Mean ± std per full-data configuration: the main table when there are many runs."""
    if not x.many:
        return []
    return [
        {
            "t": "table",
            "header": [
                "configuration",
                "seeds",
                "params",
                "accuracy",
                "macro-F1",
                "best epoch",
                "train s",
                "infer s/1k",
            ],
            "rows": [
                [
                    g["label"],
                    str(g["n"]),
                    fmt.count(g["params_total_mean"]),
                    fmt.pm(g["accuracy_mean"], g["accuracy_std"]),
                    fmt.pm(g["macro_f1_mean"], g["macro_f1_std"]),
                    fmt.pm(g["best_epoch_mean"], g["best_epoch_std"], 1),
                    fmt.seconds(g["train_seconds_total_mean"]),
                    f3(g["inference_seconds_per_1000_mean"]),
                ]
                for g in x.groups
                if (g["train_fraction"] or 1.0) == 1.0
            ],
            "caption": "Test-set results per full-data configuration, mean ± std over seeds "
            f"({len(x.rows)} runs; "
            "the per-run table is comparison.md)",
        }
    ]


def _results_table(x: Ctx) -> dict:
    device = next((r["inference_device"] for r in x.rows if r.get("inference_device")), None)
    return {
        "t": "table",
        "header": RESULT_COLUMNS,
        "rows": result_rows(x),
        "caption": ("Typical run of each full-data configuration: " if x.many else "")
        + "Test-set results and costs (train s: total training seconds; best/epochs: epoch of "
        "the best val macro-F1 / epochs run; to 95%: first epoch within 95% of that best; "
        "infer s/1k: seconds to classify 1,000 test examples" + (f", on {device}" if device else "") + ")",
    }


def _seed_table(x: Ctx) -> list[dict]:
    """Seed groups beside the per-run table (small comparisons only)."""
    multi = [g for g in x.groups if g["n"] > 1]
    if not multi or x.many:
        return []
    rows = [
        [
            g["label"],
            str(g["n"]),
            f"{f4(g['accuracy_mean'])} ± {f4(g['accuracy_std'])}",
            f"{f4(g['macro_f1_mean'])} ± {f4(g['macro_f1_std'])}",
            f"{g['best_epoch_mean']:.1f} ± {g['best_epoch_std']:.1f}"
            if g["best_epoch_std"] is not None
            else "–",
            f"{fmt.seconds(g['train_seconds_total_mean'])}",
        ]
        for g in multi
    ]
    return [
        {
            "t": "table",
            "header": ["configuration", "seeds", "accuracy", "macro-F1", "best epoch", "train s (mean)"],
            "rows": rows,
            "caption": "Seed groups: mean ± standard deviation over seeds",
        }
    ]


def training_blocks(x: Ctx) -> list[dict]:
    blocks = [{"t": "h2", "text": "3. Training and evaluation"}]
    blocks += [*_configuration_table(x), _results_table(x), *_seed_table(x)]
    blocks += x.figure(
        "scores",
        88,
        "Test accuracy and macro-F1 per configuration; error bars show the standard "
        "deviation over seeds where a configuration was run with several seeds.",
    )
    blocks.append({"t": "h3", "text": "Training curves"})
    blocks += x.figure(
        "curves_overlay",
        88,
        "Validation macro-F1 and loss of every run against the epoch (top) and against "
        "wall-clock training time (bottom, log scale). The baseline is a single fit, "
        "drawn as one point.",
    )
    blocks += x.figure(
        "train_val_curves", 100, "Train (solid) vs validation (dashed) macro-F1 and loss per run."
    )
    blocks += convergence_blocks(x) + stability_blocks(x) + overfitting_blocks(x)
    blocks += x.figure(
        "confusion_matrices",
        92,
        "Row-normalised test confusion matrices (class order as in metadata.json; "
        "tick labels omitted when there are many classes).",
    )
    return blocks


def convergence_blocks(x: Ctx) -> list[dict]:
    items = []
    for r in x.narrative_rows:
        conv = r.get("convergence") or {}
        if r["arm"] == "baseline":
            items.append(
                f"**{r['run']}** has no epochs: one convex fit of {fmt.seconds(r['train_seconds_total'])} s "
                f"(including the choice of C), validation macro-F1 {f4(r['best_val_macro_f1'])}."
            )
            continue
        if not conv:
            items.append(f"**{r['run']}**: no history.jsonl, convergence unknown.")
            continue
        secs = conv.get("seconds_to_95pct_best")
        sentence = (
            f"**{r['run']}** peaked at epoch {conv['best_epoch']} of {conv['epochs']} (val macro-F1 "
            f"{f4(conv['best_val_macro_f1'])}) and first reached 95% of that at epoch "
            f"{conv['epochs_to_95pct_best']}"
            + (f" after {fmt.seconds(secs)} s" if secs is not None else "")
            + "."
        )
        if conv["best_epoch"] == conv["epochs"] and conv["epochs"] > 1:
            sentence += " The best epoch is the last one, so more epochs might still help."
        elif r.get("stop_reason"):
            sentence += f" Training ended by {str(r['stop_reason']).replace('_', ' ')}."
        items.append(sentence)
    p_ft, p_sc = x.ft, x.sc
    blocks = [{"t": "h3", "text": "Convergence"}, {"t": "ul", "items": items}]
    if p_ft and p_sc and p_ft.get("epochs_to_95pct_best") and p_sc.get("epochs_to_95pct_best"):
        a, b = p_ft["epochs_to_95pct_best"], p_sc["epochs_to_95pct_best"]
        word = "fewer" if a < b else "more" if a > b else "as many"
        blocks.append(
            {
                "t": "p",
                "text": f"The fine-tuned model needed {a} epoch{'s' if a != 1 else ''} to come within 95% "
                f"of its best validation macro-F1, {word} than the {b} of the from-scratch "
                "model.",
            }
        )
    return blocks


def stability_blocks(x: Ctx) -> list[dict]:
    items = []
    for g in x.groups:
        if g["n"] > 1 and (g["train_fraction"] or 1.0) == 1.0:
            items.append(
                f"**{g['label']}** over {g['n']} seeds: test macro-F1 std {f4(g['macro_f1_std'])}, "
                "best-epoch "
                f"std {g['best_epoch_std']:.2f}"
                if g["best_epoch_std"] is not None
                else f"**{g['label']}** over {g['n']} seeds: test macro-F1 std {f4(g['macro_f1_std'])}"
            )
    blocks = [{"t": "h3", "text": "Stability"}]
    if items:
        blocks.append({"t": "ul", "items": [i + "." for i in items]})
    else:
        blocks.append(
            {
                "t": "p",
                "text": "Every configuration was run with a single seed, so seed-to-seed variance is "
                "not measured here; `ftvs study` with several seeds (or repeated "
                "`ftvs train ... --seed N`) fills this in.",
            }
        )
    drops = []
    for r in x.narrative_rows:
        conv = r.get("convergence") or {}
        if conv.get("epochs", 0) > 1:
            drops.append(f"**{r['run']}** {f4(conv['max_val_f1_drop'])}")
    if drops:
        blocks.append(
            {
                "t": "p",
                "text": "Largest epoch-to-epoch fall of validation macro-F1 within a run (0 means "
                "it never fell): " + "; ".join(drops) + ".",
            }
        )
    return blocks


def overfitting_blocks(x: Ctx) -> list[dict]:
    rows, items = [], []
    for r in x.narrative_rows:
        conv = r.get("convergence") or {}
        rows.append(
            [
                r["run"],
                f3(r["gap_best_macro_f1"]),
                f3(r["gap_last_macro_f1"]),
                f3(r["gap_best_loss"]),
                f3(r["gap_last_loss"]),
                "–" if conv.get("val_loss_min_epoch") is None else str(conv["val_loss_min_epoch"]),
            ]
        )
        gap = r["gap_last_macro_f1"]
        rise = conv.get("val_loss_rise_after_min")
        rel = rise / conv["val_loss_min"] if rise is not None and conv.get("val_loss_min") else None
        if gap is None:
            continue
        signs = []
        if gap > OVERFIT_GAP:
            signs.append(f"train macro-F1 exceeds validation by {f3(gap)} at the last epoch")
        if rel is not None and rel > LOSS_RISE:
            signs.append(
                f"validation loss rose {100 * rel:.0f}% above its minimum (epoch "
                f"{conv['val_loss_min_epoch']})"
            )
        if signs:
            items.append(f"**{r['run']}** overfits: " + " and ".join(signs) + ".")
        else:
            items.append(
                f"**{r['run']}** shows no clear overfitting (last-epoch macro-F1 gap {f3(gap)}"
                + (f", validation loss {100 * rel:.0f}% above its minimum" if rel is not None else "")
                + ")."
            )
    return [
        {"t": "h3", "text": "Overfitting"},
        {
            "t": "table",
            "header": [
                "run",
                "F1 gap best",
                "F1 gap last",
                "loss gap best",
                "loss gap last",
                "val-loss min epoch",
            ],
            "rows": rows,
            "caption": "Train − validation gaps at the best and the last epoch (F1 gap > 0 and loss gap < "
            "0: the "
            "model fits the training data better than unseen data)",
        },
        {
            "t": "p",
            "text": f"Rule used below: a run overfits when its last-epoch macro-F1 gap exceeds "
            f"{OVERFIT_GAP:.2f} or its validation loss ends more than {100 * LOSS_RISE:.0f}% "
            "above its minimum.",
        },
        {"t": "ul", "items": items},
    ]
