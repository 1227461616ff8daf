"""What a running study shows: one status line per running run, with run and study ETAs.

A training run's progress comes from two files in its run folder: history.jsonl (one row per finished
epoch) and progress.json, which the training loop rewrites atomically at most once a second (format in
docs/study.md). Either may be missing (a run that has not started, or an ftvs whose training loop
writes no progress.json); the view then shows less, never fails.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from ftvs.fileio import read_jsonl
from ftvs.fmt import clock
from ftvs.progress import read_progress
from ftvs.rundir import HISTORY
from ftvs.study.registry import num_train_examples


def fmt_seconds(s) -> str:
    return clock(s, missing="-")


class Progress:
    """The terminal side. On a terminal the status line is redrawn in place; otherwise a line is printed
    per epoch and at most once a minute in between."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) and not quiet
        self.quiet = quiet
        self._last_line = ""
        self._last_print = 0.0
        self._last_epochs = -1

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty and self._last_line:
            self.stream.write("\r\033[K")
            self._last_line = ""
        self.stream.write(text + "\n")
        self.stream.flush()

    def reset(self) -> None:
        self._last_epochs = -1
        self._last_print = 0.0

    def status(self, text: str, epochs_done: int) -> None:
        if self.quiet:
            return
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self.stream.write("\r\033[K" + text[:width])
            self.stream.flush()
            self._last_line = text
            return
        now = time.monotonic()
        if epochs_done != self._last_epochs or now - self._last_print >= 60:
            self._last_epochs = epochs_done
            self._last_print = now
            self.stream.write("  " + text + "\n")
            self.stream.flush()

    def end_line(self) -> None:
        if self.tty and self._last_line:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._last_line = ""


def current_progress(run_dir: Path, since_unix: float | None = None) -> dict | None:
    """progress.json of a run, or None when missing, unreadable, or older than `since_unix` (left by an
    earlier attempt of the run)."""
    live = read_progress(run_dir)
    if live and (since_unix is None or (live.get("updated_unix") or 0) >= since_unix):
        return live
    return None


def run_progress(run_dir: Path, num_epochs: int | None, since_unix: float | None = None) -> dict:
    """What a running training has done so far: finished epochs from history.jsonl, the current epoch's
    step from progress.json (`live`, None when absent)."""
    rows = []
    hist = run_dir / HISTORY
    if hist.is_file():
        with contextlib.suppress(Exception):
            rows = read_jsonl(hist)
    live = current_progress(run_dir, since_unix)
    return {
        "epochs_done": len(rows),
        "num_epochs": num_epochs or (live or {}).get("num_epochs"),
        "last": rows[-1] if rows else None,
        "epoch_seconds": statistics.mean(r["epoch_seconds"] for r in rows) if rows else None,
        "live": live,
    }


def _current_epoch(info: dict) -> dict | None:
    """progress.json when it describes the epoch after the last finished one, else None."""
    live = info.get("live")
    if live and live.get("phase") in ("train", "eval") and live.get("epoch") == info["epochs_done"] + 1:
        return live
    return None


def run_eta(info: dict) -> float | None:
    n = info.get("num_epochs")
    done = info["epochs_done"]
    if not n or done >= n:  # nothing left to train (evaluating, or about to)
        return None
    per_epoch = info.get("epoch_seconds")
    in_epoch = None
    live = _current_epoch(info)
    if live and live.get("steps_per_epoch") and live.get("step_in_epoch"):
        seconds_per_step = (live.get("epoch_elapsed_seconds") or 0.0) / live["step_in_epoch"]
        in_epoch = seconds_per_step * max(0, live["steps_per_epoch"] - live["step_in_epoch"])
        if per_epoch is None:
            per_epoch = seconds_per_step * live["steps_per_epoch"]
    if per_epoch is None:
        return None
    left_after = max(0, n - done - 1)
    return (in_epoch if in_epoch is not None else per_epoch) + left_after * per_epoch


def training_status(info: dict, num_epochs: int) -> list[str]:
    """The parts of a status line that describe a training run: epoch, step, val macro-F1, ETA."""
    parts = []
    n = info.get("num_epochs") or num_epochs or 0
    done = info["epochs_done"]
    live = _current_epoch(info)
    if live and live.get("phase") == "eval":
        parts.append(f"epoch {live['epoch']}/{n} validating")
    elif live and live.get("steps_per_epoch"):
        parts.append(
            f"epoch {live['epoch']}/{n} step {live.get('step_in_epoch', 0)}/{live['steps_per_epoch']}"
        )
    elif done < n:
        parts.append(f"epoch {done + 1}/{n}")
    else:
        parts.append(f"{done} epochs done, evaluating")
    last = info.get("last")
    if last and last.get("val_macro_f1") is not None:
        parts.append(f"val macro-F1 {last['val_macro_f1']:.3f}")
    if info.get("epoch_seconds"):
        parts.append(f"{fmt_seconds(info['epoch_seconds'])}/epoch")
    eta = run_eta(info)
    if eta is not None:
        parts.append(f"run ETA {fmt_seconds(eta)}")
    return parts


def study_eta(reg: dict, selected, exclude=None) -> float | None:
    """Rough time for the runs still pending (not those of `exclude`, an id or several): per arm, wall
    seconds per (train example x epoch) of its finished runs, times each pending run's examples x epochs
    (early stopping makes it an upper bound)."""
    exclude = {exclude} if isinstance(exclude, str) else set(exclude or ())
    rate: dict[str, list[float]] = defaultdict(list)
    for rid in reg["order"]:
        r = reg["runs"][rid]
        if r["state"] == "completed" and r.get("num_train_examples") and r.get("seconds_wall"):
            work = r["num_train_examples"] * max(1, r.get("epochs_done") or 1)
            rate[r["arm_name"]].append(r["seconds_wall"] / work)
    total, known = 0.0, False
    for rid in reg["order"]:
        r = reg["runs"][rid]
        if rid in exclude or r["state"] == "completed" or not selected(rid):
            continue
        n = num_train_examples(reg, r)
        if rate.get(r["arm_name"]) and n:
            total += statistics.mean(rate[r["arm_name"]]) * n * max(1, r.get("num_train_epochs") or 1)
            known = True
    return total if known else None
