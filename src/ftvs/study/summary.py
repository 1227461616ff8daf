"""What a study found: per-arm summaries over seeds, the two sweeps, the crossover, and the terminal summary.

`collect` writes them into the registry (study.json) from the finished runs' metrics.json; compare and
report read them from there.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ftvs.aggregate import crossovers as aggregate_crossovers
from ftvs.aggregate import mean_std
from ftvs.fmt import clock, pm
from ftvs.rundir import read_metrics
from ftvs.study.config import SIZE_KEYS, model_dims, own_size_name
from ftvs.study.plan import frac


def run_results(run_dir: Path) -> dict:
    """The registry's `results` of a finished run, from its metrics.json."""
    m = read_metrics(run_dir)
    test = m.get("test") or {}
    gap = (m.get("train_val_gap") or {}).get("best") or {}
    training = m.get("training") or {}
    return {
        "test_accuracy": test.get("accuracy"),
        "test_macro_f1": test.get("macro_f1"),
        "test_weighted_f1": test.get("weighted_f1"),
        "best_val_macro_f1": (m.get("best_val") or {}).get("macro_f1"),
        "best_val_accuracy": (m.get("best_val") or {}).get("accuracy"),
        "train_val_gap_macro_f1": gap.get("macro_f1"),
        "train_val_gap_accuracy": gap.get("accuracy"),
        "params_total": (m.get("params") or {}).get("total"),
        "params_trainable": (m.get("params") or {}).get("trainable"),
        "train_seconds": training.get("seconds_total"),
        "epochs_run": training.get("epochs_run"),
        "best_epoch": training.get("best_epoch"),
        "stop_reason": training.get("stop_reason"),
        "num_test_examples": m.get("num_test_examples"),
        "inference_seconds_per_1000": (m.get("inference") or {}).get("seconds_per_1000"),
    }


def result_text(e: dict) -> str:
    r = e.get("results") or {}
    if r.get("test_accuracy") is None:
        return "no results"
    return f"test accuracy {r['test_accuracy']:.4f}, macro-F1 {r['test_macro_f1']:.4f}"


# --------------------------------------------------------------------------------------------------
# Summaries and sweeps in the registry
# --------------------------------------------------------------------------------------------------


def collect(reg: dict, cfg: dict) -> None:
    """Fill the registry's `summary`, `sweeps` and `seconds_wall_runs` from its completed runs."""
    runs = [reg["runs"][r] for r in reg["order"]]
    done = [r for r in runs if r["state"] == "completed" and r.get("results")]
    reg["summary"] = group_runs(
        [r for r in done if r["train_fraction"] >= 1 and r.get("size") is None], ("arm_name",)
    )
    sweeps = {}
    ds = cfg["sweeps"].get("data_size")
    if ds:
        rows = [
            _data_size_row(r)
            for r in done
            if r.get("size") is None
            and r["arm_name"] in ds["arms"]
            and r["train_fraction"] in ds["fractions"]
        ]
        sweeps["data_size"] = rows
        sweeps["data_size_summary"] = group_sweep(rows)
        sweeps["crossover"] = crossovers(sweeps["data_size_summary"])
    ms = cfg["sweeps"].get("model_size")
    if ms:
        rows = [
            _model_size_row(r, ms) for r in done if r["arm_name"] == ms["arm"] and r["train_fraction"] >= 1
        ]
        rows.sort(key=lambda x: (x["params_total"] or 0, x["seed"]))
        sweeps["model_size"] = rows
        sweeps["model_size_summary"] = group_model_size(rows)
    reg["sweeps"] = sweeps
    reg["seconds_wall_runs"] = sum(r.get("seconds_wall") or 0 for r in runs)


def _data_size_row(r: dict) -> dict:
    return {
        "arm": r["arm"],
        "arm_name": r["arm_name"],
        "method": r["method"],
        "model": r["model"],
        "train_fraction": r["train_fraction"],
        "num_train_examples": r.get("num_train_examples"),
        "seed": r["seed"],
        "run_id": r["id"],
        "run_dir": r["run_dir"],
        "test_macro_f1": r["results"]["test_macro_f1"],
        "test_accuracy": r["results"]["test_accuracy"],
        "best_val_macro_f1": r["results"].get("best_val_macro_f1"),
    }


def _model_size_row(r: dict, ms: dict) -> dict:
    return {
        "arm_name": r["arm_name"],
        "size": r.get("size") or own_size_name(ms, r["config"]),
        **model_dims(r["config"]),
        "params_total": r["results"]["params_total"],
        "seed": r["seed"],
        "run_id": r["id"],
        "run_dir": r["run_dir"],
        "test_macro_f1": r["results"]["test_macro_f1"],
        "test_accuracy": r["results"]["test_accuracy"],
        "best_val_macro_f1": r["results"].get("best_val_macro_f1"),
        "train_val_gap_macro_f1": r["results"].get("train_val_gap_macro_f1"),
        "train_val_gap_accuracy": r["results"].get("train_val_gap_accuracy"),
    }


def group_runs(runs: list[dict], keys: tuple[str, ...]) -> list[dict]:
    groups: dict = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for members in groups.values():
        first = members[0]
        row = {
            "arm": first["arm"],
            "arm_name": first["arm_name"],
            "method": first["method"],
            "model": first["model"],
            "n": len(members),
            "seeds": [m["seed"] for m in members],
            "num_train_examples": first.get("num_train_examples"),
            "params_total": first["results"].get("params_total"),
        }
        for metric in ("test_accuracy", "test_macro_f1", "train_seconds", "train_val_gap_macro_f1"):
            mean, std = mean_std(m["results"].get(metric) for m in members)
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        out.append(row)
    return out


def group_sweep(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["arm_name"], r["train_fraction"]), []).append(r)
    out = []
    arm_order = list(dict.fromkeys(r["arm_name"] for r in rows))
    for (arm_name, fraction), members in sorted(
        groups.items(), key=lambda kv: (arm_order.index(kv[0][0]), kv[0][1])
    ):
        first = members[0]
        row = {
            "arm": first["arm"],
            "arm_name": arm_name,
            "method": first["method"],
            "model": first["model"],
            "train_fraction": fraction,
            "num_train_examples": statistics.mean(m["num_train_examples"] for m in members)
            if all(m.get("num_train_examples") for m in members)
            else None,
            "n": len(members),
        }
        for metric in ("test_macro_f1", "test_accuracy"):
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(m[metric] for m in members)
        out.append(row)
    return out


def group_model_size(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["size"], []).append(r)
    out = []
    for size, members in groups.items():
        first = members[0]
        row = {
            "arm_name": first["arm_name"],
            "size": size,
            **{k: first[k] for k in ("preset", *SIZE_KEYS)},
            "params_total": first["params_total"],
            "n": len(members),
        }
        for metric in ("test_macro_f1", "test_accuracy", "train_val_gap_macro_f1", "train_val_gap_accuracy"):
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(m[metric] for m in members)
        out.append(row)
    return sorted(out, key=lambda x: x["params_total"] or 0)


def crossovers(summary: list[dict]) -> list[dict]:
    """The data-size sweep's crossovers, by the one definition in `ftvs.aggregate.crossovers` (the same
    that `ftvs compare` puts in the report): for every fine-tuned arm against every other arm."""
    curves: dict = {}
    for row in summary:
        curve = curves.setdefault(
            row["arm_name"], {"label": row["arm_name"], "arm": row["arm"], "points": []}
        )
        curve["points"].append(
            {
                "num_train_examples": row["num_train_examples"],
                "train_fraction": row["train_fraction"],
                "mean": row["test_macro_f1_mean"],
                "std": row["test_macro_f1_std"],
            }
        )
    return [
        pair
        for pair in aggregate_crossovers(list(curves.values()))
        if pair["a_arm"] == "finetune" and pair["b_arm"] != "finetune"
    ]


# --------------------------------------------------------------------------------------------------
# Terminal summary
# --------------------------------------------------------------------------------------------------


def _table(rows: list[list[str]], right=()) -> str:
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append(
            "  ".join(
                c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))
            ).rstrip()
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_summary(reg: dict) -> str:
    runs = [reg["runs"][r] for r in reg.get("order", [])]
    n_done = sum(r["state"] == "completed" for r in runs)
    n_failed = sum(r["state"] == "failed" for r in runs)
    wall = sum(r.get("seconds_wall") or 0 for r in runs)
    out = [
        f"study {reg['name']} ({reg.get('state')}): {len(runs)} runs, {n_done} completed, {n_failed} failed, "
        f"{clock(wall)} of run time -> {reg.get('study_dir')}",
        "",
        _runs_table(runs),
    ]
    for r in runs:
        if r["state"] == "failed":
            out.append(f"  failed {r['id']}: {r.get('error')} (log {r['log']})")
    summary = reg.get("summary") or []
    if summary and any(s["n"] > 1 for s in summary):
        out += ["", "main results (mean ± std over seeds):", _main_table(summary)]
    sweeps = reg.get("sweeps") or {}
    if sweeps.get("data_size_summary"):
        out += ["", "data-size sweep (test macro-F1):", _data_size_table(sweeps["data_size_summary"])]
        for c in sweeps.get("crossover") or []:
            first = (c["crossings"] or [None])[0]
            where = (
                f"at ~{first['interpolated_examples']:,.0f} train examples"
                if first
                else "not within the measured sizes"
            )
            out.append(f"  {c['b']} catches up with {c['a']} {where}")
    if sweeps.get("model_size_summary"):
        out += ["", "model-size sweep (from scratch):", _model_size_table(sweeps["model_size_summary"])]
    st = (reg.get("stages") or {}).get("compare")
    if st:
        out.append("")
        out.append(
            f"compare: {st.get('state')}"
            + (f" -> {st['out']}" if st.get("state") == "completed" else "")
            + (f" ({st['error']})" if st.get("error") else "")
        )
        if st.get("report"):
            out.append(f"report: {', '.join(st['report'])}")
    return "\n".join(out)


def _runs_table(runs: list[dict]) -> str:
    rows = [["run", "state", "epochs", "time", "train ex", "test acc", "macro-F1", "params"]]
    for r in runs:
        res = r.get("results") or {}
        params = res.get("params_total")
        rows.append(
            [
                r["id"],
                r["state"],
                str(r.get("epochs_done") or "-"),
                clock(r.get("seconds_wall")),
                f"{r['num_train_examples']:,}" if r.get("num_train_examples") else "-",
                f"{res['test_accuracy']:.4f}" if res.get("test_accuracy") is not None else "-",
                f"{res['test_macro_f1']:.4f}" if res.get("test_macro_f1") is not None else "-",
                (f"{params / 1e6:.2f}M" if params >= 1e5 else f"{params:,}") if params else "-",
            ]
        )
    return _table(rows, right={2, 3, 4, 5, 6, 7})


def _main_table(summary: list[dict]) -> str:
    rows = [["arm", "model", "n", "test accuracy", "test macro-F1"]]
    for s in summary:
        rows.append(
            [
                s["arm_name"],
                f"{s['model']}{' ' + s['method'] if s.get('method') and s['arm'] == 'finetune' else ''}",
                str(s["n"]),
                pm(s["test_accuracy_mean"], s["test_accuracy_std"], missing="-"),
                pm(s["test_macro_f1_mean"], s["test_macro_f1_std"], missing="-"),
            ]
        )
    return _table(rows, right={2})


def _data_size_table(ds_summary: list[dict]) -> str:
    fractions = sorted({s["train_fraction"] for s in ds_summary})
    arms = list(dict.fromkeys(s["arm_name"] for s in ds_summary))
    cell = {(s["arm_name"], s["train_fraction"]): s for s in ds_summary}
    sizes = {s["train_fraction"]: s["num_train_examples"] for s in ds_summary if s["num_train_examples"]}
    head = ["arm"] + [frac(f) + (f" ({int(sizes[f]):,} ex)" if f in sizes else "") for f in fractions]
    rows = [head]
    for a in arms:
        rows.append(
            [a]
            + [
                pm(cell[(a, f)]["test_macro_f1_mean"], cell[(a, f)]["test_macro_f1_std"], missing="-")
                if (a, f) in cell
                else "-"
                for f in fractions
            ]
        )
    return _table(rows, right=set(range(1, len(head))))


def _model_size_table(ms_summary: list[dict]) -> str:
    rows = [["size", "layers", "width", "params", "n", "test macro-F1", "train-val gap (macro-F1)"]]
    for s in ms_summary:
        rows.append(
            [
                s["size"],
                str(s["n_layer"]),
                str(s["n_embd"]),
                f"{s['params_total']:,}" if s["params_total"] else "-",
                str(s["n"]),
                pm(s["test_macro_f1_mean"], s["test_macro_f1_std"], missing="-"),
                pm(s["train_val_gap_macro_f1_mean"], s["train_val_gap_macro_f1_std"], missing="-"),
            ]
        )
    return _table(rows, right={1, 2, 3, 4})
