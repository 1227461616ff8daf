"""Distillation in a comparison: each distilled student's group beside its teacher's group and the plain
from-scratch group of the same data (comparison.json's `distillation`, the report's "Distillation").

A student is a from-scratch run trained with `--teacher` (`Run.method == "distilled"`); its teacher is
found by the run folder its config names. The plain from-scratch group is the undistilled scratch group of
the same train fraction, the same model size first. The share of the gap closed is
(student - scratch) / (teacher - scratch) of the mean test score (None when the teacher is not better).
"""

from __future__ import annotations

from pathlib import Path

from ftvs.comparison.significance import find_pair

DISTILLED = "distilled"  # Run.method of a student
ROLES = ("teacher", "student", "scratch")
SHOWN = ("macro_f1", "accuracy", "inference_seconds_per_1000", "train_seconds_total")
PER_RUN = ("params_total", "size_on_disk_bytes")


def _key(path) -> str:
    return str(Path(path).resolve()) if path else ""


def _group_of(groups: list[dict], run_name: str) -> dict | None:
    return next((g for g in groups if run_name in g["runs"]), None)


def _plain_scratch(groups: list[dict], student: dict) -> dict | None:
    plain = [
        g
        for g in groups
        if g["arm"] == "scratch"
        and g["method"] != DISTILLED
        and g["train_fraction"] == student["train_fraction"]
    ]
    same_size = [g for g in plain if g["model_name"] == student["model_name"]]
    return (same_size or plain or [None])[0]


def _side(group: dict, rows_by_name: dict) -> dict:
    first = rows_by_name[group["runs"][0]]
    side = {"label": group["label"], "runs": group["runs"], "n": group["n"]}
    for k in SHOWN:
        side[k], side[f"{k}_std"] = group.get(f"{k}_mean"), group.get(f"{k}_std")
    return side | {k: first.get(k) for k in PER_RUN}


def _gap_closed(sides: dict, key: str) -> float | None:
    t, s, p = (sides[r][key] if sides.get(r) else None for r in ROLES)
    if None in (t, s, p) or not t > p:
        return None
    return (s - p) / (t - p)


def _pair(sig: dict, rows_by_name: dict, student: dict, other: dict | None) -> dict | None:
    """The paired test of the student's first run against the other group's run of the same seed."""
    if not other:
        return None
    a = student["runs"][0]
    seed = rows_by_name[a].get("seed")
    b = next((r for r in other["runs"] if rows_by_name[r].get("seed") == seed), other["runs"][0])
    p = find_pair(sig, a, b)
    if p is None:
        return None
    return {"a": a, "b": b, "macro_f1": p["macro_f1"], "accuracy": p["accuracy"], "mcnemar": p["mcnemar"],
            "significant": p.get("significant")}  # fmt: skip


def distillation(runs, rows: list[dict], groups: list[dict], sig: dict) -> list[dict]:
    """One record per distilled student group (empty when the comparison has no student)."""
    rows_by_name = {r["run"]: r for r in rows}
    by_path = {_key(r.path): r.name for r in runs}
    by_name = {r.name: r for r in runs}
    out = []
    for g in groups:
        if g["method"] != DISTILLED:
            continue
        run = by_name[g["runs"][0]]
        record = (run.config.get("resolved") or {}).get("distill") or {}
        teacher_name = by_path.get(_key(run.config.get("teacher")))
        teacher = _group_of(groups, teacher_name) if teacher_name else None
        scratch = _plain_scratch(groups, g)
        sides = {"student": _side(g, rows_by_name)}
        for role, grp in (("teacher", teacher), ("scratch", scratch)):
            sides[role] = _side(grp, rows_by_name) if grp else None
        out.append(
            {
                **sides,
                "teacher_run_dir": run.config.get("teacher"),
                "teacher_arm": record.get("teacher_arm"),
                "alpha": record.get("alpha"),
                "temperature": record.get("temperature"),
                "num_labelled": record.get("num_labelled"),
                "num_unlabeled": record.get("num_unlabeled"),
                "teacher_logit_seconds": record.get("seconds"),
                "gap_closed_macro_f1": _gap_closed(sides, "macro_f1"),
                "gap_closed_accuracy": _gap_closed(sides, "accuracy"),
                "vs_scratch": _pair(sig, rows_by_name, g, scratch),
                "vs_teacher": _pair(sig, rows_by_name, g, teacher),
                "arrows": [  # teacher run -> student run, for the cost/quality figure
                    [by_path.get(_key(by_name[s].config.get("teacher"))), s]
                    for s in g["runs"]
                    if by_path.get(_key(by_name[s].config.get("teacher")))
                ],
            }
        )
    return out
