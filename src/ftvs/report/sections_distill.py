"""The report's "Distillation" subsection: each distilled student beside its teacher and the plain
from-scratch model (comparison.json's `distillation`, computed by `ftvs.comparison.distill`)."""

from __future__ import annotations

from ftvs import fmt
from ftvs.report.context import times_phrase

ROLE_NAMES = {"teacher": "teacher", "student": "distilled student", "scratch": "plain from scratch"}


def _pct(x) -> str:
    return fmt.MISSING if x is None else f"{100 * x:.0f}%"


def _test_sentence(what: str, p: dict | None) -> str:
    if not p:
        return ""
    d = p["macro_f1"]
    verdict = "significant" if p.get("significant") else "not significant"
    return (
        f" Student − {what}: macro-F1 {fmt.signed(d['diff'])} (95% CI {fmt.signed(d['ci_low'])} to "
        f"{fmt.signed(d['ci_high'])}), accuracy {fmt.signed(p['accuracy']['diff'])}; McNemar "
        f"p = {fmt.p_value(p['mcnemar']['p_value'])} ({verdict}, runs {p['a']} and {p['b']})."
    )


def _table(d: dict) -> dict:
    rows = []
    for role in ("teacher", "student", "scratch"):
        s = d.get(role)
        if not s:
            continue
        rows.append([
            ROLE_NAMES[role], s["label"], fmt.pm(s["macro_f1"], s["macro_f1_std"]),
            fmt.pm(s["accuracy"], s["accuracy_std"]), fmt.fixed(s["inference_seconds_per_1000"], 3),
            fmt.count(s["params_total"]), fmt.nbytes(s["size_on_disk_bytes"]),
            fmt.seconds(s["train_seconds_total"]),
        ])  # fmt: skip
    return {
        "t": "table",
        "header": [
            "role",
            "configuration",
            "macro-F1",
            "accuracy",
            "infer s/1k",
            "params",
            "disk",
            "train s",
        ],
        "rows": rows,
        "caption": "Teacher, distilled student and plain from-scratch model on the same test split "
        "(mean ± std over seeds; the student's training time includes the teacher's logits)",
    }


def _paragraph(d: dict) -> str:
    st, sc, te = d["student"], d.get("scratch"), d.get("teacher")
    text = (
        f"{st['label']} learned from {te['label'] if te else d.get('teacher_run_dir')}'s probabilities "
        f"(loss {fmt.fixed(d.get('alpha'), 2)} × cross-entropy + {fmt.fixed(1 - (d.get('alpha') or 0), 2)} × "
        f"T² × KL at temperature T = {fmt.fixed(d.get('temperature'), 1)}) on "
        f"{fmt.count(d.get('num_labelled'))} labelled and {fmt.count(d.get('num_unlabeled'))} unlabeled "
        "training texts (the unlabeled ones with the teacher's term only)."
    )
    if sc and te:
        closed = d.get("gap_closed_macro_f1")
        text += (
            f" Test macro-F1: student {fmt.f4(st['macro_f1'])}, plain from scratch {fmt.f4(sc['macro_f1'])}, "
            f"teacher {fmt.f4(te['macro_f1'])}"
        )
        text += (
            f": the student closes {_pct(closed)} of the scratch→teacher gap (accuracy: "
            f"{_pct(d.get('gap_closed_accuracy'))})."
            if closed is not None
            else "; the teacher is not better than plain from scratch here, so there is no gap to close."
        )
    text += _test_sentence("plain from scratch", d.get("vs_scratch")) + _test_sentence(
        "teacher", d.get("vs_teacher")
    )
    cost = []
    if sc:
        vs = times_phrase(
            st["inference_seconds_per_1000"], sc["inference_seconds_per_1000"], "slower", "faster"
        )
        cost.append(f"{vs} than plain from scratch" if vs else None)
    if te:
        vs = times_phrase(
            st["inference_seconds_per_1000"], te["inference_seconds_per_1000"], "slower", "faster"
        )
        cost.append(f"{vs} than its teacher" if vs else None)
        size = times_phrase(te["params_total"], st["params_total"], "fewer", "more")
        cost.append(f"{size} parameters than the teacher" if size else None)
    cost = [c for c in cost if c]
    if cost:
        text += f" At inference the student is {', '.join(cost)}."
    return text


def distill_blocks(x) -> list[dict]:
    """Blocks for `ftvs.report.builder.build_blocks` (`x` is its `Ctx`); none without a student."""
    records = x.c.get("distillation") or []
    if not records:
        return []
    blocks = [{"t": "h3", "text": "Distillation"}]
    for d in records:
        blocks += [{"t": "p", "text": _paragraph(d)}, _table(d)]
    if "cost" in x.figures:
        note = (
            "In the quality-vs-cost figure a distilled student is a diamond, with an arrow from its teacher."
        )
        blocks.append({"t": "p", "text": note})
    return blocks
