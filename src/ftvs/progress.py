"""RUN/progress.json: how far a training run is, written by the training loop (ftvs.train) and read by whoever
shows progress and ETA (`ftvs study`), never parsed from progress-bar text.

Keys: phase ("train" | "eval" | "done"), epoch (the current one, 1-based), num_epochs, epochs_done,
step_in_epoch (micro-batches done in this epoch), steps_per_epoch (micro-batches per epoch), global_step
(optimizer steps), elapsed_seconds (since this process started training), epoch_elapsed_seconds, updated_unix
(time.time() of the write).
"""

import json
import time
from pathlib import Path

from ftvs.fileio import write_json

PROGRESS_FILE = "progress.json"


class ProgressFile:
    """The writer: atomically at the start of every epoch, at most once a second while training, at the
    validation pass and at the end ("done"); only where `enabled` (the main process)."""

    MIN_INTERVAL_SECONDS = 1.0

    def __init__(self, path: Path, num_epochs: int, steps_per_epoch: int, enabled: bool):
        self.path, self.num_epochs, self.steps_per_epoch, self.enabled = (
            path,
            num_epochs,
            steps_per_epoch,
            enabled,
        )
        self.started = self.epoch_started = self.last_write = time.perf_counter()
        self.epoch = 0  # 0-based, of the epoch in progress

    def start_epoch(self, epoch: int, step_in_epoch: int, global_step: int) -> None:
        self.epoch, self.epoch_started = epoch, time.perf_counter()
        self.write("train", step_in_epoch, global_step)

    def tick(self, step_in_epoch: int, global_step: int) -> None:
        if self.enabled and time.perf_counter() - self.last_write >= self.MIN_INTERVAL_SECONDS:
            self.write("train", step_in_epoch, global_step)

    def done(self, epochs_done: int, global_step: int) -> None:
        self.epoch = max(0, epochs_done - 1)
        self.write("done", self.steps_per_epoch, global_step, epochs_done)

    def write(self, phase: str, step_in_epoch: int, global_step: int, epochs_done: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        write_json(
            self.path,
            {
                "phase": phase,
                "epoch": self.epoch + 1,
                "num_epochs": self.num_epochs,
                "epochs_done": self.epoch if epochs_done is None else epochs_done,
                "step_in_epoch": step_in_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "global_step": global_step,
                "elapsed_seconds": now - self.started,
                "epoch_elapsed_seconds": now - self.epoch_started,
                "updated_unix": time.time(),
            },
        )
        self.last_write = now


def read_progress(run_dir) -> dict | None:
    """The run's last progress.json, or None while there is none (not started) or it cannot be read."""
    try:
        progress = json.loads((Path(run_dir) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) else None
