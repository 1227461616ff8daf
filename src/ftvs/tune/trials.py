"""Running one trial: a real `ftvs train` run in its own folder, or an in-process baseline fit.

A neural trial is the child process `python -m ftvs train ARM --config TRIAL/trial.yaml --output_dir TRIAL
--no-evaluate`: the run never touches the test split, and it is exactly the run a user would get from the
same config. It runs as a job of an executor (ftvs.executors: a child process here, one of
`--parallel N` at once, or a Ray task on a cluster); the search polls the run's history.jsonl,
reports each epoch's validation macro-F1 to the Optuna trial and stops the run when the pruner says so.
The score is the best validation macro-F1 of the run (the epoch whose model the run keeps).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ftvs.errors import FtvsError
from ftvs.executors import Job
from ftvs.executors.local import last_error
from ftvs.fileio import atomic_write_bytes, write_json
from ftvs.rundir import CHECKPOINT_DIR, HISTORY, MODEL_DIR, TRIAL_CONFIG, TRIAL_LOG, read_summary

# what a finished trial keeps: its settings, curves and log; checkpoints and exported models are dropped
# (a full fine-tune writes ~1.5 GB per trial) because the study retrains the best configuration anyway
DISPOSABLE = tuple(f"{d}{s}" for d in (CHECKPOINT_DIR, MODEL_DIR) for s in ("", ".tmp", ".old"))


@dataclass
class TrialResult:
    value: float | None  # best validation macro-F1 (None: no epoch finished)
    pruned: bool = False
    epochs_run: int = 0
    intermediate: dict = field(default_factory=dict)  # epoch -> val macro-F1
    status: str = "completed"  # completed | pruned | nonfinite
    seconds: float = 0.0


def write_train_yaml(path: Path, settings: dict, header: str = "") -> None:
    """A config file `ftvs train --config` reads as is (keys are its flag names)."""
    text = yaml.safe_dump(settings, sort_keys=False)
    atomic_write_bytes(Path(path), (header + text).encode())


def _finished_rows(history_path: Path) -> list[dict]:
    """The epochs a running child has written: complete lines only (the last one may be half written)."""
    if not history_path.exists():
        return []
    text = history_path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def train_trial_job(arm: str, settings: dict, run_dir: Path) -> Job:
    """The trial's `ftvs train` as an executor job: trial.yaml written, the test split never read
    (`--no-evaluate`); a retried job (its worker died) continues from the run's last checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_train_yaml(run_dir / TRIAL_CONFIG, settings)
    ftvs = [sys.executable, "-m", "ftvs", "train", arm, "--config", str(run_dir / TRIAL_CONFIG)]
    quiet = ["--no-evaluate", "--disable_tqdm"]
    return Job(
        [*ftvs, "--output_dir", str(run_dir), *quiet],
        run_dir,
        run_dir / TRIAL_LOG,
        "trial: ",
        retry_cmd=[*ftvs, "--resume", str(run_dir), *quiet],
    )


class TrainTrial:
    """One neural trial in flight on an executor: `poll()` reports each epoch the run has written to the
    Optuna trial, stops the run when the pruner says so, and tells when the trial has ended."""

    def __init__(self, trial, arm: str, settings: dict, run_dir: Path, executor, on_epoch=None):
        self.trial, self.run_dir, self.on_epoch = trial, run_dir, on_epoch
        self.job = train_trial_job(arm, settings, run_dir)
        self.result = TrialResult(value=None)
        self.started = time.perf_counter()
        self.handle = executor.start(self.job)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def poll(self) -> TrialResult | None:
        """The trial's result once it has ended (completed, pruned or diverged), else None; a run that
        failed raises FtvsError with its last log line."""
        rc = self.handle.wait(0)  # before reading the history: an ended run has written every epoch
        for row in _finished_rows(self.run_dir / HISTORY)[self.result.epochs_run :]:
            epoch, f1 = int(row["epoch"]), float(row["val_macro_f1"])
            self.result.intermediate[epoch] = f1
            self.result.epochs_run = epoch
            self.trial.report(f1, epoch)
            if self.on_epoch:
                self.on_epoch(epoch, f1)
            if rc is None and self.trial.should_prune():
                self.handle.stop()
                self.result.pruned, self.result.status = True, "pruned"
                return self._ended(None)
        return None if rc is None else self._ended(rc)

    def stop(self) -> None:
        """Stop the run (the search is interrupted); the trial stays RUNNING in the study, and a resumed
        search queues its parameters again."""
        self.handle.stop()

    def _ended(self, rc: int | None) -> TrialResult:
        result, run_dir = self.result, self.run_dir
        result.seconds = self.elapsed()
        if result.intermediate:
            result.value = max(result.intermediate.values())
        if not result.pruned:
            summary = read_summary(run_dir)
            if summary.get("stop_reason") == "nonfinite":
                # a learning rate that diverges is a bad configuration, not a broken search: it scores
                # what it reached before diverging
                result.status, result.value = "nonfinite", result.value or 0.0
            elif rc != 0 or summary.get("status") != "completed":
                raise FtvsError(
                    f"trial {self.trial.number} failed (exit {rc}): {last_error(self.job.log)[:300]}; see "
                    f"{self.job.log}, fix the setting, then rerun the same command to resume"
                )
            elif result.value is None:
                result.value = float(summary["best_val_macro_f1"])
        for name in DISPOSABLE:
            if (run_dir / name).is_dir():
                shutil.rmtree(run_dir / name, ignore_errors=True)
        return result


def baseline_settings(params: dict, base: dict, seed: int):
    """`BaselineSettings` for one trial: its C and n-gram ranges over the fixed base settings."""
    from ftvs.baseline import BaselineSettings, check_settings
    from ftvs.tune.space import ngram_range

    values = {**base, **params}
    settings = {k: v for k, v in values.items() if k not in ("C", "word_ngrams", "char_ngrams")}
    for key in ("word_ngrams", "char_ngrams"):
        if key in values:
            settings[key] = ngram_range(values[key]) if isinstance(values[key], str) else tuple(values[key])
    if "C" in values:
        settings["C_grid"] = (float(values["C"]),)
    try:
        return check_settings(BaselineSettings(seed=seed, **settings))
    except TypeError as e:
        raise FtvsError(f"invalid baseline setting: {e}; see `ftvs baseline --help`") from None


class BaselineData:
    """Train and validation splits, read once for every baseline trial (the test split never)."""

    def __init__(self, data_dir):
        from ftvs.data import load_metadata, load_split

        self.label_names = list(load_metadata(data_dir)["label_names"])
        self.train = load_split(data_dir, "train")
        self.val = load_split(data_dir, "val")
        if not self.val[0]:
            raise FtvsError(
                f"{data_dir}/val.jsonl is empty: tuning scores on the validation split; "
                "re-run `ftvs prepare` with --validation-split 0.1"
            )


def run_baseline_trial(
    trial, data: BaselineData, params: dict, base: dict, seed: int, run_dir: Path
) -> TrialResult:
    """Fit TF-IDF + logistic regression with one C on train, score it on val (in this process)."""
    from ftvs.baseline import fit_baseline

    settings = baseline_settings(params, base, seed)
    started = time.perf_counter()
    _, record = fit_baseline(*data.train, *data.val, data.label_names, settings, log=lambda *a, **k: None)
    value = float(record["grid"][0]["macro_f1"])
    result = TrialResult(
        value=value, epochs_run=1, intermediate={1: value}, seconds=time.perf_counter() - started
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_dir / "trial.json",
        {"params": params, "val_macro_f1": value, "seconds": result.seconds, "fit": record},
    )
    return result
