"""Report part 4, comparative analysis: who wins and why, published results, cost, when from-scratch is
preferred, size/data sensitivity, practical insights; and the appendix listing the runs."""

from __future__ import annotations

import math

from ftvs import fmt
from ftvs.fmt import f3, f4, signed
from ftvs.report.context import Ctx, arm_label, ratio, significance_words, times_phrase, titled_list, verdict


def _ranking_block(x: Ctx) -> list[dict]:
    reps = sorted(
        (g for g in x.groups if (g["train_fraction"] or 1.0) == 1.0), key=lambda g: -(g["macro_f1_mean"] or 0)
    )
    ranking = "; ".join(
        f"{k + 1}. {g['label']} {f4(g['macro_f1_mean'])}"
        + (f" ± {f4(g['macro_f1_std'])}" if g["macro_f1_std"] else "")
        for k, g in enumerate(reps)
    )
    return [
        {
            "t": "p",
            "text": f"Ranking of the full-data configurations by test macro-F1 (mean over seeds): {ranking}.",
        }
    ]


def _pairs_table(x: Ctx) -> list[dict]:
    """Every paired test, or only those among the arms' best runs when there are many pairs."""
    pairs = x.sig.get("pairs") or []
    key_names = {r["run"] for r in (x.ft, x.sc, x.base) if r}
    shown = pairs if len(pairs) <= 6 else [p for p in pairs if p["a"] in key_names and p["b"] in key_names]
    if not shown:
        return []
    rows = [
        [
            p["a"],
            p["b"],
            f"{signed(p['accuracy']['diff'])}\n[{signed(p['accuracy']['ci_low'])}, "
            f"{signed(p['accuracy']['ci_high'])}]",
            f"{signed(p['macro_f1']['diff'])}\n"
            f"[{signed(p['macro_f1']['ci_low'])}, {signed(p['macro_f1']['ci_high'])}]",
            f"{p['mcnemar']['a_only_correct']}/{p['mcnemar']['b_only_correct']}",
            fmt.p_value(p["mcnemar"]["p_value"]),
            fmt.p_value(p["mcnemar"]["p_holm"]),
            "yes" if p["significant"] else "no",
        ]
        for p in shown
    ]
    return [
        {
            "t": "table",
            "header": [
                "A",
                "B",
                "Δ accuracy [95% CI]",
                "Δ macro-F1 [95% CI]",
                "only A / only B right",
                "McNemar p",
                "Holm p",
                "p < 0.05",
            ],
            "rows": rows,
            "caption": f"Paired tests on the test set, A − B (A has the higher macro-F1); "
            f"95% CIs from a paired bias-corrected percentile bootstrap with {x.sig.get('n_resamples')} "
            f"resamples (seed {x.sig.get('seed')}); McNemar's exact test on the accuracy; Holm p "
            "adjusts for all pairs"
            + (
                ""
                if len(shown) == len(pairs)
                else f"; {len(shown)} of {len(pairs)} pairs shown, all in comparison.json"
            ),
        }
    ]


def _headline_blocks(x: Ctx) -> list[dict]:
    """Fine-tuned minus from-scratch, with the evidence for the gap; or what is missing to make it."""
    blocks = []
    p = x.pair(x.ft, x.sc)
    if p:
        d = p["macro_f1"]
        lead = (
            f"Fine-tuned minus from-scratch macro-F1 is {signed(d['diff'])} ({100 * d['diff']:+.2f} "
            "points); the "
            f"95% bootstrap interval [{signed(d['ci_low'])}, {signed(d['ci_high'])}] "
            f"{'excludes' if d['excludes_zero'] else 'includes'} zero. On accuracy the difference is "
            f"{signed(p['accuracy']['diff'])}; {significance_words(p)}. "
            + verdict(p, "fine-tuned", "from-scratch")
        )
        blocks.append({"t": "p", "text": lead})
        blocks += why_blocks(x, p)
    elif not (x.ft and x.sc):
        missing = "fine-tuned" if not x.ft else "from-scratch"
        blocks.append(
            {
                "t": "p",
                "text": f"No {missing} run was among the inputs, so the central fine-tuning vs. "
                "from-scratch comparison cannot be made; add it with "
                f"`ftvs train {'finetune' if not x.ft else 'scratch'} ...` and rerun "
                "`ftvs compare`.",
            }
        )
    return blocks


def _per_class_blocks(x: Ctx) -> list[dict]:
    diff = x.c.get("per_class_diff")
    if not diff or "per_class_diff" not in x.figures:
        return []
    cls = diff["classes"]
    top = ", ".join(f"{c['class']} ({signed(c['diff'], 3)})" for c in cls[:3] if c["diff"] > 0)
    bottom = ", ".join(f"{c['class']} ({signed(c['diff'], 3)})" for c in reversed(cls[-3:]) if c["diff"] < 0)
    text = (
        f"Per class, **{diff['a']}** has the higher test F1 on {diff['a_better']} classes and "
        f"**{diff['b']}** on "
        f"{diff['b_better']} ({diff['ties']} ties)."
    )
    if top:
        text += f" Largest leads of {diff['a']}: {top}."
    if bottom:
        text += f" Largest leads of {diff['b']}: {bottom}."
    return [
        {
            "t": "fig",
            "file": x.figures["per_class_diff"],
            "width": 92,
            "caption": f"Per-class test F1 of {diff['a']} minus {diff['b']}, sorted.",
        },
        {"t": "p", "text": text},
    ]


def comparative_blocks(x: Ctx) -> list[dict]:
    blocks = [
        {"t": "h2", "text": "4. Comparative analysis"},
        {"t": "h3", "text": "Who wins, and by how much"},
    ]
    blocks += _ranking_block(x) + _pairs_table(x) + _headline_blocks(x) + _per_class_blocks(x)
    blocks += (
        reference_blocks(x)
        + cost_blocks(x)
        + preference_blocks(x)
        + sensitivity_blocks(x)
        + insight_blocks(x)
    )
    return blocks


def why_blocks(x: Ctx, p: dict) -> list[dict]:
    """Evidence for the gap between the arms, each item only when its numbers support it."""
    ft, sc = x.ft, x.sc
    items = []
    a, b = ft.get("epochs_to_95pct_best"), sc.get("epochs_to_95pct_best")
    if a and b and a < b:
        items.append(
            f"Faster start: the pre-trained model was within 95% of its best validation macro-F1 after {a} "
            f"epoch{'s' if a != 1 else ''}, the from-scratch model after {b}, as expected when the "
            "language is already encoded and only the task remains to be learned."
        )
    bv_ft, bv_sc = ft.get("best_val_macro_f1"), sc.get("best_val_macro_f1")
    if bv_ft is not None and bv_sc is not None and bv_ft > bv_sc:
        items.append(f"Higher ceiling: best validation macro-F1 {f4(bv_ft)} vs. {f4(bv_sc)}.")
    g_ft, g_sc = ft.get("gap_last_macro_f1"), sc.get("gap_last_macro_f1")
    if g_ft is not None and g_sc is not None and g_sc > g_ft:
        items.append(
            f"Better generalisation per unit of training fit: last-epoch train − validation macro-F1 gap "
            f"{f3(g_ft)} for the fine-tuned model vs. {f3(g_sc)} from scratch."
        )
    n_train = ft.get("num_train_examples")
    if n_train and ft.get("params_trainable") and sc.get("params_trainable"):
        items.append(
            f"Data per trainable parameter: {n_train:,} training examples for "
            f"{ft['params_trainable']:,} trainable parameters (fine-tuned) vs. {sc['params_trainable']:,} "
            "(from scratch), all of which the from-scratch model must learn from these examples alone."
        )
    if p["macro_f1"]["diff"] <= 0:
        items.append(
            "The usual advantage of pre-training does not show on this data: a small model trained on the "
            "task alone is sufficient, which points to a task solvable from surface cues."
        )
    if not items:
        return []
    return [{"t": "p", "text": "What the runs show about the difference:"}, {"t": "ul", "items": items}]


def cost_blocks(x: Ctx) -> list[dict]:
    reps = x.representatives()
    if len(reps) < 2:
        return []
    ref = x.sc or x.base or reps[-1]
    rows = []
    for r in reps:
        rows.append(
            [
                r["run"],
                fmt.seconds(r["train_seconds_total"]),
                fmt.times(ratio(r["train_seconds_total"], ref["train_seconds_total"])),
                f3(r["inference_seconds_per_1000"]),
                fmt.times(ratio(r["inference_seconds_per_1000"], ref["inference_seconds_per_1000"])),
                fmt.count(r["params_total"]),
                fmt.times(ratio(r["params_total"], ref["params_total"])),
                fmt.count(r["params_trainable"]),
                fmt.nbytes(r["size_on_disk_bytes"]),
            ]
        )
    blocks = [
        {"t": "h3", "text": "Cost"},
        {
            "t": "table",
            "header": [
                "run",
                "train s",
                f"× {ref['run']}",
                "infer s/1k",
                f"× {ref['run']}",
                "params",
                f"× {ref['run']}",
                "trainable",
                "disk",
            ],
            "rows": rows,
            "caption": f"Training, inference and size, with ratios to {ref['run']}",
        },
    ]
    blocks += x.figure(
        "cost",
        80,
        "Test macro-F1 against training time and against inference time per 1,000 examples (log scales).",
    )
    return blocks


def _finetune_vs_scratch_items(x: Ctx) -> list[str]:
    """Whether the from-scratch model is worth its accuracy difference, from the paired test and costs."""
    ft, sc = x.ft, x.sc
    items = []
    p = x.pair(ft, sc)
    if p:
        d = p["macro_f1"]
        aspects = [
            ("to train", sc["train_seconds_total"], ft["train_seconds_total"], "slower", "faster"),
            (
                "at inference",
                sc["inference_seconds_per_1000"],
                ft["inference_seconds_per_1000"],
                "slower",
                "faster",
            ),
            ("in parameters", sc["params_total"], ft["params_total"], "larger", "smaller"),
        ]
        cheaper, dearer = [], []
        for what, a, b, more, less in aspects:
            phrase = times_phrase(a, b, more, less)
            if phrase:
                (cheaper if a < b else dearer).append(f"{phrase} {what}")
        costs = ", ".join(cheaper + dearer)
        ci = f"{signed(d['diff'])}, CI [{signed(d['ci_low'])}, {signed(d['ci_high'])}]"
        if d["diff"] < 0 and d["excludes_zero"]:
            items.append(
                "Here the from-scratch model is significantly better on macro-F1 (fine-tuned minus "
                "from-scratch "
                f"{ci}) and it is {costs}: training from scratch is the better choice on this data."
            )
        elif d["diff"] <= 0 or not d["excludes_zero"]:
            if cheaper:
                items.append(
                    f"On this data the from-scratch model is the better choice: its macro-F1 is within the "
                    f"confidence interval of the fine-tuned one ({ci}) and it is {', '.join(cheaper)}"
                    + (f" (though {', '.join(dearer)})" if dearer else "")
                    + "."
                )
            else:
                items.append(
                    f"The two models are indistinguishable on macro-F1 ({ci}), but the from-scratch model is "
                    f"not cheaper on any axis measured ({costs}), so it has no advantage here."
                )
        else:
            per_point = None
            if ft["train_seconds_total"] and sc["train_seconds_total"]:
                per_point = (ft["train_seconds_total"] - sc["train_seconds_total"]) / (100 * d["diff"])
            sentence = f"Fine-tuning is better by {100 * d['diff']:.2f} macro-F1 points" + (
                f"; the from-scratch model is {costs}." if costs else "."
            )
            if per_point is not None and per_point > 0:
                sentence += (
                    f" Each macro-F1 point of fine-tuning costs {fmt.seconds(per_point)} extra training "
                    "seconds."
                )
            items.append(sentence)
            items.append(
                "From scratch would be preferred when that accuracy loss is acceptable and the model must be "
                "small or fast (on-device, high-throughput or latency-bound serving), when no pre-trained "
                "model covers the language, domain vocabulary or tokenisation, when licensing or data "
                "governance rules out third-party weights, or when labelled data is plentiful enough to "
                "close the gap (see the sensitivity analysis)."
            )
    return items


def _against_baseline_items(x: Ctx) -> list[str]:
    """Whether each transformer earns its cost over the TF-IDF baseline."""
    ft, sc, base = x.ft, x.sc, x.base
    items = []
    if base:
        for neural in (sc, ft):
            q = x.pair(neural, base)
            if not q:
                continue
            d = q["macro_f1"]
            cheaper = (
                times_phrase(base["train_seconds_total"], neural["train_seconds_total"], "slower", "faster")
                or "no cheaper"
            )
            ci = f"CI [{signed(d['ci_low'])}, {signed(d['ci_high'])}]"
            who = f"**{neural['run']}** ({arm_label(neural['arm'])})"
            if d["diff"] > 0 and d["excludes_zero"]:
                items.append(
                    f"{who} beats the TF-IDF baseline by {signed(d['diff'])} macro-F1 ({ci}); the "
                    "baseline is "
                    f"{cheaper} to train."
                )
            elif d["excludes_zero"]:
                items.append(
                    f"The TF-IDF baseline beats {who} by {signed(-d['diff'])} macro-F1 ({ci} for "
                    f"{neural['run']} minus baseline) and is {cheaper} to train: on this data that "
                    "transformer "
                    "is not worth training as it was configured."
                )
            else:
                items.append(
                    f"{who} and the TF-IDF baseline are statistically indistinguishable (difference "
                    f"{signed(d['diff'])}, {ci}) and the baseline is {cheaper} to train: a transformer "
                    "needs a "
                    "reason beyond accuracy on this data."
                )
    return items


def preference_blocks(x: Ctx) -> list[dict]:
    items = _finetune_vs_scratch_items(x) + _against_baseline_items(x)
    return titled_list("When would training from scratch be preferred?", items)


def sensitivity_blocks(x: Ctx) -> list[dict]:
    sw = x.c.get("sweeps") or {}
    blocks = [{"t": "h3", "text": "Sensitivity to model size and data size"}]
    data, model = sw.get("data_size") or [], sw.get("model_size") or []
    if data and "sweep_data_size" in x.figures:
        blocks.append(
            {
                "t": "fig",
                "file": x.figures["sweep_data_size"],
                "width": 66,
                "caption": "Test macro-F1 against the number of training examples (nested stratified "
                "subsets; mean ± std over seeds).",
            }
        )
        items = []
        for s in data:
            pts = [q for q in s["points"] if q["num_train_examples"]]
            if len(pts) < 2:
                continue
            lo, hi = pts[0], pts[-1]
            items.append(
                f"**{s['label']}**: macro-F1 {f4(lo['macro_f1_mean'])} with {lo['num_train_examples']:,} "
                f"training examples, {f4(hi['macro_f1_mean'])} with {hi['num_train_examples']:,} "
                f"({signed(hi['macro_f1_mean'] - lo['macro_f1_mean'])})."
            )
        for cr in sw.get("crossovers") or []:
            items.append(
                f"Crossover: {cr['leader_below']} leads below {cr['between_examples'][0]:,} training "
                "examples "
                f"and {cr['leader_above']} above {cr['between_examples'][1]:,}."
            )
        if len(data) > 1 and not sw.get("crossovers"):
            items.append("The data-size curves do not cross within the measured range.")
        blocks.append({"t": "ul", "items": items})
    if model and "sweep_model_size" in x.figures:
        blocks.append(
            {
                "t": "fig",
                "file": x.figures["sweep_model_size"],
                "width": 66,
                "caption": "Test macro-F1 against the parameter count.",
            }
        )
        items = []
        for s in model:
            pts = s["points"]
            best = max(pts, key=lambda q: q["macro_f1_mean"] or 0)
            items.append(
                f"**{s['label']}**: {len(pts)} sizes from {fmt.count(pts[0]['params_total'])} to "
                f"{fmt.count(pts[-1]['params_total'])} parameters; macro-F1 from "
                f"{f4(pts[0]['macro_f1_mean'])} to {f4(pts[-1]['macro_f1_mean'])}, best at "
                f"{fmt.count(best['params_total'])} ({f4(best['macro_f1_mean'])})"
                + (
                    " — the largest size is not the best, a sign of overfitting with this much data."
                    if best is not pts[-1]
                    else "."
                )
            )
        blocks.append({"t": "ul", "items": items})
    if not data:
        blocks.append(
            {
                "t": "p",
                "text": "No data-size sweep was among the inputs (runs tagged with different "
                "`train_fraction`). `ftvs study --preset banking77` trains each arm on nested "
                "fractions of the training split; rerun `ftvs compare` on its output folder to "
                "fill in this analysis.",
            }
        )
    if not model:
        blocks.append(
            {
                "t": "p",
                "text": "No model-size sweep was among the inputs (from-scratch presets or several "
                "pre-trained models); `ftvs study --preset banking77` includes one.",
            }
        )
    return blocks


def insight_blocks(x: Ctx) -> list[dict]:
    items = []
    fastest = min(
        (r for r in x.rows if r["inference_seconds_per_1000"]),
        key=lambda r: r["inference_seconds_per_1000"],
        default=None,
    )
    slowest = max(
        (r for r in x.rows if r["inference_seconds_per_1000"]),
        key=lambda r: r["inference_seconds_per_1000"],
        default=None,
    )
    if fastest and slowest and fastest is not slowest:
        fastest_s, slowest_s = fastest["inference_seconds_per_1000"], slowest["inference_seconds_per_1000"]
        items.append(
            f"Serving cost spans {fmt.times(ratio(slowest_s, fastest_s))}: "
            f"{f3(fastest['inference_seconds_per_1000'])} s per 1,000 examples for **{fastest['run']}** vs. "
            f"{f3(slowest['inference_seconds_per_1000'])} s for **{slowest['run']}**."
        )
    unfinished = [
        r["run"]
        for r in x.narrative_rows
        if r["arm"] != "baseline"
        and r["best_epoch"] is not None
        and r["epochs_run"]
        and r["best_epoch"] == r["epochs_run"]
        and r["epochs_run"] > 1
    ]
    if unfinished:
        items.append(
            f"{len(unfinished)} run{'s' if len(unfinished) > 1 else ''} peaked at the last epoch "
            f"({', '.join(unfinished)}): the epoch budget, not the model, limited them."
        )
    early = [r["run"] for r in x.narrative_rows if r.get("stop_reason") and "early" in str(r["stop_reason"])]
    if early:
        items.append(
            f"Early stopping ended {len(early)} run{'s' if len(early) > 1 else ''} ({', '.join(early)}), "
            "saving the remaining epoch budget."
        )
    if x.base and x.winner and x.winner is not x.base:
        gain = x.winner["macro_f1"] - x.base["macro_f1"]
        r = ratio(x.winner["train_seconds_total"], x.base["train_seconds_total"])
        items.append(
            f"The best model adds {signed(gain)} macro-F1 over the TF-IDF baseline"
            + (f" for {fmt.times(r)} its training time" if r else "")
            + "."
        )
    if x.base and x.winner is x.base:
        items.append(
            f"The TF-IDF baseline is the best model here (macro-F1 {f4(x.base['macro_f1'])}): word and "
            "character "
            "n-grams capture this task well, so the neural models need more data, epochs or capacity."
        )
    big = [
        r
        for r in x.focus_runs
        if r["params_total"]
        and r["params_trainable"]
        and r["arm"] == "finetune"
        and r["params_trainable"] < r["params_total"]
    ]
    for r in big[:2]:
        items.append(
            f"**{r['run']}** trains {100 * r['params_trainable'] / r['params_total']:.2f}% of its "
            f"{fmt.count(r['params_total'])} parameters ({r['method']}), so its optimiser state stays small "
            "while the frozen base still costs full forward passes."
        )
    return titled_list("Practical insights", items)


def matching_group(x: Ctx, ref: dict) -> dict | None:
    """The full-data configuration a published result speaks about: same arm, and the same method and
    model where the reference names them; the best of several by mean test accuracy."""
    model = str(ref.get("model") or "").lower()
    candidates = [
        g
        for g in x.groups
        if (g["train_fraction"] or 1.0) == 1.0
        and g["arm"] == ref.get("arm")
        and (not ref.get("method") or g["method"] == ref["method"])
        and (not model or model in str(g["model_name"]).lower().split("/")[-1])
        and g["accuracy_mean"] is not None
    ]
    return max(candidates, key=lambda g: g["accuracy_mean"], default=None)


def reference_blocks(x: Ctx) -> list[dict]:
    """Published numbers that the study declared (`reference_results`), next to this study's."""
    refs = [r for r in x.c.get("reference_results") or [] if _finite(r.get("test_accuracy"))]
    if not refs:
        return []
    rows = []
    for ref in refs:
        g = matching_group(x, ref)
        ours = fmt.pm(g["accuracy_mean"], g["accuracy_std"]) if g else "not run here"
        rows.append(
            [
                ref.get("name", "?"),
                str(ref.get("source", "")),
                f4(ref["test_accuracy"]),
                g["label"] if g else "",
                ours,
                signed(g["accuracy_mean"] - ref["test_accuracy"]) if g else "",
            ]
        )
    return [
        {"t": "h3", "text": "Against published results"},
        {
            "t": "table",
            "header": [
                "published",
                "source",
                "accuracy",
                "our configuration",
                "our accuracy",
                "ours − published",
            ],
            "rows": rows,
            "caption": "Test accuracy reported elsewhere for the same data set, next to the matching "
            "configuration of "
            "this study (same arm, and method/model where named; mean ± std over seeds). Splits, "
            "preprocessing and budgets differ between studies, so read gaps of a point or less as ties.",
        },
    ]


def appendix_blocks(x: Ctx) -> list[dict]:
    items = [f"`{r['run']}`: {r['path']}" for r in x.narrative_rows]
    if x.many:
        items.append(
            f"… and {len(x.rows) - len(x.narrative_rows)} more runs (seeds and sweep points), listed in "
            "comparison.json."
        )
    return [
        {"t": "h3", "text": "Runs and files"},
        {
            "t": "p",
            "text": "Numbers above come from `comparison.json` (written by `ftvs compare`), which also holds "
            "every pairwise test, the seed groups, per-run histories and the full side-by-side table "
            "(`comparison.md`).",
        },
        {"t": "ul", "items": items},
    ]


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
