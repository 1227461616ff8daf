"""The tuning behind the compared runs: what each arm's search got and found, from the study's `tuning`
record (study.json, written by `ftvs.study.tuning`) and each search's tune.json (history, importance)."""

from __future__ import annotations

from pathlib import Path

from ftvs.fileio import read_json


def tuning(studies: list[dict]) -> dict | None:
    """{"arms": [...], "equal_budget": bool} for the finished searches of the compared studies; None
    when no compared run comes from a tuned study."""
    arms = []
    for study in studies:
        folder = Path(study["path"]).parent
        for name, rec in (study["doc"].get("tuning") or {}).items():
            if rec.get("state") != "completed":
                continue
            path = folder / rec["tune_dir"] / "tune.json"
            summary = read_json(path, "tune summary") if path.is_file() else {}
            importance = summary.get("importance") or {}
            budget = rec.get("budget") or {}
            arms.append(
                {
                    "arm_name": name,
                    "arm": rec.get("arm"),
                    "method": rec.get("method"),
                    "tune_dir": str(folder / rec["tune_dir"]),
                    "n_trials": budget.get("n_trials"),
                    "timeout_seconds": budget.get("timeout_seconds"),
                    "trials_finished": budget.get("trials_finished"),
                    "seconds_used": budget.get("seconds_used"),
                    "best_value": rec.get("best_value"),
                    "defaults_value": rec.get("defaults_value"),
                    "gain": None
                    if rec.get("best_value") is None or rec.get("defaults_value") is None
                    else rec["best_value"] - rec["defaults_value"],
                    "best_params": rec.get("best_params") or {},
                    "history": summary.get("history") or [],
                    "importance": importance.get("params"),
                    "importance_skipped": importance.get("skipped"),
                }
            )
    if not arms:
        return None
    budgets = {(a["n_trials"], a["timeout_seconds"]) for a in arms}
    return {"arms": arms, "equal_budget": len(budgets) == 1, "leaders": leaders(arms)}


def leaders(arms: list[dict]) -> dict:
    """The arm ahead on validation macro-F1 with its defaults and after tuning (None when unknown)."""

    def top(key):
        scored = [a for a in arms if a[key] is not None]
        return max(scored, key=lambda a: a[key])["arm_name"] if scored else None

    return {"defaults": top("defaults_value"), "tuned": top("best_value")}
