"""What a search leaves for people and for the report: tune.json (every trial, the best one, the
optimisation history, fANOVA importance) and best.yaml (a config `ftvs train --config` takes as is)."""

from __future__ import annotations

from pathlib import Path

from ftvs.fileio import write_json
from ftvs.tune.trials import write_train_yaml

FINISHED = ("COMPLETE", "PRUNED")


def trial_record(t) -> dict:
    attrs = t.user_attrs
    return {
        "number": t.number,
        "state": t.state.name,
        "params": dict(t.params),
        "value": t.value if t.value is not None else attrs.get("value"),
        "status": attrs.get("status"),
        "seconds": attrs.get("seconds"),
        "epochs_run": attrs.get("epochs_run"),
        "val_macro_f1_per_epoch": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        "run_dir": attrs.get("run_dir"),
        "defaults": bool(attrs.get("defaults", False)),
        "retry_of": attrs.get("retry_of"),
        "started_at": attrs.get("started_at"),
        "ended_at": attrs.get("ended_at"),
    }


def optimisation_history(records: list[dict]) -> list[dict]:
    """Best validation macro-F1 of completed trials after each finished trial, against the trial count
    and the seconds spent in trials so far (the two x-axes of the report's history plot)."""
    rows, best, elapsed = [], None, 0.0
    for r in records:
        if r["state"] not in FINISHED:
            continue
        elapsed += r["seconds"] or 0.0
        if r["state"] == "COMPLETE" and r["value"] is not None and (best is None or r["value"] > best):
            best = r["value"]
        rows.append(
            {
                "trial": r["number"],
                "finished": len(rows) + 1,
                "state": r["state"],
                "value": r["value"],
                "best_value": best,
                "elapsed_seconds": elapsed,
            }
        )
    return rows


def param_importance(study, seed: int) -> dict:
    """fANOVA importance of each searched parameter over the completed trials (needs at least two)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {
            "evaluator": "fanova",
            "params": None,
            "skipped": f"{len(complete)} completed trial(s); needs 2",
        }
    try:
        importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except (RuntimeError, ValueError) as e:  # e.g. every completed trial has the same parameters
        return {"evaluator": "fanova", "params": None, "skipped": str(e).splitlines()[0]}
    return {"evaluator": "fanova", "params": {k: float(v) for k, v in importances.items()}}


def best_settings(base: dict, params: dict) -> dict:
    """The best trial's settings as a config file: the fixed base settings plus its parameters, without the
    data folder (given on the command line of the run that uses it)."""
    return {**{k: v for k, v in base.items() if k != "data"}, **params}


def best_command(arm: str, best_yaml: Path) -> str:
    command = "ftvs baseline" if arm == "baseline" else f"ftvs train {arm}"
    return f"{command} --config {best_yaml} --data DATA --output_dir RUN_DIR"


def write_outputs(out: Path, study, setup: dict, budget: dict, final: bool) -> dict:
    """Write tune.json (and best.yaml once a trial completed); returns the tune.json content."""
    records = [trial_record(t) for t in study.get_trials(deepcopy=False) if t.state.name != "WAITING"]
    complete = [r for r in records if r["state"] == "COMPLETE" and r["value"] is not None]
    best = None
    if complete:
        top = max(complete, key=lambda r: (r["value"], -r["number"]))
        settings = best_settings(setup["base"], top["params"])
        header = (
            f"# ftvs tune: best of {len(complete)} completed trial(s), trial {top['number']} "
            f"(val macro-F1 {top['value']:.4f})\n"
        )
        write_train_yaml(out / "best.yaml", settings, header)
        best = {
            "number": top["number"],
            "value": top["value"],
            "params": top["params"],
            "config": settings,
            "config_path": str(out / "best.yaml"),
            "command": best_command(setup["arm"], out / "best.yaml"),
        }
    defaults = next((r for r in records if r["defaults"]), None)
    summary = {
        "status": "completed" if final else "running",
        **{k: setup[k] for k in ("arm", "method", "data", "seed", "base", "space", "sampler", "pruner")},
        "storage": setup.get("storage"),
        "executor": setup.get("executor"),
        "budget": budget,
        "trials": records,
        "best": best,
        "defaults_trial": {
            "number": defaults["number"],
            "value": defaults["value"],
            "state": defaults["state"],
        }
        if defaults
        else None,
        "history": optimisation_history(records),
        "importance": param_importance(study, setup["seed"]) if final else None,
    }
    write_json(out / "tune.json", summary)
    return summary
