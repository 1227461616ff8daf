"""Defaults on small data: enough optimizer steps for a run whose batch size and epochs the user left alone.

With the plain defaults (batch 32, 10 epochs) 600 training texts make 190 optimizer steps, 300 texts 100:
too few for AdamW and a warm-up to do their work (Banking77 with 1,000 texts: full fine-tuning after 126
steps stayed near chance, 0.152, while 252 steps reached 0.543; LoRA after 38 steps reached 0.525 on 600
texts, after 189 steps 0.614 on 1,000). So a run aims for `MIN_STEPS` optimizer steps: first a smaller
batch (32 -> 16 -> 8; below 8 the gradient gets noisy and a GPU idles), then more epochs, capped per arm
(early stopping still ends a run that stops improving). Only settings the user did not give change; the
warm-up stays a ratio of the steps actually run, because the schedule is built from the adjusted values.
"""

from __future__ import annotations

import math

MIN_STEPS = 200
SMALLER_BATCHES = (16, 8)
MAX_AUTO_EPOCHS = {"scratch": 30, "finetune": 20}


def steps_per_epoch(num_train: int, batch_size: int, accumulation: int = 1, world_size: int = 1) -> int:
    """Optimizer steps in one epoch: batches are dealt out over the processes, then accumulated."""
    batches = math.ceil(math.ceil(num_train / batch_size) / world_size)
    return max(1, math.ceil(batches / accumulation))


def small_data_defaults(
    arm: str,
    num_train: int,
    batch_size: int,
    epochs: int,
    given: set,
    accumulation: int = 1,
    world_size: int = 1,
) -> dict:
    """The defaults to change so that `epochs` x steps per epoch reaches MIN_STEPS where it can:
    {key: {"value": new value, "reason": why}}; empty when the run already makes enough steps or the
    user gave both the batch size and the epochs (`given`: the config keys the user set)."""
    changes: dict = {}

    def total(b, e):
        return steps_per_epoch(num_train, b, accumulation, world_size) * e

    if total(batch_size, epochs) >= MIN_STEPS:
        return changes
    if "per_device_train_batch_size" not in given:
        smaller = [b for b in SMALLER_BATCHES if b < batch_size]
        pick = next((b for b in smaller if total(b, epochs) >= MIN_STEPS), smaller[-1] if smaller else None)
        if pick is not None:
            changes["per_device_train_batch_size"] = {
                "value": pick,
                "reason": f"{num_train} training texts make {total(batch_size, epochs)} optimizer steps "
                f"at batch {batch_size}; {total(pick, epochs)} at batch {pick} (aim: {MIN_STEPS})",
            }
            batch_size = pick
    if "num_train_epochs" not in given and total(batch_size, epochs) < MIN_STEPS:
        per_epoch = steps_per_epoch(num_train, batch_size, accumulation, world_size)
        cap = MAX_AUTO_EPOCHS.get(arm, epochs)
        more = min(cap, math.ceil(MIN_STEPS / per_epoch))
        if more > epochs:
            changes["num_train_epochs"] = {
                "value": more,
                "reason": f"{per_epoch} optimizer steps per epoch at batch {batch_size}: {more} epochs make "
                f"{per_epoch * more} (aim: {MIN_STEPS}, at most {cap} epochs; early stopping still applies)",
            }
    return changes


def apply_small_data_defaults(cfg, world_size: int = 1) -> dict:
    """Adjust `cfg` (a TrainConfig) in place by the rule above; returns the changes (config.yaml records
    them as `resolved.auto_defaults`). A config built in Python (no `given`) and a run capped by
    --max_train_steps are left as they are."""
    if cfg.given is None or cfg.max_train_steps:
        return {}
    from ftvs.data import load_metadata

    num_train = load_metadata(cfg.data)["splits"]["train"]["count"]
    changes = small_data_defaults(
        cfg.arm,
        num_train,
        cfg.per_device_train_batch_size,
        cfg.num_train_epochs,
        set(cfg.given),
        cfg.gradient_accumulation_steps,
        world_size,
    )
    for key, change in changes.items():
        setattr(cfg, key, change["value"])
    return changes


def describe(changes: dict) -> str:
    """One line for the run's log: what the rule changed."""
    shown = ", ".join(f"{k} {v['value']}" for k, v in changes.items())
    return (
        f"small data: {shown} (defaults adjusted for >= {MIN_STEPS} optimizer steps; "
        "give the flags to override)"
    )
