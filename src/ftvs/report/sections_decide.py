"""The report's answer to "what should I deploy?": the Recommendation box under the title and the
"Deployment decision" section (constraints table, Pareto fronts, learning curves), all from comparison.json
`recommendation`, `pareto` and `learning_curves` (`ftvs.comparison.decide`,
`ftvs.comparison.learning_curve`)."""

from __future__ import annotations

from ftvs import fmt
from ftvs.comparison.decide import CONSTRAINTS
from ftvs.comparison.learning_curve import POOR_FIT_RMSE
from ftvs.fmt import f4, signed
from ftvs.report.context import Ctx, arm_label, titled_list

NOT_MEASURED = "not measured"


def _ms(v) -> str:
    return NOT_MEASURED if v is None else f"{v:.2f} ms"


def _limit(name: str, v) -> str:
    """A constraint's value or limit in its unit: '12.00 ms', '1.20M', '0.8000'."""
    if v is None:
        return NOT_MEASURED
    unit = CONSTRAINTS[name][3]
    if name == "max_params":
        return fmt.count(v)
    if name == "min_macro_f1":
        return f4(v)
    return f"{v:.3g} {unit}" if unit != "ms" else _ms(v)


def _constraint_text(name: str, limit) -> str:
    _, kind, _, _, what = CONSTRAINTS[name]
    return f"{what} {'≤' if kind == 'max' else '≥'} {_limit(name, limit)}"


def _fail_text(f: dict) -> str:
    name = f["constraint"]
    got = NOT_MEASURED if f["value"] is None else "it has " + _limit(name, f["value"])
    return f"{_constraint_text(name, f['limit'])} ({got})"


def _pick_line(p: dict) -> str:
    lat = p.get("latency_p50_ms")
    lat_text = (
        f"batch-1 latency {_ms(lat)} (p95 {_ms(p.get('latency_p95_ms'))})"
        if lat is not None
        else "latency not measured"
    )
    return (
        f"**Deploy: {p['label']}** ({arm_label(p['arm'])}, typical seed **{p['run']}**): macro-F1 "
        f"{fmt.pm(p['macro_f1'], p.get('macro_f1_std'))}, {lat_text}, {fmt.count(p.get('params_total'))} "
        f"parameters, {fmt.fixed(p.get('disk_mb'), 1)} MB on disk."
    )


def _why_line(rec: dict) -> str:
    cons = rec["constraints"]
    parts = []
    if rec["binding"]:
        names = ", ".join(_constraint_text(k, cons[k]) for k in rec["binding"])
        parts.append(
            f"{names} rules out **{rec['unconstrained']}** (the pick without constraints); this is the "
            "best choice among the configurations meeting every constraint"
        )
    tie = rec.get("tie")
    if tie:
        cost = {"latency_p50_ms": "batch-1 latency", "throughput_s_per_1k": "batch-64 time"}.get(
            tie["cost"], "inference time"
        )
        lo, hi = tie["macro_f1_ci"]
        parts.append(
            f"the paired test does not separate it from the more accurate **{tie['with']}** (McNemar "
            f"Holm-adjusted p = {fmt.p_value(tie['p_holm'])}; it trails by {f4(tie['macro_f1_diff'])} "
            f"macro-F1, 95% CI [{signed(lo)}, {signed(hi)}]) and it takes "
            f"{fmt.times(tie['cost_ratio'])} the {cost}"
        )
    if parts:
        return "Why: " + "; ".join(parts) + "."
    if cons:
        given = "; ".join(_constraint_text(k, v) for k, v in cons.items())
        return f"Why: the most accurate configuration, and it meets every constraint ({given})."
    return (
        "Why: the most accurate configuration (no constraints given; `--max_latency_ms` and others set them)."
    )


def _cost_line(rec: dict) -> str:
    g = rec.get("gives_up")
    if not g:
        return "It is the most accurate configuration measured: nothing is given up."
    parts = [f"macro-F1 {signed(g['macro_f1_diff'])}"]
    for key, what in (
        ("latency_p50_ms_ratio", "batch-1 latency"),
        ("throughput_s_per_1k_ratio", "batch-64 time"),
        ("params_total_ratio", "parameters"),
        ("train_seconds_total_ratio", "training time"),
    ):
        if g.get(key) is not None:
            parts.append(f"{fmt.times(g[key])} the {what}")
    return f"Against the most accurate, **{g['than']}**: " + ", ".join(parts) + "."


def outlook_line(lc: dict) -> str:
    """The data-size outlook: where from scratch would reach the fine-tuned score (an extrapolation)."""
    reach = (lc or {}).get("reach") or []
    if not reach:
        if (lc or {}).get("fits"):
            return "Data outlook: learning curves fitted, but no from-scratch and fine-tuned pair to compare."
        return (
            "Data outlook: no data-size sweep with 3+ sizes among the runs (`ftvs study` with "
            "`sweeps.data_size.fractions`), so how much more labelled data would change the answer is not "
            "estimated."
        )
    return "Data outlook: " + "; ".join(_reach_text(r) for r in reach) + "."


def _n(v) -> str:
    return "beyond" if v is None else f"{v:,.0f}"


def _reach_text(r: dict) -> str:
    head = f"{r['label']} reaches {r['target_label']}'s macro-F1 {f4(r['target_macro_f1'])}"
    if r["status"] == "measured":
        return f"{head} already at {r['examples']:,} measured training examples (not an extrapolation)"
    ci = ""
    if r.get("ci"):
        lo, hi = r["ci"]
        ci = f", 95% CI {_n(lo)} to {_n(hi)}" + (" (the upper end beyond 10×)" if hi is None else "")
    if r["status"] == "poor fit":
        return (
            f"{r['label']} versus {r['target_label']}'s macro-F1 {f4(r['target_macro_f1'])}: not estimated, "
            "the power law does not follow its measured curve (see Learning curves)"
        )
    if r["status"] == "beyond":
        return (
            f"{r['label']} would not reach {r['target_label']}'s macro-F1 {f4(r['target_macro_f1'])} within "
            f"10× the largest size measured ({r['largest_measured']:,} examples): beyond "
            f"{r['horizon']:,.0f}{ci} (an extrapolation)"
        )
    return f"{head} at about {r['examples']:,.0f} labelled examples{ci} (an extrapolation of the fit)"


def recommendation_blocks(x: Ctx) -> list[dict]:
    """The 3-5 line box at the top of the report."""
    rec = x.c.get("recommendation")
    if not rec:
        return []
    if rec.get("pick"):
        lines = [_pick_line(rec["pick"]), _why_line(rec), _cost_line(rec)]
    else:
        cons = "; ".join(_constraint_text(k, v) for k, v in rec["constraints"].items())
        lines = [f"**No configuration meets the constraints** ({cons})."]
        closest = rec.get("closest")
        if closest:
            lines.append(
                f"Closest: **{closest['label']}**, which fails "
                + "; ".join(_fail_text(f) for f in closest["fails"])
                + "."
            )
    lines.append(outlook_line(x.c.get("learning_curves")))
    return [{"t": "box", "title": "Recommendation", "lines": lines}]


def recommendation_text(comparison: dict) -> str:
    """The Recommendation box as terminal lines (what `ftvs compare` prints)."""
    box = recommendation_blocks(Ctx(comparison))
    if not box:
        return ""
    return "\n".join(["Recommendation:"] + ["  " + line.replace("**", "") for line in box[0]["lines"]])


def _candidates_table(rec: dict) -> dict:
    rows = []
    for c in rec["candidates"]:
        verdict = "meets all" if c["meets"] else "fails " + ", ".join(f["constraint"] for f in c["fails"])
        if rec.get("pick") and c["label"] == rec["pick"]["label"]:
            verdict = "**pick** (" + verdict + ")"
        rows.append(
            [
                c["label"],
                fmt.pm(c["macro_f1"], c.get("macro_f1_std")),
                fmt.fixed(c.get("latency_p50_ms"), 2, missing=NOT_MEASURED),
                fmt.fixed(c.get("latency_p95_ms"), 2, missing=NOT_MEASURED),
                fmt.fixed(c.get("throughput_s_per_1k"), 3, missing=NOT_MEASURED),
                fmt.count(c.get("params_total")),
                fmt.fixed(c.get("disk_mb"), 1),
                fmt.seconds(c.get("train_seconds_total")),
                verdict,
            ]
        )
    return {
        "t": "table",
        "caption": "Deployment candidates (full-data configurations, means over seeds): the constraints "
        "checked against them",
        "header": [
            "configuration",
            "macro-F1",
            "p50 ms (batch 1)",
            "p95 ms",
            "s/1k (batch 64)",
            "params",
            "disk MB",
            "train s",
            "constraints",
        ],  # fmt: skip
        "rows": rows,
    }


def _pareto_items(x: Ctx) -> list[str]:
    items = []
    for axis, what in (("inference", "inference cost"), ("training", "training cost")):
        data = (x.c.get("pareto") or {}).get(axis) or {}
        if not data.get("points"):
            continue
        dominated = [f"{p['label']} (by {p['dominated_by']})" for p in data["points"] if p["dominated_by"]]
        rest = f"; dominated: {', '.join(dominated)}" if dominated else "; no configuration is dominated"
        items.append(
            f"Macro-F1 vs {what}: the front is " + ", ".join(f"**{n}**" for n in data["front"]) + rest + "."
        )
    return items


def _fit_items(lc: dict) -> list[str]:
    items = []
    for f in lc.get("fits") or []:
        iv = f.get("intervals") or {}

        def par(k, iv=iv, f=f):
            lo_hi = iv.get(k)
            return f"{f[k]:.3g}" + (f" [{lo_hi[0]:.3g}, {lo_hi[1]:.3g}]" if lo_hi else "")

        spread = (
            f"; 95% bootstrap intervals over seeds, {f['n_bootstrap']} resamples)"
            if iv
            else "; one seed per size: no interval)"
        )
        items.append(
            f"**{f['label']}**: ceiling a = {par('a')}, b = {par('b')}, c = {par('c')} (fit RMSE "
            f"{f['rmse']:.4f} over {f['n_points']} runs at {len(f['sizes'])} sizes"
            + spread
            + (f"; **poor fit** (RMSE above {POOR_FIT_RMSE}): not extrapolated" if f.get("poor_fit") else "")
        )
    return items


def decision_blocks(x: Ctx) -> list[dict]:
    """The "Deployment decision" section."""
    rec = x.c.get("recommendation")
    if not rec:
        return []
    blocks = [
        {"t": "h2", "text": "Deployment decision"},
        {"t": "p", "text": f"Rule: {rec['rule']}."},
        _candidates_table(rec),
    ]
    lat = next((r for r in x.rows if r.get("latency_device")), None)
    if lat:
        blocks.append(
            {
                "t": "note",
                "text": "Latency is timed the same way for every run, raw text to label, on "
                f"{lat['latency_device']} (precision per run in comparison.json): batch 1 (p50/p95 over 64 "
                "texts) and batch 64 (seconds per 1,000 texts). A run evaluated before this was measured "
                "shows “not measured”: `ftvs evaluate RUN_DIR` re-measures it.",
            }
        )
    blocks += x.figure(
        "pareto",
        90,
        "Pareto fronts: test macro-F1 against inference and training cost; hollow grey points are "
        "dominated (another configuration is at least as accurate for no more cost).",
    )
    blocks += titled_list("Pareto fronts", _pareto_items(x))
    lc = x.c.get("learning_curves") or {}
    blocks += titled_list("Learning curves", _fit_items(lc) + [outlook_line(lc)])
    return blocks
