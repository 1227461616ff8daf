"""The search: an Optuna study in TUNE_DIR/optuna.db, run trial by trial until the budget is spent.

- Sampler: TPE, seeded, multivariate. Its first trials are random (about half of a trial budget, 2 to 10),
  and the very first trial is the arm's defaults, so the search reports how much tuning gained.
- Pruner: median by default. A trial is stopped after an epoch (from its 2nd on) when its best validation
  macro-F1 so far is below the median of the completed trials at that epoch (once 2 trials completed).
  Median rather than successive halving because budgets here are a handful of trials, whose epoch counts
  differ: the median needs no resource schedule and prunes only clear losers. `halving` (Optuna's
  successive halving, reduction factor 3) and `none` are there for larger budgets and for comparison.
- Budget: `n_trials` counts finished trials (completed + pruned), `timeout` the seconds spent in them, both
  summed over every session of the search. A trial that started is finished (a budget in seconds can be
  overrun by the length of one trial).
- Resume: the same command continues the study. Trials a killed search left RUNNING are marked FAIL and
  their parameters queued again, so no finished trial is repeated and the budget still counts only
  finished ones.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

from ftvs.data import load_metadata
from ftvs.errors import FtvsError, check_count
from ftvs.fileio import RunLock
from ftvs.fmt import clock
from ftvs.tune import space as spaces
from ftvs.tune.storage import choose as choose_storage
from ftvs.tune.storage import open_storage
from ftvs.tune.summary import FINISHED, write_outputs
from ftvs.tune.trials import BaselineData, TrainTrial, baseline_settings, run_baseline_trial

PRUNERS = ("median", "halving", "none")
POLL_SECONDS = 0.5


def _pruner(name: str):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _startup_trials(n_trials: int | None) -> int:
    return 10 if n_trials is None else max(2, min(10, n_trials // 2))


def _base_settings(arm: str, method: str | None, data: Path, base: dict, seed: int) -> dict:
    """The fixed settings of every trial (the user's config and flags), checked once up front."""
    base = {k: v for k, v in (base or {}).items() if v is not None and k not in ("arm", "output_dir")}
    if arm == "baseline":
        base.pop("data", None)
        baseline_settings({}, base, seed)
        return base
    from ftvs.config import build_config

    base["data"], base["seed"] = str(data), seed
    if arm == "finetune":
        base["method"] = method or base.get("method") or "lora"
    elif method:
        raise FtvsError(f"--method {method} applies to the finetune arm only; drop it for --arm {arm}")
    build_config(base, {"arm": arm, "output_dir": "unused"})
    return base


def _check_space(arm: str, space: dict, base: dict, seed: int) -> None:
    """Every range end and choice must be a valid setting, so a search does not fail in trial 7."""
    from ftvs.config import build_config

    for param in space.values():
        for value in param.edge_values():
            try:
                if arm == "baseline":
                    baseline_settings({param.name: value}, base, seed)
                else:
                    build_config({**base, param.name: value}, {"arm": arm, "output_dir": "unused"})
            except FtvsError as e:
                raise FtvsError(f"search space {param.name}={value!r}: {e}") from None


def _default_params(arm: str, method: str | None, space: dict, base: dict) -> dict:
    """The value each searched parameter has in a plain `ftvs train`/`ftvs baseline` run with the base
    settings (kept when it lies inside the space)."""
    if arm == "baseline":
        from ftvs.baseline.model import DEFAULT_C_GRID, BaselineSettings

        d = BaselineSettings()
        defaults = {
            "C": DEFAULT_C_GRID[len(DEFAULT_C_GRID) // 2],
            "word_ngrams": ",".join(map(str, d.word_ngrams)),
            "char_ngrams": ",".join(map(str, d.char_ngrams)),
        }
    else:
        from ftvs.config import TrainConfig

        defaults = {**TrainConfig().to_dict(), **base}
        if defaults.get("learning_rate") is None:
            from ftvs.arms.base import DEFAULT_LEARNING_RATES

            defaults["learning_rate"] = DEFAULT_LEARNING_RATES[
                "scratch" if arm == "scratch" else base["method"]
            ]
        from ftvs.data import load_metadata
        from ftvs.small_data import small_data_defaults

        # a plain run on small data gets a smaller batch / more epochs where the base leaves them open
        num_train = load_metadata(base["data"])["splits"]["train"]["count"]
        auto = (
            {}
            if defaults.get("max_train_steps")
            else small_data_defaults(
                arm,
                num_train,
                defaults["per_device_train_batch_size"],
                defaults["num_train_epochs"],
                set(base),
                defaults["gradient_accumulation_steps"],
            )
        )
        defaults.update({k: change["value"] for k, change in auto.items()})
    return {
        k: defaults[k] for k, p in spaces.searched(space).items() if k in defaults and p.contains(defaults[k])
    }


class Progress:
    """One line on stderr per event: trial n/N, its epochs, best so far, time spent and ETA."""

    def __init__(self, label: str, n_trials: int | None, timeout: float | None, enabled: bool = True):
        self.label, self.n_trials, self.timeout, self.enabled = label, n_trials, timeout, enabled

    def line(self, text: str) -> None:
        if self.enabled:
            print(f"tune {self.label}: {text}", file=sys.stderr, flush=True)

    def status(self, finished: int, seconds: float, best) -> str:
        parts = [
            f"best val macro-F1 {best[1]:.4f} (trial {best[0]})" if best else "no completed trial yet",
            f"{clock(seconds)} spent",
        ]
        remaining = []
        if self.n_trials and finished:
            remaining.append(seconds / finished * max(0, self.n_trials - finished))
        if self.timeout:
            remaining.append(max(0.0, self.timeout - seconds))
        if remaining:
            parts.append(f"ETA {clock(min(remaining))}")
        return " | ".join(parts)

    def of(self, n: int) -> str:
        return f"trial {n}/{self.n_trials}" if self.n_trials else f"trial {n}"


def _check_arguments(n_trials, timeout, pruner, output_dir) -> None:
    if n_trials is None and timeout is None:
        raise FtvsError("no budget: give --n_trials N and/or --timeout SECONDS")
    if n_trials is not None:
        check_count("--n_trials", n_trials)
    if timeout is not None and not timeout > 0:
        raise FtvsError(f"--timeout must be > 0 seconds, got {timeout}")
    if pruner not in PRUNERS:
        raise FtvsError(f"unknown pruner {pruner!r}; use one of {', '.join(PRUNERS)}")
    if not output_dir:
        raise FtvsError("no --output_dir given; name a folder for the search")


def _pruner_record(pruner: str) -> dict:
    if pruner == "median":
        return {"name": pruner, "n_startup_trials": 2, "n_warmup_steps": 2}
    if pruner == "halving":
        return {"name": pruner, "min_resource": 1, "reduction_factor": 3}
    return {"name": pruner}


def _open_study(out: Path, setup: dict, search_space: dict, options: dict):
    """The Optuna study in the tune folder's storage, created or resumed (interrupted trials queued
    again). options: n_trials, seed, pruner, defaults_first, storage, parallel (trials at once)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage, name, described = open_storage(out, options["storage"])
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    _check_same_search(study, setup, out)
    _requeue_interrupted(study)
    if options["defaults_first"] and not study.trials:
        defaults = _default_params(setup["arm"], setup["method"], search_space, setup["base"])
        study.enqueue_trial(defaults, user_attrs={"defaults": True})
    # offset by the trials so far: a resumed sampler must not replay the first session's random draws;
    # with trials in parallel, the running ones count as their current worst ("constant liar"), so two
    # trials started together do not sample the same region
    seed, startup, liar = options["seed"], _startup_trials(options["n_trials"]), options["parallel"] > 1
    sampler = optuna.samplers.TPESampler(
        seed=seed + len(study.trials), multivariate=True, n_startup_trials=startup, constant_liar=liar
    )
    setup["sampler"] = {"name": "TPESampler", "seed": seed, "multivariate": True, "n_startup_trials": startup,
                        "constant_liar": liar}  # fmt: skip
    setup["pruner"] = _pruner_record(options["pruner"])
    setup["storage"] = described
    return optuna.load_study(
        study_name=name, storage=storage, sampler=sampler, pruner=_pruner(options["pruner"])
    )


def _budget(study, n_trials, timeout) -> dict:
    finished = study.get_trials(deepcopy=False, states=_states(FINISHED))
    seconds = sum(t.user_attrs.get("seconds", 0.0) for t in finished)
    return {
        "n_trials": n_trials,
        "timeout_seconds": timeout,
        "trials_finished": len(finished),
        "seconds_used": seconds,
        "exhausted_by": _budget_spent(n_trials, timeout, len(finished), seconds),
    }


def _start_trial(study, setup: dict, search_space: dict, out: Path, bar, executor, budget: dict, inflight):
    """Ask the study for a trial and start its run on the executor (a TrainTrial, not yet ended)."""
    trial = study.ask()
    params = spaces.suggest(trial, search_space)
    shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    finished, seconds = _in_flight_budget(budget, inflight)
    status = bar.status(finished, seconds, _best(study))
    bar.line(f"{bar.of(finished + 1)} (#{trial.number}) {shown} | {status}")
    run_dir = out / "trials" / f"{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("started_at", time.time())
    if setup["arm"] == "baseline":
        return trial, params, run_dir

    def on_epoch(epoch, f1, n=trial.number):
        bar.line(f"  trial #{n} epoch {epoch}: val macro-F1 {f1:.4f}")

    return TrainTrial(trial, setup["arm"], {**setup["base"], **params}, run_dir, executor, on_epoch)


def _tell(study, trial, result, setup: dict, out: Path, bar, budget: dict) -> dict:
    """Tell Optuna how a trial ended and rewrite tune.json; returns the budget now spent."""
    import optuna

    for key in ("seconds", "status", "epochs_run", "value"):
        trial.set_user_attr(key, getattr(result, key))
    trial.set_user_attr("ended_at", time.time())
    if result.pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, result.value)
    ended = "pruned after epoch " + str(result.epochs_run) if result.pruned else result.status
    value = "-" if result.value is None else f"{result.value:.4f}"
    bar.line(f"trial #{trial.number} {ended}: val macro-F1 {value} in {clock(result.seconds)}")
    after = _budget(study, budget["n_trials"], budget["timeout_seconds"])
    write_outputs(out, study, setup, after, final=False)
    return after


def _fail(study, trial, setup: dict, out: Path, budget: dict) -> None:
    import optuna

    trial.set_user_attr("status", "failed")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    write_outputs(out, study, setup, budget, final=False)


def _in_flight_budget(budget: dict, inflight: list) -> tuple[int, float]:
    """Trials and seconds counted against the budget: the finished ones and those running now."""
    return (
        budget["trials_finished"] + len(inflight),
        budget["seconds_used"] + sum(t.elapsed() for t in inflight),
    )


def _search(study, setup: dict, space: dict, out: Path, bar, executor, baseline_data, n_trials, timeout):
    """Start trials while the budget (counting the running ones) and the executor's slots allow; poll the
    running ones; until the budget is spent and nothing runs. An interrupted search stops its runs (their
    trials stay RUNNING and are queued again on resume)."""
    inflight: list[TrainTrial] = []
    budget = _budget(study, n_trials, timeout)  # finished trials: changes only when one ends
    try:
        while True:
            while len(inflight) < max(1, executor.slots) and not _budget_spent(
                n_trials, timeout, *_in_flight_budget(budget, inflight)
            ):
                started = _start_trial(study, setup, space, out, bar, executor, budget, inflight)
                if isinstance(started, TrainTrial):
                    inflight.append(started)
                    continue
                trial, params, run_dir = started  # a baseline fit: seconds, in this process
                base, seed = setup["base"], setup["seed"]
                result = run_baseline_trial(trial, baseline_data, params, base, seed, run_dir)
                budget = _tell(study, trial, result, setup, out, bar, budget)
            if not inflight:
                return
            for running in list(inflight):
                try:
                    result = running.poll()
                except FtvsError:
                    inflight.remove(running)
                    _fail(study, running.trial, setup, out, budget)
                    raise
                if result is not None:
                    inflight.remove(running)
                    budget = _tell(study, running.trial, result, setup, out, bar, budget)
            time.sleep(POLL_SECONDS)
    finally:
        for running in inflight:
            running.stop()


def tune_arm(
    arm: str,
    data,
    output_dir,
    *,
    method: str | None = None,
    base: dict | None = None,
    space=None,
    n_trials: int | None = None,
    timeout: float | None = None,
    seed: int = 0,
    pruner: str = "median",
    defaults_first: bool = True,
    progress: bool = True,
    executor=None,
    storage: str | None = None,
) -> dict:
    """Tune one arm on `data` (a prepared folder; only its train and val splits are read) into
    `output_dir`: optuna.db, trials/NNNN/, tune.json, best.yaml. Rerunning with the same arguments resumes.

    arm: scratch | finetune | baseline; method: the finetune method (lora, full, frozen, unfreeze);
    base: fixed settings of every trial (train config keys, or BaselineSettings fields for the baseline);
    space: overrides of the arm's default search space (a mapping or a YAML path, see ftvs.tune.space);
    n_trials / timeout: the budget (finished trials / seconds in trials), at least one of them.
    executor: where trials run (ftvs.executors; default: one at a time on this machine), as many at
    once as it has slots; storage: sqlite | journal | an RDB URL (ftvs.tune.storage; default: what the
    folder holds, else journal on a Ray executor, else sqlite).
    Returns the tune.json content (`best.config` is the best configuration, `best.value` its val macro-F1).
    """
    _check_arguments(n_trials, timeout, pruner, output_dir)
    data = Path(data).resolve()
    load_metadata(data)
    base = _base_settings(arm, method, data, base, seed)
    method = base.get("method")
    search_space = spaces.build_space(arm, method, space, fixed=base)
    _check_space(arm, search_space, base, seed)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    setup = {
        "arm": arm,
        "method": method,
        "data": str(data),
        "seed": seed,
        "base": base,
        "space": {k: p.to_dict() for k, p in search_space.items()},
    }
    if executor is None:
        from ftvs.executors.local import LocalExecutor

        executor = LocalExecutor()
    storage = choose_storage(out, storage, shared=executor.name == "ray")
    options = {"n_trials": n_trials, "seed": seed, "pruner": pruner, "defaults_first": defaults_first,
               "storage": storage, "parallel": executor.slots if arm != "baseline" else 1}  # fmt: skip
    with RunLock(out):
        study = _open_study(out, setup, search_space, options)
        setup["executor"] = {"name": executor.name, "trials_at_once": options["parallel"]}
        baseline_data = BaselineData(data) if arm == "baseline" else None
        bar = Progress(arm if arm != "finetune" else f"finetune/{method}", n_trials, timeout, progress)
        _search(study, setup, search_space, out, bar, executor, baseline_data, n_trials, timeout)
        budget = _budget(study, n_trials, timeout)
        summary = write_outputs(out, study, setup, budget, final=True)
    best = summary["best"]
    bar.line(
        f"done: {budget['trials_finished']} trials in {clock(budget['seconds_used'])} "
        f"({budget['exhausted_by']} budget spent) | "
        + (
            f"best val macro-F1 {best['value']:.4f} (trial {best['number']}) -> {out / 'best.yaml'}"
            if best
            else "no trial completed"
        )
    )
    return summary


def _states(names):
    import optuna

    return tuple(optuna.trial.TrialState[n] for n in names)


def _best(study):
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    top = max(complete, key=lambda t: (t.value, -t.number))
    return top.number, top.value


def _budget_spent(n_trials, timeout, finished: int, seconds: float) -> str | None:
    if n_trials is not None and finished >= n_trials:
        return "n_trials"
    if timeout is not None and seconds >= timeout:
        return "timeout"
    return None


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _check_same_search(study, setup: dict, out: Path) -> None:
    """A resumed search must be the same search: same arm, data, seed, fixed settings and space."""
    setup = json.loads(json.dumps(setup))  # as stored: tuples become lists
    saved = study.user_attrs.get("setup")
    if saved is None:
        study.set_user_attr("setup", setup)
        return
    diff = [k for k in setup if saved.get(k) != setup[k]]
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {setup[k]!r}" for k in diff[:3])
        raise FtvsError(
            f"{out} holds a different search ({shown[:300]}); rerun with its settings to resume it, "
            "or pick another --output_dir"
        )


def _requeue_interrupted(study) -> None:
    """Trials left RUNNING by a killed search: FAIL them and queue their parameters again."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if t.params:
            study.enqueue_trial(
                dict(t.params),
                user_attrs={"retry_of": t.number, "defaults": bool(t.user_attrs.get("defaults"))},
            )
