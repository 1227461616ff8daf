"""The study's `tune:` block: tune each arm with the same budget, then train its best configuration per seed.

    tune: {n_trials: 8, timeout: null, pruner: median}        # top level: every arm
    arms:
      - {name: lora, arm: finetune, method: lora, tune: {space: {lora_r: [8, 16]}}}   # merged over it
      - {name: tfidf, arm: baseline, tune: false}                                   # not tuned

Each tuned arm is searched first (`ftvs.tune.tune_arm`, folder STUDY/tune/ARM, on STUDY/data/main's train
and validation splits only, seeded with the study's first seed; its trials run on the study's executor,
as many at once as it has slots); the arm's planned runs (every seed and
sweep point) then take its best parameters as given settings, so only the final runs read the test split.
A rerun finds the finished searches in their folders (tune_arm returns at once; a raised budget continues
the search, and runs trained with an older best are retrained). study.json `tuning` records each arm's
search for `ftvs compare` and the report.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from ftvs.errors import FtvsError, closest, is_count
from ftvs.fileio import read_json

TOP_TUNE_KEYS = {"n_trials", "timeout", "pruner"}
ARM_TUNE_KEYS = TOP_TUNE_KEYS | {"space"}
PRUNERS = ("median", "halving", "none")  # ftvs.tune.search.PRUNERS (not imported: it pulls in optuna)


# --------------------------------------------------------------------------------------------------
# Config: normalisation and each arm's effective budget
# --------------------------------------------------------------------------------------------------


def normalize_tune(value, where: str, allowed=TOP_TUNE_KEYS):
    """A `tune:` mapping as written (checked), False for `tune: false`, None when absent."""
    if value is None or value is False:
        return value
    if not isinstance(value, dict):
        raise FtvsError(f"study config: {where} must be a mapping like {{n_trials: 8}}, or false")
    for key in value:
        if key not in allowed:
            hint = " (a search space belongs in an arm's own tune:)" if key == "space" else ""
            raise FtvsError(f"study config: unknown key {key!r} in {where}{closest(str(key), allowed)}{hint}")
    n, t = value.get("n_trials"), value.get("timeout")
    if n is not None and not is_count(n):
        raise FtvsError(f"study config: {where}.n_trials must be a positive integer, got {n!r}")
    if t is not None and (not isinstance(t, int | float) or isinstance(t, bool) or t <= 0):
        raise FtvsError(f"study config: {where}.timeout must be a number of seconds > 0, got {t!r}")
    if value.get("pruner", "median") not in PRUNERS:
        raise FtvsError(f"study config: {where}.pruner must be one of {', '.join(PRUNERS)}")
    if value.get("space") is not None and not isinstance(value["space"], dict):
        raise FtvsError(f"study config: {where}.space must be a mapping of settings to ranges or choices")
    return dict(value)


def effective_tune(cfg: dict, arm: dict) -> dict | None:
    """The arm's search: its own `tune:` over the top-level one (the same budget for every arm unless an
    arm says otherwise); None when the arm is not tuned."""
    own = arm.get("tune")
    if arm["arm"] == "distill":  # a student is not searched: its teacher is, and it takes its own settings
        if own:
            raise FtvsError(
                f"study config: arms.{arm['name']} is a distill arm, which is not tuned; drop its tune:"
            )
        return None
    if own is False or (own is None and not cfg.get("tune")):
        return None
    merged = {"n_trials": None, "timeout": None, "pruner": "median", "space": None,
              **(cfg.get("tune") or {}), **(own or {})}  # fmt: skip
    if merged["n_trials"] is None and merged["timeout"] is None:
        raise FtvsError(f"study config: the tuning of arm {arm['name']} has no budget; give tune.n_trials "
                        "and/or tune.timeout (seconds)")  # fmt: skip
    return merged


def check_tuning(cfg: dict) -> None:
    """Normalise the `tune:` blocks in place and check every arm's search space now, not after an hour."""
    cfg["tune"] = normalize_tune(cfg.get("tune"), "tune")
    for arm in cfg["arms"]:
        arm["tune"] = normalize_tune(arm.get("tune"), f"arms.{arm['name']}.tune", ARM_TUNE_KEYS)
        t = effective_tune(cfg, arm)
        if t and t["space"]:
            from ftvs.study.plan import _settings
            from ftvs.tune.space import build_space

            method = (
                arm.get("method", cfg["train"].get("method", "lora")) if arm["arm"] == "finetune" else None
            )
            try:
                build_space(arm["arm"], method, t["space"], fixed=_settings(cfg, arm))
            except FtvsError as e:
                raise FtvsError(f"study config arms.{arm['name']}.tune.space: {e}") from None


# --------------------------------------------------------------------------------------------------
# Applying finished searches to the plan
# --------------------------------------------------------------------------------------------------


def tune_dir(study_dir: Path, arm_name: str) -> Path:
    return Path(study_dir) / "tune" / arm_name


def finished_search(study_dir: Path, arm_name: str) -> dict | None:
    """The arm's tune.json when its search completed with a best trial."""
    path = tune_dir(study_dir, arm_name) / "tune.json"
    if not path.is_file():
        return None
    summary = read_json(path, "tune summary")
    return summary if summary.get("status") == "completed" and summary.get("best") else None


def tuned_config(cfg: dict, study_dir: Path) -> dict:
    """`cfg` with each tuned arm's best parameters set in the arm (as given settings), for the plan."""
    out = copy.deepcopy(cfg)
    for arm in out["arms"]:
        summary = finished_search(study_dir, arm["name"]) if effective_tune(cfg, arm) else None
        if summary:
            arm.update(summary["best"]["params"])
    return out


# --------------------------------------------------------------------------------------------------
# The tuning stage of a study
# --------------------------------------------------------------------------------------------------


def run_tuning(study) -> None:
    """Tune every enabled arm with a `tune:` budget (skipping arms --only leaves out), record the searches
    in study.json `tuning`, and give the arms' planned runs their best parameters."""
    from ftvs.study.plan import _settings
    from ftvs.tune import tune_arm

    cfg = study.cfg
    arms = [(a, t) for a in cfg["arms"] if a["enabled"] and (t := effective_tune(cfg, a))]
    if not arms:
        return
    records = study.reg.setdefault("tuning", {})
    data = study.dir / "data" / "main"
    for arm, t in arms:
        if not any(study.selected(r.id) for r in study.plan if r.arm_name == arm["name"]):
            continue
        out = tune_dir(study.dir, arm["name"])
        if study.force and not study.only:
            shutil.rmtree(out, ignore_errors=True)  # --force redoes the study, its searches included
        base = _settings(cfg, arm)
        method = base.get("method", "lora") if arm["arm"] == "finetune" else None
        budget = {"n_trials": t["n_trials"], "timeout_seconds": t["timeout"]}
        rec = records[arm["name"]] = {"arm": arm["arm"], "method": method, "tune_dir": study.rel(out),
                                      "state": "running", "budget": budget, "pruner": t["pruner"],
                                      "space": t["space"]}  # fmt: skip
        study.save()
        shown = " and ".join(s for s in (f"{t['n_trials']} trials" if t["n_trials"] else "",
                                          f"{t['timeout']:g} s" if t["timeout"] else "") if s)  # fmt: skip
        study.progress.say(f"tune {arm['name']}: {shown}, validation split only -> {rec['tune_dir']}")
        try:
            summary = tune_arm(arm["arm"], data, out, method=method, base=base, space=t["space"],
                               n_trials=t["n_trials"], timeout=t["timeout"], seed=cfg["seeds"][0],
                               pruner=t["pruner"], progress=not study.progress.quiet,
                               executor=study.executor)  # fmt: skip
        except FtvsError as e:
            rec.update(state="failed", error=str(e))
            study.save()
            raise FtvsError(
                f"tuning arm {arm['name']} failed: {e} (log in {rec['tune_dir']}/trials)"
            ) from None
        except BaseException:  # interrupted: the search resumes when the study is rerun
            rec["state"] = "interrupted"
            study.save()
            raise
        rec.update(record(summary))
        study.save()
        study.progress.say(f"  tuned {arm['name']}: best val macro-F1 {rec['best_value']:.4f} (defaults "
                           f"{_f4(rec['defaults_value'])}) with {rec['best_params']}")  # fmt: skip
    refresh_plan(study)


def record(summary: dict) -> dict:
    """What study.json keeps of a finished search (tune.json in its folder has every trial)."""
    best, defaults = summary.get("best") or {}, summary.get("defaults_trial") or {}
    return {"state": "completed", "budget": summary["budget"], "best_value": best.get("value"),
            "best_trial": best.get("number"), "best_params": best.get("params"),
            "defaults_value": defaults.get("value"),
            "trials": sum(t["state"] in ("COMPLETE", "PRUNED") for t in summary["trials"])}  # fmt: skip


def refresh_plan(study) -> None:
    """Give the planned runs of tuned arms their best parameters; a run trained with other settings (an
    older best: the budget was raised) is retrained."""
    from ftvs.config import config_differences
    from ftvs.study.config import FREE_KEYS
    from ftvs.study.plan import plan_runs

    study.plan = plan_runs(tuned_config(study.cfg, study.dir))
    retrain = []
    for run in study.plan:
        entry = study.reg["runs"].get(run.id)
        planned = study.entries.entry(run)
        if entry is None or not config_differences(entry.get("config") or {}, planned["config"], FREE_KEYS):
            continue
        if entry.get("state") == "completed":
            retrain.append(run.id)
        study.reg["runs"][run.id] = {**planned, "attempts": entry.get("attempts", []), "needs_wipe": True}
    study.save()
    if retrain:
        study.progress.say(f"tuning found new settings for {len(retrain)} finished run(s); retraining them")


def _f4(v) -> str:
    return "-" if v is None else f"{v:.4f}"
