"""Turn a comparison (see `ftvs.compare`) into report blocks.

Every number in the text is formatted from the comparison dict at build time: there is no prepared
paragraph with numbers in it, and the qualitative words ("significant", "overfits", "faster") are
chosen by explicit rules from the same numbers (thresholds are stated in the report).
"""

from __future__ import annotations

import math

from ftvs.compare import ARM_LABEL, find_pair, fmt_bytes, fmt_count, fmt_seconds
from ftvs.report.calibration_section import calibration_blocks

OVERFIT_GAP = 0.10  # train − val macro-F1 at the last epoch above this: "overfits"
LOSS_RISE = 0.10  # val loss at the last epoch this fraction above its minimum: "val loss rising"
NEAR_BEST = 0.95  # convergence: first epoch at 95% of the best val macro-F1
MANY_RUNS = 10  # above this many runs, tables and per-run text show one typical run per configuration


# --------------------------------------------------------------------------------------- formatting


def f4(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def f3(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def signed(x, digits=4) -> str:
    return "–" if x is None else f"{x:+.{digits}f}"


def fmt_p(p) -> str:
    if p is None:
        return "–"
    if p <= 0:
        return "< 1e-300"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.4f}"


def ratio(a, b):
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return a / b


def fx(r) -> str:
    """A ratio as '3.2×' (two significant digits below 10)."""
    if r is None:
        return "–"
    if r >= 100:
        return f"{r:,.0f}×"
    if r >= 10:
        return f"{r:.0f}×"
    if r >= 1:
        return f"{r:.1f}×"
    return f"{r:.2g}×"


def times_phrase(a, b, more: str, less: str) -> str | None:
    """'3.2× faster' style comparison of a against b (a/b < 1 → `less` word)."""
    r = ratio(a, b)
    if r is None:
        return None
    if r >= 1:
        return f"{fx(r)} {more}"
    return f"{fx(1 / r)} {less}"


def arm_label(arm: str) -> str:
    return ARM_LABEL.get(arm, arm)


def _arch_outline(arch: dict) -> str:
    skip = {"type"}
    parts = [f"{k}={v}" for k, v in arch.items() if k not in skip and v is not None and not isinstance(v, dict | list)]
    parts += [f"{k}={'-'.join(str(x) for x in v)}" for k, v in arch.items() if isinstance(v, list)]
    head = arch.get("type")
    return (f"{head}; " if head else "") + ", ".join(parts)


# ------------------------------------------------------------------------------------------ context


class Ctx:
    """Indexes over the comparison used by every section."""

    def __init__(self, c: dict):
        self.c = c
        self.rows = c["runs"]
        self.by_name = {r["run"]: r for r in self.rows}
        self.models = {m["run"]: m for m in c.get("models", [])}
        self.groups = c["groups"]
        self.sig = c.get("significance") or {}
        foc = c.get("focus")
        if not foc:  # comparison.json written before `focus` existed
            from ftvs.compare import focus

            foc = focus(self.groups, self.rows)
        self.focus_runs = [self.by_name[n] for n in foc.get("runs", []) if n in self.by_name] or list(self.rows)
        self.best = {arm: self.by_name[v["run"]] for arm, v in (foc.get("by_arm") or {}).items()
                     if v.get("run") in self.by_name}
        ranked = [self.best[a] for a in foc.get("arm_order", []) if a in self.best]
        self.winner = ranked[0] if ranked else None
        self.ft, self.sc, self.base = self.best.get("finetune"), self.best.get("scratch"), self.best.get("baseline")
        # per-run narrative for small comparisons; one typical run per full-data configuration for studies
        self.many = len(self.rows) > MANY_RUNS
        self.narrative_rows = self.focus_runs if self.many else list(self.rows)
        self.figures = c.get("figures") or {}

    def pair(self, a: dict | None, b: dict | None):
        if not a or not b or a is b:
            return None
        return find_pair(self.sig, a["run"], b["run"])

    def group_of(self, run_name: str) -> dict | None:
        return next((g for g in self.groups if run_name in g["runs"]), None)

    def representatives(self) -> list[dict]:
        """One row per full-data configuration: its typical seed (see comparison.json `focus.rule`)."""
        return list(self.focus_runs)


def describe_pair(p: dict, metric: str = "macro_f1") -> str:
    d = p[metric]
    return (f"{signed(d['diff'])} (95% CI [{signed(d['ci_low'])}, {signed(d['ci_high'])}])")


def significance_words(p: dict) -> str:
    """The McNemar result; McNemar tests the accuracy difference (who is right more often)."""
    mc = p["mcnemar"]
    verdict = "significant" if p["significant"] else "not significant"
    p_text = fmt_p(mc["p_value"])
    p_text = f"p {p_text}" if p_text.startswith("<") else f"p = {p_text}"
    return (f"McNemar exact {p_text} ({mc['a_only_correct']} vs {mc['b_only_correct']} "
            f"discordant examples), {verdict} at α = 0.05")


def verdict(p: dict, a_label: str, b_label: str) -> str:
    """Who is ahead, from McNemar (accuracy) and the bootstrap interval (macro-F1), read together."""
    acc_sig, f1_sig = p["significant"], p["macro_f1"]["excludes_zero"]
    acc_lead = a_label if p["accuracy"]["diff"] > 0 else b_label
    f1_lead = a_label if p["macro_f1"]["diff"] > 0 else b_label
    if acc_sig and f1_sig:
        if acc_lead == f1_lead:
            return f"The {acc_lead} model is ahead on both accuracy and macro-F1."
        return f"The {f1_lead} model is ahead on macro-F1 but the {acc_lead} model on accuracy."
    if f1_sig:
        return f"The {f1_lead} model is ahead on macro-F1; the accuracy difference is not significant."
    if acc_sig:
        return f"The {acc_lead} model is ahead on accuracy; the macro-F1 interval includes zero."
    return "Neither accuracy nor macro-F1 separates the two models at this test-set size."


# ------------------------------------------------------------------------------------------ sections


def title_blocks(x: Ctx) -> list[dict]:
    ds = x.c.get("dataset") or {}
    name = ds.get("source") or next((r.get("dataset") for r in x.rows if r.get("dataset")), None) or ""
    name = str(name).rstrip("/").split("/")[-1].split(":")[-1] or "one data set"
    n_test = (x.sig.get("test_set") or {}).get("num_examples")
    arms = sorted({r["arm"] for r in x.rows}, key=lambda a: {"finetune": 0, "scratch": 1, "baseline": 2}.get(a, 9))
    blocks = [{"t": "h1", "text": f"Fine-tuning vs. from-scratch decoder-only transformers on {name}"},
              {"t": "p", "text": f"Comparative report generated by `ftvs report` from {len(x.rows)} evaluated runs "
                                 f"({', '.join(arm_label(a) for a in arms)}), all scored on the same "
                                 f"{n_test:,}-example test set." if n_test else
                                 f"Comparative report generated by `ftvs report` from {len(x.rows)} evaluated runs."}]
    items = []
    if x.winner:
        w = x.winner
        g = x.group_of(w["run"])
        if g and g["n"] > 1:
            items.append(f"Best configuration on the test set: **{g['label']}** ({arm_label(w['arm'])}), macro-F1 "
                         f"{f4(g['macro_f1_mean'])} ± {f4(g['macro_f1_std'])} over {g['n']} seeds, accuracy "
                         f"{f4(g['accuracy_mean'])} ± {f4(g['accuracy_std'])}; its typical seed **{w['run']}** is used "
                         "in the paired tests below.")
        else:
            items.append(f"Best model on the test set: **{w['run']}** ({arm_label(w['arm'])}), accuracy "
                         f"{f4(w['accuracy'])}, macro-F1 {f4(w['macro_f1'])}.")
    p = x.pair(x.ft, x.sc)
    if p:
        items.append(f"Fine-tuned **{x.ft['run']}** minus from-scratch **{x.sc['run']}**: macro-F1 "
                     f"{describe_pair(p)}, accuracy {describe_pair(p, 'accuracy')}; {significance_words(p)}. "
                     + verdict(p, "fine-tuned", "from-scratch"))
        costs = [s for s in (
            _cost_sentence("training time", x.ft["train_seconds_total"], x.sc["train_seconds_total"]),
            _cost_sentence("inference time per 1,000 examples", x.ft["inference_seconds_per_1000"],
                           x.sc["inference_seconds_per_1000"]),
            _cost_sentence("parameter count", x.ft["params_total"], x.sc["params_total"])) if s]
        if costs:
            items.append("Cost ratios, fine-tuned ÷ from-scratch: " + "; ".join(costs) + ".")
    for neural in (x.ft, x.sc):
        q = x.pair(neural, x.base)
        if q:
            items.append(f"{arm_label(neural['arm']).capitalize()} **{neural['run']}** minus the TF-IDF baseline: "
                         f"macro-F1 {describe_pair(q)}, accuracy {describe_pair(q, 'accuracy')}; "
                         f"{significance_words(q)}. " + verdict(q, arm_label(neural["arm"]), "TF-IDF baseline"))
    if items:
        blocks += [{"t": "h3", "text": "Key findings"}, {"t": "ul", "items": items}]
    return blocks


def _cost_sentence(what: str, ft, sc) -> str | None:
    r = ratio(ft, sc)
    if r is None:
        return None
    return f"{what} {fx(r)}"


def model_blocks(x: Ctx) -> list[dict]:
    blocks = [{"t": "h2", "text": "1. Model descriptions"}]
    reps = x.representatives()
    header = ["model", "arm / method", "params total", "trainable", "size on disk", "tokenizer", "vocab", "max len"]
    rows = []
    for r in reps:
        m = x.models.get(r["run"], {})
        tok = m.get("tokenizer") or {}
        trainable = r["params_trainable"]
        share = f" ({100 * trainable / r['params_total']:.2f}%)" if trainable and r["params_total"] else ""
        kind = {"scratch": r["model_name"], "baseline": r["method"]}.get(r["arm"], r["method"])
        rows.append([r["run"], f"{arm_label(r['arm'])} / {kind}", f"{r['params_total']:,}" if r["params_total"]
                     else "–", (f"{trainable:,}" if trainable is not None else "–") + share,
                     fmt_bytes(r["size_on_disk_bytes"]), _tok_name(tok), _num(tok.get("vocab_size")),
                     _num(m.get("max_seq_length"))])
    blocks.append({"t": "table", "header": header, "rows": rows, "caption": "Models compared (one row per "
                   "configuration; parameter counts include embeddings)"})
    items = []
    for r in reps:
        m = x.models.get(r["run"], {})
        arch = m.get("architecture") or {}
        outline = _arch_outline(arch) if arch else "no architecture record in metrics.json"
        head = m.get("head") or "not recorded"
        tok = m.get("tokenizer") or {}
        tok_text = _tok_name(tok)
        if tok.get("base_vocab_size"):
            tok_text += f", {tok['vocab_size']:,} of {tok['base_vocab_size']:,} base tokens kept"
        elif tok.get("vocab_size"):
            tok_text += f", vocabulary {tok['vocab_size']:,}"
        train = m.get("training") or {}
        hp = ", ".join(f"{k}={v}" for k, v in train.items())
        emb = ""
        if m.get("params_embedding") and r["params_total"]:
            emb = (f" The embedding table holds {m['params_embedding']:,} of the {r['params_total']:,} parameters "
                   f"({100 * m['params_embedding'] / r['params_total']:.1f}%).")
        items.append(f"**{r['run']}** ({arm_label(r['arm'])}). Architecture: {outline}. Classification head: {head}. "
                     f"Tokenizer: {tok_text}.{emb}" + (f" Training settings: {hp}." if hp else ""))
    blocks.append({"t": "ul", "items": items})
    return blocks


def _tok_name(tok: dict) -> str:
    kind, name = tok.get("type"), tok.get("name")
    if kind and name and str(name) not in str(kind):
        return f"{kind} ({str(name).rstrip('/').split('/')[-1]})"
    return str(kind or name or "–")


def _num(v) -> str:
    return f"{v:,}" if isinstance(v, int | float) and not isinstance(v, bool) else "–"


CLEANING_WORDS = {
    "invalid_utf8_repaired": "texts with invalid UTF-8 repaired",
    "truncated": "over-long texts truncated",
    "empty_dropped": "empty texts dropped",
    "missing_label_dropped": "rows without a label dropped",
    "duplicates_dropped": "exact duplicate training texts dropped",
    "leaked_test_dropped": "test texts also present in train dropped (leakage)",
    "leaked_val_dropped": "validation texts also present in train dropped (leakage)",
}


def dataset_blocks(x: Ctx) -> list[dict]:
    ds = x.c.get("dataset") or {}
    blocks = [{"t": "h2", "text": "2. Dataset description"}]
    if not ds.get("available"):
        blocks.append({"t": "p", "text": f"The prepared data folder ({ds.get('data_dir')}) was not found when the "
                                         "report was built, so only the test-set size is known; rebuild the report "
                                         "where the folder exists for statistics and examples."})
        return blocks
    splits = ds.get("splits") or {}
    counts = {k: (v or {}).get("count") for k, v in splits.items()}
    total = sum(v for v in counts.values() if v)
    text = (f"Source: `{ds.get('source')}`, {ds.get('num_labels')} classes, {total:,} examples after cleaning: "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items() if v is not None) + ".")
    if ds.get("train_per_class_min") is not None:
        text += (f" Training examples per class range from {ds['train_per_class_min']:,} to "
                 f"{ds['train_per_class_max']:,} (median {ds['train_per_class_median']:g}), an imbalance ratio of "
                 f"{ds['train_per_class_max'] / max(1, ds['train_per_class_min']):.1f}.")
    blocks.append({"t": "p", "text": text})
    header = ["split", "examples", "words mean", "words median", "words p95", "words max"]
    tokens = ds.get("length_tokens") or {}
    if tokens:
        header += ["tokens mean", "tokens p95", "tokens max"]
    rows = []
    for split, n in counts.items():
        w = (ds.get("length_words") or {}).get(split) or {}
        row = [split, _num(n), _g(w.get("mean")), _g(w.get("median")), _g(w.get("p95")), _g(w.get("max"))]
        if tokens:
            t = tokens.get(split) or {}
            row += [_g(t.get("mean")), _g(t.get("p95")), _g(t.get("max"))]
        rows.append(row)
    tok_note = f"; tokens counted with {ds['tokenizer_for_stats']}" if ds.get("tokenizer_for_stats") and tokens else ""
    blocks.append({"t": "table", "header": header, "rows": rows,
                   "caption": f"Split sizes and text lengths (words{tok_note})"})
    steps = []
    cleaning = ds.get("cleaning") or {}
    for key, words in CLEANING_WORDS.items():
        if key in cleaning:
            steps.append(f"{words}: {cleaning[key]:,}")
    for key, value in cleaning.items():
        if key not in CLEANING_WORDS and key != "max_chars" and isinstance(value, int):
            steps.append(f"{key.replace('_', ' ')}: {value:,}")
    cap = cleaning.get("max_chars")
    cap_text = f"{cap:,} characters" if isinstance(cap, int) else "the length cap"
    pre = [f"Whitespace normalised, invalid UTF-8 repaired, texts longer than {cap_text} cut; counts per step: "
           + "; ".join(steps) + "." if steps else "No cleaning record in metadata.json."]
    if ds.get("val_source") == "stratified":
        pre.append(f"Validation split: a stratified {100 * (ds.get('validation_split') or 0):g}% of the training data "
                   f"(seed {ds.get('seed')}).")
    elif ds.get("val_source"):
        pre.append(f"Validation split taken from the source ({ds['val_source']}).")
    if ds.get("test_source") == "source":
        pre.append("Test split: the source's own test set.")
    elif ds.get("test_source") == "stratified":
        pre.append(f"Test split: a stratified {100 * (ds.get('test_split') or 0):g}% of the source training data.")
    if ds.get("max_train_examples"):
        pre.append(f"Training split subsampled (stratified) to {ds['max_train_examples']:,} examples.")
    for r in x.representatives():
        m = x.models.get(r["run"], {})
        if r["arm"] == "baseline":
            pre.append(f"**{r['run']}**: lower-cased word and character n-grams weighted by TF-IDF; no truncation.")
        elif m.get("max_seq_length"):
            tok = m.get("tokenizer") or {}
            p95 = ((tokens or {}).get("train") or {}).get("p95")
            over = ""
            if p95 is not None:
                over = (f" (train p95 length {p95:g} tokens with the statistics tokenizer: "
                        + ("most texts fit)" if p95 <= m["max_seq_length"] else "the longest 5% are truncated)"))
            pre.append(f"**{r['run']}**: {_tok_name(tok)}, truncated to {m['max_seq_length']} tokens{over}; "
                       "batches padded to their longest text.")
    blocks += [{"t": "h3", "text": "Preprocessing"}, {"t": "ul", "items": pre}]
    ex = ds.get("examples") or []
    if ex:
        blocks.append({"t": "table", "header": ["label", "text (training split)"], "cls": "examples",
                       "rows": [[e["label"], _clip(e["text"], 140)] for e in ex[:6]],
                       "caption": "Random training examples, one per class", "align": "ll"})
    return blocks


def _g(v) -> str:
    if v is None:
        return "–"
    return f"{v:,.1f}" if isinstance(v, float) and not float(v).is_integer() else f"{int(v):,}"


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


RESULT_COLUMNS = ["run", "arm", "params", "accuracy", "macro-F1", "weighted-F1", "train s", "s/epoch",
                  "best/epochs", "to 95%", "infer s/1k"]


def _pm(mean, std, digits=4) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def result_rows(x: Ctx) -> list[list[str]]:
    out = []
    for r in x.narrative_rows:
        out.append([r["run"], r["arm"] if r["arm"] != "finetune" else f"finetune/{r['method']}",
                    fmt_count(r["params_total"]), f4(r["accuracy"]), f4(r["macro_f1"]), f4(r["weighted_f1"]),
                    fmt_seconds(r["train_seconds_total"]), fmt_seconds(r["train_seconds_per_epoch"]),
                    f"{r['best_epoch'] if r['best_epoch'] is not None else '–'}/"
                    f"{r['epochs_run'] if r['epochs_run'] is not None else '–'}",
                    "–" if r["epochs_to_95pct_best"] is None else str(r["epochs_to_95pct_best"]),
                    f3(r["inference_seconds_per_1000"])])
    return out


def training_blocks(x: Ctx) -> list[dict]:
    blocks = [{"t": "h2", "text": "3. Training and evaluation"}]
    device = next((r["inference_device"] for r in x.rows if r.get("inference_device")), None)
    if x.many:
        blocks.append({"t": "table", "header": ["configuration", "seeds", "params", "accuracy", "macro-F1",
                                                "best epoch", "train s", "infer s/1k"],
                       "rows": [[g["label"], str(g["n"]), fmt_count(g["params_total_mean"]),
                                 _pm(g["accuracy_mean"], g["accuracy_std"]), _pm(g["macro_f1_mean"], g["macro_f1_std"]),
                                 _pm(g["best_epoch_mean"], g["best_epoch_std"], 1),
                                 fmt_seconds(g["train_seconds_total_mean"]), f3(g["inference_seconds_per_1000_mean"])]
                                for g in x.groups if (g["train_fraction"] or 1.0) == 1.0],
                       "caption": f"Test-set results per full-data configuration, mean ± std over seeds ({len(x.rows)} runs; "
                                  "the per-run table is comparison.md)"})
    blocks.append({"t": "table", "header": RESULT_COLUMNS, "rows": result_rows(x),
                   "caption": ("Typical run of each full-data configuration: " if x.many else "")
                   + "Test-set results and costs (train s: total training seconds; best/epochs: epoch of "
                              "the best val macro-F1 / epochs run; to 95%: first epoch within 95% of that best; "
                              "infer s/1k: seconds to classify 1,000 test examples"
                              + (f", on {device}" if device else "") + ")"})
    multi = [g for g in x.groups if g["n"] > 1]
    if multi and not x.many:
        rows = [[g["label"], str(g["n"]), f"{f4(g['accuracy_mean'])} ± {f4(g['accuracy_std'])}",
                 f"{f4(g['macro_f1_mean'])} ± {f4(g['macro_f1_std'])}",
                 f"{g['best_epoch_mean']:.1f} ± {g['best_epoch_std']:.1f}" if g["best_epoch_std"] is not None else "–",
                 f"{fmt_seconds(g['train_seconds_total_mean'])}"] for g in multi]
        blocks.append({"t": "table", "header": ["configuration", "seeds", "accuracy", "macro-F1", "best epoch",
                                                "train s (mean)"], "rows": rows,
                       "caption": "Seed groups: mean ± standard deviation over seeds"})
    if "scores" in x.figures:
        blocks.append({"t": "fig", "file": x.figures["scores"], "width": 88,
                       "caption": "Test accuracy and macro-F1 per configuration; error bars show the standard "
                                  "deviation over seeds where a configuration was run with several seeds."})
    blocks.append({"t": "h3", "text": "Training curves"})
    if "curves_overlay" in x.figures:
        blocks.append({"t": "fig", "file": x.figures["curves_overlay"], "width": 88,
                       "caption": "Validation macro-F1 and loss of every run against the epoch (top) and against "
                                  "wall-clock training time (bottom, log scale). The baseline is a single fit, "
                                  "drawn as one point."})
    if "train_val_curves" in x.figures:
        blocks.append({"t": "fig", "file": x.figures["train_val_curves"], "width": 100,
                       "caption": "Train (solid) vs validation (dashed) macro-F1 and loss per run."})
    blocks += convergence_blocks(x) + stability_blocks(x) + overfitting_blocks(x)
    if "confusion_matrices" in x.figures:
        blocks.append({"t": "fig", "file": x.figures["confusion_matrices"], "width": 92,
                       "caption": "Row-normalised test confusion matrices (class order as in metadata.json; "
                                  "tick labels omitted when there are many classes)."})
    return blocks


def convergence_blocks(x: Ctx) -> list[dict]:
    items = []
    for r in x.narrative_rows:
        conv = r.get("convergence") or {}
        if r["arm"] == "baseline":
            items.append(f"**{r['run']}** has no epochs: one convex fit of {fmt_seconds(r['train_seconds_total'])} s "
                         f"(including the choice of C), validation macro-F1 {f4(r['best_val_macro_f1'])}.")
            continue
        if not conv:
            items.append(f"**{r['run']}**: no history.jsonl, convergence unknown.")
            continue
        secs = conv.get("seconds_to_95pct_best")
        sentence = (f"**{r['run']}** peaked at epoch {conv['best_epoch']} of {conv['epochs']} (val macro-F1 "
                    f"{f4(conv['best_val_macro_f1'])}) and first reached 95% of that at epoch "
                    f"{conv['epochs_to_95pct_best']}" + (f" after {fmt_seconds(secs)} s" if secs is not None else "")
                    + ".")
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
        blocks.append({"t": "p", "text": f"The fine-tuned model needed {a} epoch{'s' if a != 1 else ''} to come within 95% "
                                         f"of its best validation macro-F1, {word} than the {b} of the from-scratch "
                                         "model."})
    return blocks


def stability_blocks(x: Ctx) -> list[dict]:
    items = []
    for g in x.groups:
        if g["n"] > 1 and (g["train_fraction"] or 1.0) == 1.0:
            items.append(f"**{g['label']}** over {g['n']} seeds: test macro-F1 std {f4(g['macro_f1_std'])}, best-epoch "
                         f"std {g['best_epoch_std']:.2f}" if g["best_epoch_std"] is not None else
                         f"**{g['label']}** over {g['n']} seeds: test macro-F1 std {f4(g['macro_f1_std'])}")
    blocks = [{"t": "h3", "text": "Stability"}]
    if items:
        blocks.append({"t": "ul", "items": [i + "." for i in items]})
    else:
        blocks.append({"t": "p", "text": "Every configuration was run with a single seed, so seed-to-seed variance is "
                                         "not measured here; `ftvs study` with several seeds (or repeated "
                                         "`ftvs train ... --seed N`) fills this in."})
    drops = []
    for r in x.narrative_rows:
        conv = r.get("convergence") or {}
        if conv.get("epochs", 0) > 1:
            drops.append(f"**{r['run']}** {f4(conv['max_val_f1_drop'])}")
    if drops:
        blocks.append({"t": "p", "text": "Largest epoch-to-epoch fall of validation macro-F1 within a run (0 means "
                                         "it never fell): " + "; ".join(drops) + "."})
    return blocks


def overfitting_blocks(x: Ctx) -> list[dict]:
    rows, items = [], []
    for r in x.narrative_rows:
        conv = r.get("convergence") or {}
        rows.append([r["run"], f3(r["gap_best_macro_f1"]), f3(r["gap_last_macro_f1"]), f3(r["gap_best_loss"]),
                     f3(r["gap_last_loss"]),
                     "–" if conv.get("val_loss_min_epoch") is None else str(conv["val_loss_min_epoch"])])
        gap = r["gap_last_macro_f1"]
        rise = conv.get("val_loss_rise_after_min")
        rel = rise / conv["val_loss_min"] if rise is not None and conv.get("val_loss_min") else None
        if gap is None:
            continue
        signs = []
        if gap > OVERFIT_GAP:
            signs.append(f"train macro-F1 exceeds validation by {f3(gap)} at the last epoch")
        if rel is not None and rel > LOSS_RISE:
            signs.append(f"validation loss rose {100 * rel:.0f}% above its minimum (epoch {conv['val_loss_min_epoch']})")
        if signs:
            items.append(f"**{r['run']}** overfits: " + " and ".join(signs) + ".")
        else:
            items.append(f"**{r['run']}** shows no clear overfitting (last-epoch macro-F1 gap {f3(gap)}"
                         + (f", validation loss {100 * rel:.0f}% above its minimum" if rel is not None else "") + ").")
    return [{"t": "h3", "text": "Overfitting"},
            {"t": "table", "header": ["run", "F1 gap best", "F1 gap last", "loss gap best", "loss gap last",
                                      "val-loss min epoch"], "rows": rows,
             "caption": "Train − validation gaps at the best and the last epoch (F1 gap > 0 and loss gap < 0: the "
                        "model fits the training data better than unseen data)"},
            {"t": "p", "text": f"Rule used below: a run overfits when its last-epoch macro-F1 gap exceeds "
                               f"{OVERFIT_GAP:.2f} or its validation loss ends more than {100 * LOSS_RISE:.0f}% "
                               "above its minimum."},
            {"t": "ul", "items": items}]


def comparative_blocks(x: Ctx) -> list[dict]:
    blocks = [{"t": "h2", "text": "4. Comparative analysis"}, {"t": "h3", "text": "Who wins, and by how much"}]
    reps = sorted((g for g in x.groups if (g["train_fraction"] or 1.0) == 1.0), key=lambda g: -(g["macro_f1_mean"] or 0))
    ranking = "; ".join(f"{k + 1}. {g['label']} {f4(g['macro_f1_mean'])}" + (f" ± {f4(g['macro_f1_std'])}"
                                                                             if g["macro_f1_std"] else "")
                        for k, g in enumerate(reps))
    blocks.append({"t": "p", "text": f"Ranking of the full-data configurations by test macro-F1 (mean over seeds): "
                                     f"{ranking}."})
    pairs = x.sig.get("pairs") or []
    key_names = {r["run"] for r in (x.ft, x.sc, x.base) if r}
    shown = pairs if len(pairs) <= 6 else [p for p in pairs if p["a"] in key_names and p["b"] in key_names]
    if shown:
        rows = [[p["a"], p["b"], f"{signed(p['accuracy']['diff'])}\n[{signed(p['accuracy']['ci_low'])}, "
                 f"{signed(p['accuracy']['ci_high'])}]", f"{signed(p['macro_f1']['diff'])}\n"
                 f"[{signed(p['macro_f1']['ci_low'])}, {signed(p['macro_f1']['ci_high'])}]",
                 f"{p['mcnemar']['a_only_correct']}/{p['mcnemar']['b_only_correct']}", fmt_p(p["mcnemar"]["p_value"]),
                 fmt_p(p["mcnemar"]["p_holm"]), "yes" if p["significant"] else "no"] for p in shown]
        blocks.append({"t": "table", "header": ["A", "B", "Δ accuracy [95% CI]", "Δ macro-F1 [95% CI]",
                                                "only A / only B right", "McNemar p", "Holm p", "p < 0.05"],
                       "rows": rows,
                       "caption": f"Paired tests on the test set, A − B (A has the higher macro-F1); "
                                  f"95% CIs from a paired bias-corrected percentile bootstrap with {x.sig.get('n_resamples')} "
                                  f"resamples (seed {x.sig.get('seed')}); McNemar's exact test on the accuracy; Holm p "
                                  "adjusts for all pairs"
                                  + ("" if len(shown) == len(pairs) else
                                     f"; {len(shown)} of {len(pairs)} pairs shown, all in comparison.json")})
    p = x.pair(x.ft, x.sc)
    if p:
        d = p["macro_f1"]
        lead = (f"Fine-tuned minus from-scratch macro-F1 is {signed(d['diff'])} ({100 * d['diff']:+.2f} points); the "
                f"95% bootstrap interval [{signed(d['ci_low'])}, {signed(d['ci_high'])}] "
                f"{'excludes' if d['excludes_zero'] else 'includes'} zero. On accuracy the difference is "
                f"{signed(p['accuracy']['diff'])}; {significance_words(p)}. " + verdict(p, "fine-tuned", "from-scratch"))
        blocks.append({"t": "p", "text": lead})
        blocks += why_blocks(x, p)
    elif not (x.ft and x.sc):
        missing = "fine-tuned" if not x.ft else "from-scratch"
        blocks.append({"t": "p", "text": f"No {missing} run was among the inputs, so the central fine-tuning vs. "
                                         "from-scratch comparison cannot be made; add it with "
                                         f"`ftvs train {'finetune' if not x.ft else 'scratch'} ...` and rerun "
                                         "`ftvs compare`."})
    diff = x.c.get("per_class_diff")
    if diff and "per_class_diff" in x.figures:
        cls = diff["classes"]
        top = ", ".join(f"{c['class']} ({signed(c['diff'], 3)})" for c in cls[:3] if c["diff"] > 0)
        bottom = ", ".join(f"{c['class']} ({signed(c['diff'], 3)})" for c in reversed(cls[-3:]) if c["diff"] < 0)
        text = (f"Per class, **{diff['a']}** has the higher test F1 on {diff['a_better']} classes and **{diff['b']}** on "
                f"{diff['b_better']} ({diff['ties']} ties).")
        if top:
            text += f" Largest leads of {diff['a']}: {top}."
        if bottom:
            text += f" Largest leads of {diff['b']}: {bottom}."
        blocks += [{"t": "fig", "file": x.figures["per_class_diff"], "width": 92,
                    "caption": f"Per-class test F1 of {diff['a']} minus {diff['b']}, sorted."},
                   {"t": "p", "text": text}]
    blocks += reference_blocks(x) + cost_blocks(x) + preference_blocks(x) + sensitivity_blocks(x) + insight_blocks(x)
    return blocks


def why_blocks(x: Ctx, p: dict) -> list[dict]:
    """Evidence for the gap between the arms, each item only when its numbers support it."""
    ft, sc = x.ft, x.sc
    items = []
    a, b = ft.get("epochs_to_95pct_best"), sc.get("epochs_to_95pct_best")
    if a and b and a < b:
        items.append(f"Faster start: the pre-trained model was within 95% of its best validation macro-F1 after {a} "
                     f"epoch{'s' if a != 1 else ''}, the from-scratch model after {b}, as expected when the "
                     "language is already encoded and only the task remains to be learned.")
    bv_ft, bv_sc = ft.get("best_val_macro_f1"), sc.get("best_val_macro_f1")
    if bv_ft is not None and bv_sc is not None and bv_ft > bv_sc:
        items.append(f"Higher ceiling: best validation macro-F1 {f4(bv_ft)} vs. {f4(bv_sc)}.")
    g_ft, g_sc = ft.get("gap_last_macro_f1"), sc.get("gap_last_macro_f1")
    if g_ft is not None and g_sc is not None and g_sc > g_ft:
        items.append(f"Better generalisation per unit of training fit: last-epoch train − validation macro-F1 gap "
                     f"{f3(g_ft)} for the fine-tuned model vs. {f3(g_sc)} from scratch.")
    n_train = ft.get("num_train_examples")
    if n_train and ft.get("params_trainable") and sc.get("params_trainable"):
        items.append(f"Data per trainable parameter: {n_train:,} training examples for "
                     f"{ft['params_trainable']:,} trainable parameters (fine-tuned) vs. {sc['params_trainable']:,} "
                     "(from scratch), all of which the from-scratch model must learn from these examples alone.")
    if p["macro_f1"]["diff"] <= 0:
        items.append("The usual advantage of pre-training does not show on this data: a small model trained on the "
                     "task alone is sufficient, which points to a task solvable from surface cues.")
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
        rows.append([r["run"], fmt_seconds(r["train_seconds_total"]), fx(ratio(r["train_seconds_total"],
                                                                               ref["train_seconds_total"])),
                     f3(r["inference_seconds_per_1000"]),
                     fx(ratio(r["inference_seconds_per_1000"], ref["inference_seconds_per_1000"])),
                     fmt_count(r["params_total"]), fx(ratio(r["params_total"], ref["params_total"])),
                     fmt_count(r["params_trainable"]), fmt_bytes(r["size_on_disk_bytes"])])
    blocks = [{"t": "h3", "text": "Cost"},
              {"t": "table", "header": ["run", "train s", f"× {ref['run']}", "infer s/1k", f"× {ref['run']}",
                                        "params", f"× {ref['run']}", "trainable", "disk"], "rows": rows,
               "caption": f"Training, inference and size, with ratios to {ref['run']}"}]
    if "cost" in x.figures:
        blocks.append({"t": "fig", "file": x.figures["cost"], "width": 80,
                       "caption": "Test macro-F1 against training time and against inference time per 1,000 "
                                  "examples (log scales)."})
    return blocks


def preference_blocks(x: Ctx) -> list[dict]:
    ft, sc, base = x.ft, x.sc, x.base
    items = []
    p = x.pair(ft, sc)
    if p:
        d = p["macro_f1"]
        aspects = [("to train", sc["train_seconds_total"], ft["train_seconds_total"], "slower", "faster"),
                   ("at inference", sc["inference_seconds_per_1000"], ft["inference_seconds_per_1000"], "slower",
                    "faster"),
                   ("in parameters", sc["params_total"], ft["params_total"], "larger", "smaller")]
        cheaper, dearer = [], []
        for what, a, b, more, less in aspects:
            phrase = times_phrase(a, b, more, less)
            if phrase:
                (cheaper if a < b else dearer).append(f"{phrase} {what}")
        costs = ", ".join(cheaper + dearer)
        ci = f"{signed(d['diff'])}, CI [{signed(d['ci_low'])}, {signed(d['ci_high'])}]"
        if d["diff"] < 0 and d["excludes_zero"]:
            items.append(f"Here the from-scratch model is significantly better on macro-F1 (fine-tuned minus from-scratch "
                         f"{ci}) and it is {costs}: training from scratch is the better choice on this data.")
        elif d["diff"] <= 0 or not d["excludes_zero"]:
            if cheaper:
                items.append(f"On this data the from-scratch model is the better choice: its macro-F1 is within the "
                             f"confidence interval of the fine-tuned one ({ci}) and it is {', '.join(cheaper)}"
                             + (f" (though {', '.join(dearer)})" if dearer else "") + ".")
            else:
                items.append(f"The two models are indistinguishable on macro-F1 ({ci}), but the from-scratch model is "
                             f"not cheaper on any axis measured ({costs}), so it has no advantage here.")
        else:
            per_point = None
            if ft["train_seconds_total"] and sc["train_seconds_total"]:
                per_point = (ft["train_seconds_total"] - sc["train_seconds_total"]) / (100 * d["diff"])
            sentence = f"Fine-tuning is better by {100 * d['diff']:.2f} macro-F1 points" + (
                f"; the from-scratch model is {costs}." if costs else ".")
            if per_point is not None and per_point > 0:
                sentence += f" Each macro-F1 point of fine-tuning costs {fmt_seconds(per_point)} extra training seconds."
            items.append(sentence)
            items.append("From scratch would be preferred when that accuracy loss is acceptable and the model must be "
                         "small or fast (on-device, high-throughput or latency-bound serving), when no pre-trained "
                         "model covers the language, domain vocabulary or tokenisation, when licensing or data "
                         "governance rules out third-party weights, or when labelled data is plentiful enough to "
                         "close the gap (see the sensitivity analysis).")
    if base:
        for neural in (sc, ft):
            q = x.pair(neural, base)
            if not q:
                continue
            d = q["macro_f1"]
            cheaper = times_phrase(base["train_seconds_total"], neural["train_seconds_total"], "slower", "faster") \
                or "no cheaper"
            ci = f"CI [{signed(d['ci_low'])}, {signed(d['ci_high'])}]"
            who = f"**{neural['run']}** ({arm_label(neural['arm'])})"
            if d["diff"] > 0 and d["excludes_zero"]:
                items.append(f"{who} beats the TF-IDF baseline by {signed(d['diff'])} macro-F1 ({ci}); the baseline is "
                             f"{cheaper} to train.")
            elif d["excludes_zero"]:
                items.append(f"The TF-IDF baseline beats {who} by {signed(-d['diff'])} macro-F1 ({ci} for "
                             f"{neural['run']} minus baseline) and is {cheaper} to train: on this data that transformer "
                             "is not worth training as it was configured.")
            else:
                items.append(f"{who} and the TF-IDF baseline are statistically indistinguishable (difference "
                             f"{signed(d['diff'])}, {ci}) and the baseline is {cheaper} to train: a transformer needs a "
                             "reason beyond accuracy on this data.")
    if not items:
        return []
    return [{"t": "h3", "text": "When would training from scratch be preferred?"}, {"t": "ul", "items": items}]


def sensitivity_blocks(x: Ctx) -> list[dict]:
    sw = x.c.get("sweeps") or {}
    blocks = [{"t": "h3", "text": "Sensitivity to model size and data size"}]
    data, model = sw.get("data_size") or [], sw.get("model_size") or []
    if data and "sweep_data_size" in x.figures:
        blocks.append({"t": "fig", "file": x.figures["sweep_data_size"], "width": 66,
                       "caption": "Test macro-F1 against the number of training examples (nested stratified "
                                  "subsets; mean ± std over seeds)."})
        items = []
        for s in data:
            pts = [q for q in s["points"] if q["num_train_examples"]]
            if len(pts) < 2:
                continue
            lo, hi = pts[0], pts[-1]
            items.append(f"**{s['label']}**: macro-F1 {f4(lo['macro_f1_mean'])} with {lo['num_train_examples']:,} "
                         f"training examples, {f4(hi['macro_f1_mean'])} with {hi['num_train_examples']:,} "
                         f"({signed(hi['macro_f1_mean'] - lo['macro_f1_mean'])}).")
        for cr in sw.get("crossovers") or []:
            items.append(f"Crossover: {cr['leader_below']} leads below {cr['between_examples'][0]:,} training examples "
                         f"and {cr['leader_above']} above {cr['between_examples'][1]:,}.")
        if len(data) > 1 and not sw.get("crossovers"):
            items.append("The data-size curves do not cross within the measured range.")
        blocks.append({"t": "ul", "items": items})
    if model and "sweep_model_size" in x.figures:
        blocks.append({"t": "fig", "file": x.figures["sweep_model_size"], "width": 66,
                       "caption": "Test macro-F1 against the parameter count."})
        items = []
        for s in model:
            pts = s["points"]
            best = max(pts, key=lambda q: q["macro_f1_mean"] or 0)
            items.append(f"**{s['label']}**: {len(pts)} sizes from {fmt_count(pts[0]['params_total'])} to "
                         f"{fmt_count(pts[-1]['params_total'])} parameters; macro-F1 from "
                         f"{f4(pts[0]['macro_f1_mean'])} to {f4(pts[-1]['macro_f1_mean'])}, best at "
                         f"{fmt_count(best['params_total'])} ({f4(best['macro_f1_mean'])})"
                         + (" — the largest size is not the best, a sign of overfitting with this much data."
                            if best is not pts[-1] else "."))
        blocks.append({"t": "ul", "items": items})
    if not data:
        blocks.append({"t": "p", "text": "No data-size sweep was among the inputs (runs tagged with different "
                                         "`train_fraction`). `ftvs study --preset banking77` trains each arm on nested "
                                         "fractions of the training split; rerun `ftvs compare` on its output folder to "
                                         "fill in this analysis."})
    if not model:
        blocks.append({"t": "p", "text": "No model-size sweep was among the inputs (from-scratch presets or several "
                                         "pre-trained models); `ftvs study --preset banking77` includes one."})
    return blocks


def insight_blocks(x: Ctx) -> list[dict]:
    items = []
    fastest = min((r for r in x.rows if r["inference_seconds_per_1000"]), key=lambda r: r["inference_seconds_per_1000"],
                  default=None)
    slowest = max((r for r in x.rows if r["inference_seconds_per_1000"]), key=lambda r: r["inference_seconds_per_1000"],
                  default=None)
    if fastest and slowest and fastest is not slowest:
        items.append(f"Serving cost spans {fx(ratio(slowest['inference_seconds_per_1000'], fastest['inference_seconds_per_1000']))}: "
                     f"{f3(fastest['inference_seconds_per_1000'])} s per 1,000 examples for **{fastest['run']}** vs. "
                     f"{f3(slowest['inference_seconds_per_1000'])} s for **{slowest['run']}**.")
    unfinished = [r["run"] for r in x.narrative_rows if r["arm"] != "baseline" and r["best_epoch"] is not None
                  and r["epochs_run"] and r["best_epoch"] == r["epochs_run"] and r["epochs_run"] > 1]
    if unfinished:
        items.append(f"{len(unfinished)} run{'s' if len(unfinished) > 1 else ''} peaked at the last epoch "
                     f"({', '.join(unfinished)}): the epoch budget, not the model, limited them.")
    early = [r["run"] for r in x.narrative_rows if r.get("stop_reason") and "early" in str(r["stop_reason"])]
    if early:
        items.append(f"Early stopping ended {len(early)} run{'s' if len(early) > 1 else ''} ({', '.join(early)}), "
                     "saving the remaining epoch budget.")
    if x.base and x.winner and x.winner is not x.base:
        gain = x.winner["macro_f1"] - x.base["macro_f1"]
        r = ratio(x.winner["train_seconds_total"], x.base["train_seconds_total"])
        items.append(f"The best model adds {signed(gain)} macro-F1 over the TF-IDF baseline"
                     + (f" for {fx(r)} its training time" if r else "") + ".")
    if x.base and x.winner is x.base:
        items.append(f"The TF-IDF baseline is the best model here (macro-F1 {f4(x.base['macro_f1'])}): word and character "
                     "n-grams capture this task well, so the neural models need more data, epochs or capacity.")
    big = [r for r in x.focus_runs if r["params_total"] and r["params_trainable"] and r["arm"] == "finetune"
           and r["params_trainable"] < r["params_total"]]
    for r in big[:2]:
        items.append(f"**{r['run']}** trains {100 * r['params_trainable'] / r['params_total']:.2f}% of its "
                     f"{fmt_count(r['params_total'])} parameters ({r['method']}), so its optimiser state stays small "
                     "while the frozen base still costs full forward passes.")
    if not items:
        return []
    return [{"t": "h3", "text": "Practical insights"}, {"t": "ul", "items": items}]


def matching_group(x: Ctx, ref: dict) -> dict | None:
    """The full-data configuration a published result speaks about: same arm, and the same method and
    model where the reference names them; the best of several by mean test accuracy."""
    model = str(ref.get("model") or "").lower()
    candidates = [g for g in x.groups if (g["train_fraction"] or 1.0) == 1.0 and g["arm"] == ref.get("arm")
                  and (not ref.get("method") or g["method"] == ref["method"])
                  and (not model or model in str(g["model_name"]).lower().split("/")[-1])
                  and g["accuracy_mean"] is not None]
    return max(candidates, key=lambda g: g["accuracy_mean"], default=None)


def reference_blocks(x: Ctx) -> list[dict]:
    """Published numbers that the study declared (`reference_results`), next to this study's."""
    refs = [r for r in x.c.get("reference_results") or [] if _finite(r.get("test_accuracy"))]
    if not refs:
        return []
    rows = []
    for ref in refs:
        g = matching_group(x, ref)
        ours = _pm(g["accuracy_mean"], g["accuracy_std"]) if g else "not run here"
        rows.append([ref.get("name", "?"), str(ref.get("source", "")), f4(ref["test_accuracy"]),
                     g["label"] if g else "", ours, signed(g["accuracy_mean"] - ref["test_accuracy"]) if g else ""])
    return [{"t": "h3", "text": "Against published results"},
            {"t": "table", "header": ["published", "source", "accuracy", "our configuration", "our accuracy",
                                      "ours − published"], "rows": rows,
             "caption": "Test accuracy reported elsewhere for the same data set, next to the matching configuration of "
                        "this study (same arm, and method/model where named; mean ± std over seeds). Splits, "
                        "preprocessing and budgets differ between studies, so read gaps of a point or less as ties."}]


def appendix_blocks(x: Ctx) -> list[dict]:
    items = [f"`{r['run']}`: {r['path']}" for r in x.narrative_rows]
    if x.many:
        items.append(f"… and {len(x.rows) - len(x.narrative_rows)} more runs (seeds and sweep points), listed in "
                     "comparison.json.")
    return [{"t": "h3", "text": "Runs and files"},
            {"t": "p", "text": "Numbers above come from `comparison.json` (written by `ftvs compare`), which also holds "
                               "every pairwise test, the seed groups, per-run histories and the full side-by-side table "
                               "(`comparison.md`)."},
            {"t": "ul", "items": items}]


def build_blocks(comparison: dict) -> list[dict]:
    x = Ctx(comparison)
    blocks = title_blocks(x) + model_blocks(x) + dataset_blocks(x) + training_blocks(x) + comparative_blocks(x)
    blocks += calibration_blocks(x) + appendix_blocks(x)
    return [b for b in blocks if b]


def report_title(comparison: dict) -> str:
    blocks = title_blocks(Ctx(comparison))
    return blocks[0]["text"] if blocks else "ftvs report"


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
