"""Running one trial: a real `ftvs train` run in its own folder, or an in-process baseline fit.

A neural trial is the child process `python -m ftvs train ARM --config TRIAL/trial.yaml --output_dir TRIAL
--no-evaluate`: the run never touches the test split, and it is exactly the run a user would get from the
same config. The parent polls the run's history.jsonl, reports each epoch's validation macro-F1 to the
Optuna trial and ends the child when the pruner says so. The score is the best validation macro-F1 of the
run (the epoch whose model the run keeps).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ftvs.errors import FtvsError
from ftvs.fileio import atomic_write_bytes, write_json
from ftvs.rundir import CHECKPOINT_DIR, HISTORY, MODEL_DIR, TRIAL_CONFIG, TRIAL_LOG, read_summary

POLL_SECONDS = 0.5
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


def _die_with_parent():
    """Linux: the child gets SIGKILL when the tuning process dies, even by SIGKILL, so a killed search
    leaves no training run behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _finished_rows(history_path: Path) -> list[dict]:
    """The epochs a running child has written: complete lines only (the last one may be half written)."""
    if not history_path.exists():
        return []
    text = history_path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_train_trial(trial, arm: str, settings: dict, run_dir: Path, on_epoch=None) -> TrialResult:
    """Train `settings` (a train config without arm/output_dir) into `run_dir` in a child process,
    reporting each epoch to the Optuna `trial`; returns its result (pruned trials included)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_train_yaml(run_dir / TRIAL_CONFIG, settings)
    cmd = [
        sys.executable,
        "-m",
        "ftvs",
        "train",
        arm,
        "--config",
        str(run_dir / TRIAL_CONFIG),
        "--output_dir",
        str(run_dir),
        "--no-evaluate",
        "--disable_tqdm",
    ]
    history_path = run_dir / HISTORY
    started = time.perf_counter()
    result = TrialResult(value=None)
    with open(run_dir / TRIAL_LOG, "wb") as log:
        child = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        try:
            while True:
                done = child.poll() is not None
                rows = _finished_rows(history_path)
                for row in rows[result.epochs_run :]:
                    epoch, f1 = int(row["epoch"]), float(row["val_macro_f1"])
                    result.intermediate[epoch] = f1
                    result.epochs_run = epoch
                    trial.report(f1, epoch)
                    if on_epoch:
                        on_epoch(epoch, f1)
                    if not done and trial.should_prune():
                        _stop(child)
                        result.pruned, result.status = True, "pruned"
                        break
                if done or result.pruned:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            _stop(child)  # an exception here (Ctrl-C included) must not leave the run training
    result.seconds = time.perf_counter() - started
    if result.intermediate:
        result.value = max(result.intermediate.values())
    if not result.pruned:
        summary = read_summary(run_dir)
        if summary.get("stop_reason") == "nonfinite":
            # a learning rate that diverges is a bad configuration, not a broken search: it scores what it
            # reached before diverging
            result.status, result.value = "nonfinite", result.value or 0.0
        elif child.returncode != 0 or summary.get("status") != "completed":
            tail = (run_dir / TRIAL_LOG).read_text(errors="replace").strip().splitlines()[-1:] or [
                "no output"
            ]
            raise FtvsError(
                f"trial {trial.number} failed (exit {child.returncode}): {tail[0][:300]}; see "
                f"{run_dir / TRIAL_LOG}, fix the setting, then rerun the same command to resume"
            )
        elif result.value is None:
            result.value = float(summary["best_val_macro_f1"])
    for name in DISPOSABLE:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name, ignore_errors=True)
    return result


def baseline_settings(params: dict, base: dict, seed: int):
    """`BaselineSettings` for one trial: its C and n-gram ranges over the fixed base settings."""
    from ftvs.baseline import BaselineSettings
    from ftvs.tune.space import ngram_range

    values = {**base, **params}
    settings = {k: v for k, v in values.items() if k not in ("C", "word_ngrams", "char_ngrams")}
    for key in ("word_ngrams", "char_ngrams"):
        if key in values:
            settings[key] = ngram_range(values[key]) if isinstance(values[key], str) else tuple(values[key])
    if "C" in values:
        settings["C_grid"] = (float(values["C"]),)
    try:
        return BaselineSettings(seed=seed, **settings)
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
