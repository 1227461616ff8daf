"""Pickle-free training checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint is a folder written to `checkpoint.tmp/` and swapped into `checkpoint/` only once complete,
so a kill at any instant leaves the previous good checkpoint. It holds everything needed to continue
bit-for-bit: trainable weights, optimizer moments, scheduler position, every RNG (Python, NumPy,
torch CPU/CUDA), the epoch, the number of batches already consumed in that epoch, and the running
training statistics of the epoch in progress.
"""

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ftvs.errors import FtvsError
from ftvs.fileio import load_tensors, read_json, replace_dir, save_tensors, write_json
from ftvs.rundir import (
    CHECKPOINT_DIR,
    CHECKPOINT_STATE,
    has_checkpoint,  # noqa: F401  (part of this module's API: save, check, load)
)


def _flatten_optimizer(opt_state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for idx, per_param in opt_state["state"].items():
        for key, value in per_param.items():
            name = f"state.{idx}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value
            else:
                scalars[name] = value
    groups = [{k: v for k, v in g.items() if k != "names"} for g in opt_state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict, dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def restore_rng(tensors: dict, meta: dict) -> None:
    try:
        torch.set_rng_state(tensors["torch_cpu"].to(torch.uint8))
        if torch.cuda.is_available():
            states = [
                tensors[k].to(torch.uint8) for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))
            ]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
        py = meta["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        n = meta["numpy"]
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
        raise FtvsError(
            f"checkpoint RNG state is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "delete the checkpoint folder to restart"
        ) from None


def save_checkpoint(run_dir, *, model_state: dict, optimizer, scheduler, state: dict, running: dict) -> None:
    """Write the whole training state atomically. `state` is JSON (epoch, step, best, ...);
    `running` holds tensors of the epoch in progress (predictions so far, loss sums)."""
    run_dir = Path(run_dir)
    tmp = run_dir / (CHECKPOINT_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_tensors(tmp / "model.safetensors", model_state)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    rng_tensors, rng_meta = rng_state()
    save_tensors(tmp / "rng.safetensors", {**rng_tensors, **{f"running.{k}": v for k, v in running.items()}})
    write_json(
        tmp / CHECKPOINT_STATE,
        {**state, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_meta},
    )
    replace_dir(tmp, run_dir / CHECKPOINT_DIR)


def load_checkpoint(run_dir, device="cpu") -> dict:
    """Read a checkpoint back; any missing, truncated or tampered file is a one-line FtvsError."""
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    if not (ckpt / CHECKPOINT_STATE).is_file():
        raise FtvsError(f"no checkpoint in {run_dir}; start a new run without --resume")
    state = read_json(ckpt / CHECKPOINT_STATE, "checkpoint state")
    if not isinstance(state, dict):
        raise FtvsError(f"checkpoint {ckpt} is corrupt (state.json is not an object); delete it to restart")
    for key in ("epoch", "batches_done", "global_step", "optimizer", "scheduler", "rng"):
        if key not in state:
            raise FtvsError(
                f"checkpoint {ckpt} is incomplete (state.json lacks {key!r}); delete it to restart"
            )
    for key, kind in (
        ("epoch", int),
        ("batches_done", int),
        ("global_step", int),
        ("optimizer", dict),
        ("scheduler", dict),
        ("rng", dict),
    ):
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise FtvsError(
                f"checkpoint {ckpt} is corrupt (state.json {key}={str(value)[:40]!r}); delete it to restart"
            )
    rng = load_tensors(ckpt / "rng.safetensors")
    return {
        "state": state,
        "model": load_tensors(ckpt / "model.safetensors", device),
        "optimizer": _unflatten_optimizer(
            load_tensors(ckpt / "optimizer.safetensors", device), state["optimizer"]
        ),
        "rng_tensors": {k: v for k, v in rng.items() if not k.startswith("running.")},
        "running": {k.removeprefix("running."): v for k, v in rng.items() if k.startswith("running.")},
    }


# --------------------------------------------------------------------------------------------------
# The training loop's state, over every process
# --------------------------------------------------------------------------------------------------


def save_training_state(
    run_dir, accelerator, arm, optimizer, scheduler, state: dict, *, preds: list, labels: list, loss_sum
) -> None:
    """Checkpoint a run: every process calls it (each one's running statistics of the epoch in progress and
    RNG state are gathered, for an exact multi-process resume), the main process writes it. `state` is the
    loop's JSON state; `preds`/`labels` (lists of tensors) and `loss_sum` the epoch's statistics so far."""
    accelerator.wait_for_everyone()
    mine = {
        "preds": torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.long),
        "labels": torch.cat(labels).cpu() if labels else torch.zeros(0, dtype=torch.long),
        "loss_sum": loss_sum.detach().reshape(1).cpu().double(),
    }
    others = []  # (statistics, RNG tensors, RNG meta) of every process but the main one
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        others = gather_object([(mine, *rng_state())])[1:]
    if not accelerator.is_main_process:
        return
    for r, (stats, rng_tensors, _) in enumerate(others, start=1):
        mine.update({f"rank{r}.{k}": v for k, v in {**stats, **rng_tensors}.items()})
    # the arm holds the unwrapped module, so tensor names do not depend on DDP/compile wrappers
    save_checkpoint(
        run_dir,
        model_state=arm.trainable_state_dict(),
        optimizer=optimizer,
        scheduler=scheduler,
        state={**state, "world_size": accelerator.num_processes, "rank_rng": [meta for *_, meta in others]},
        running=mine,
    )


def load_training_state(run_dir, accelerator, arm, optimizer, scheduler) -> tuple[dict, dict]:
    """Restore a run's checkpoint into the arm's trainable weights, the optimizer, the schedule and this
    process's RNGs. Returns the loop's saved state and this process's running statistics of the epoch in
    progress (empty at an epoch boundary)."""
    loaded = load_checkpoint(run_dir, accelerator.device)
    try:
        arm.load_trainable_state_dict(loaded["model"])
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["state"]["scheduler"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as e:
        raise FtvsError(
            f"checkpoint in {Path(run_dir) / CHECKPOINT_DIR} is corrupt or does not fit this model "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); delete it to restart"
        ) from None
    state = loaded["state"]
    saved_world = state.get("world_size", 1)  # checkpoints from before it was recorded: 1
    if saved_world != accelerator.num_processes:
        raise FtvsError(
            f"{run_dir} was trained on {saved_world} process(es), this is {accelerator.num_processes}; "
            f"resume it with `accelerate launch --num_processes {saved_world} -m ftvs train ...`"
        )
    # process r > 0 continues from its own RNG stream and epoch statistics (stored as running.rank{r}.*)
    rank = accelerator.process_index
    if rank:
        mine = {k.split(".", 1)[1]: v for k, v in loaded["running"].items() if k.startswith(f"rank{rank}.")}
        restore_rng(mine, state["rank_rng"][rank - 1])
        return state, mine
    restore_rng(loaded["rng_tensors"], state["rng"])
    return state, {k: v for k, v in loaded["running"].items() if not k.startswith("rank")}
