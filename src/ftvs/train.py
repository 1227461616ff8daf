"""The one training loop, shared by the from-scratch and the fine-tuned arm.

Read it top to bottom: `train()` takes the run folder; `set_up()` builds the data, the arm and the
training step (`TrainStep`: model, optimizer, schedule, batches; the benchmarks in benchmarks/ time this
same step); `start_or_resume()` starts fresh or continues from the last checkpoint; `fit()` runs the
epochs, each one `train_epoch()` then `end_epoch()` (validation, best model, history), a checkpoint and the
early-stopping decision. Arm-specific code goes through the small `Arm` interface (ftvs.arms); saving and
loading the training state lives in checkpoint.py.
"""

import contextlib
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ftvs import checkpoint as ckpt
from ftvs import class_weights
from ftvs.arms import build_arm
from ftvs.batching import IndexedDataset, LengthGroupedBatchSampler, make_collate
from ftvs.compiling import StepCompiler
from ftvs.config import (
    TrainConfig,
    config_differences,
    read_saved_config,
    write_config,
)
from ftvs.data import load_metadata, load_split
from ftvs.distill import DistillLoss, student_data
from ftvs.errors import FtvsError
from ftvs.fileio import (
    RunLock,
    append_jsonl,
    atomic_write_bytes,
    read_jsonl,
    recover_dir,
    replace_dir,
    write_json,
)
from ftvs.inference import make_eval_loader, predict_loader
from ftvs.launch import make_accelerator, training_precision
from ftvs.metrics import summary_metrics
from ftvs.precision import autocast_dtype, resolve_precision
from ftvs.progress import PROGRESS_FILE, ProgressFile
from ftvs.rundir import (
    CONFIG,
    HISTORY,
    METRICS,
    MODEL_DIR,
    TEACHER_INFO,
    TEACHER_LOGITS,
    TRAIN_SUMMARY,
    check_output_dir,
    check_same_data,
    clear_run,
    model_dir,
    read_history,
    read_summary,
)
from ftvs.small_data import apply_small_data_defaults
from ftvs.small_data import describe as describe_auto_defaults
from ftvs.tracking import RunTracker, check_reachable


class NonFiniteLoss(FtvsError):
    pass


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, data_given: bool = True) -> dict:
    """Train one run into `cfg.output_dir`; returns the training summary. `overwrite` replaces a finished
    (or unfinished) run of the same arm there; nothing else is ever replaced (`rundir.check_output_dir`).
    A resumed run continues on other data than it started on only when the user named it (`data_given`)."""
    run_dir = Path(cfg.output_dir)
    if not cfg.output_dir:
        raise FtvsError("no --output_dir given; name a folder for the run")
    if resume and not (run_dir / CONFIG).is_file():
        held = "does not exist" if not run_dir.exists() else "holds no run to continue (no config.yaml)"
        raise FtvsError(f"cannot resume {run_dir}: it {held}; start the run without --resume (resume=False)")
    check_output_dir(run_dir, cfg.arm, data_dir=cfg.data, resume=resume, overwrite=overwrite)
    accelerator = make_accelerator(cfg)
    if accelerator.distributed_type == "FSDP":  # checkpoints/export would hold one process's shard only
        raise FtvsError(
            "FSDP is not supported yet (checkpoints and model export are written from unsharded "
            "parameters); launch with DDP (`accelerate launch --multi_gpu ...`), see docs/multi_gpu.md"
        )
    main = accelerator.is_main_process
    if main:
        check_reachable(cfg)  # an MLflow server that does not answer: one line now, not a hang later
    # the lock first: nothing in the folder is touched while another process may be training there
    with RunLock(run_dir) if main else contextlib.nullcontext():
        if main:
            check_output_dir(run_dir, cfg.arm, data_dir=cfg.data, resume=resume, overwrite=overwrite)
            if overwrite and not resume:  # a student keeps its teacher's logits: reused if still valid
                clear_run(run_dir, keep=(TEACHER_LOGITS, TEACHER_INFO) if cfg.teacher else ())
            # a kill between replace_dir's two renames leaves only "<name>.old": put it back
            for name in (ckpt.CHECKPOINT_DIR, MODEL_DIR):
                recover_dir(run_dir / name)
        accelerator.wait_for_everyone()
        resume = resume and ckpt.has_checkpoint(
            run_dir
        )  # --resume of a run that never checkpointed starts it
        auto_defaults = apply_small_data_defaults(cfg, accelerator.num_processes)
        if auto_defaults:
            accelerator.print(describe_auto_defaults(auto_defaults))
        check_run_dir(run_dir, cfg, resume, data_given)
        setup = set_up(cfg, accelerator, run_dir, resume)
        setup.resolved["auto_defaults"] = auto_defaults
        state, running = start_or_resume(setup, run_dir, resume)
        setup.tracker = RunTracker(cfg, run_dir, main)
        setup.tracker.log_config(cfg, setup.resolved)
        try:
            summary = fit(setup, run_dir, state, running)
        finally:
            setup.tracker.close()
    # every process goes on (to evaluation, which refuses a run still training) once the main process has
    # written the summary and let go of the lock
    accelerator.wait_for_everyone()
    return summary


# --------------------------------------------------------------------------------------------------
# Set-up: accelerator, schedule, the training step
# --------------------------------------------------------------------------------------------------


def lr_lambda(kind: str, warmup_steps: int, total_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return f


def forward_backward(
    accelerator, model, batch: dict, cfg: TrainConfig, class_weight=None, distill: DistillLoss | None = None
) -> tuple:
    """One training micro-batch, called inside `accelerator.accumulate(model)`: forward, loss, backward
    and, on a step that syncs the gradients, clipping. Returns (logits, loss, labels, bad), `bad` being
    the non-finite loss/grad-norm flag (a device tensor: no sync) on a syncing step, else None. With a
    teacher (`distill`) the loss is the distillation loss (ftvs.distill)."""
    index = batch.pop("index")
    labels = batch.pop("labels")
    logits = model(**batch)
    if distill is None:
        loss = F.cross_entropy(
            logits.float(), labels, weight=class_weight, label_smoothing=cfg.label_smoothing
        )
    else:
        loss = distill(logits, labels, index, class_weight, cfg.label_smoothing)
    accelerator.backward(loss)
    if not accelerator.sync_gradients:
        return logits, loss, labels, None
    grad_norm = (
        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        if cfg.max_grad_norm > 0
        else torch.zeros((), device=accelerator.device)
    )
    return logits, loss, labels, ~(torch.isfinite(loss.detach()) & torch.isfinite(torch.as_tensor(grad_norm)))


class TrainStep:
    """The training step of `ftvs train` and what it steps: the prepared model, optimizer and LR schedule,
    and the batches it trains on (`loader`, drawn by `sampler`). Calling it on a batch of `loader` runs one
    micro-batch: forward, loss, backward and, on a step that syncs the gradients, clipping, the optimizer
    and the schedule. Non-finite losses or gradients are flagged on the device (`nonfinite`, `first_bad`:
    no host sync per step) unless --skip_nan_steps tolerates a few, which costs a sync per optimizer step."""

    def __init__(
        self,
        cfg,
        accelerator,
        model,
        optimizer,
        scheduler,
        sampler,
        loader,
        total_steps: int,
        warmup_steps: int,
        compiler: StepCompiler,
    ):
        self.cfg, self.accelerator, self.model, self.optimizer, self.scheduler = (
            cfg,
            accelerator,
            model,
            optimizer,
            scheduler,
        )
        self.sampler, self.loader, self.compiler = sampler, loader, compiler
        self.steps_per_epoch = max(1, math.ceil(len(loader) / cfg.gradient_accumulation_steps))
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.global_step = 0
        self.nonfinite_skipped = 0
        self.class_weight = None  # per-label loss weights on the device (--class_weights), or None
        self.distill = None  # with --teacher: the DistillLoss over the cached teacher logits
        self.reset_fault_flags()

    def reset_fault_flags(self) -> None:
        device = self.accelerator.device
        self.nonfinite = torch.zeros((), device=device, dtype=torch.bool)
        self.first_bad = torch.full(
            (), -1, device=device, dtype=torch.long
        )  # optimizer step of the first fault

    def __call__(self, batch: dict) -> tuple:
        """(logits, loss, labels) of one micro-batch, eager or compiled as `compiler` decides."""
        return self.compiler.run(self._micro_batch, batch)

    def _micro_batch(self, batch: dict) -> tuple:
        cfg, optimizer = self.cfg, self.optimizer
        with self.accelerator.accumulate(self.model):
            logits, loss, labels, bad = forward_backward(
                self.accelerator, self.model, batch, cfg, self.class_weight, self.distill
            )
            if bad is not None:  # a step that syncs the gradients
                if cfg.skip_nan_steps and bad.item():  # tolerating faults costs a sync per step
                    self.nonfinite_skipped += 1
                    if self.nonfinite_skipped > cfg.skip_nan_steps:
                        self.nonfinite |= bad
                    optimizer.zero_grad(set_to_none=True)
                else:
                    self.nonfinite |= bad
                    optimizer.step()
                self.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.first_bad = torch.where(
                    self.nonfinite & (self.first_bad < 0), self.global_step + 1, self.first_bad
                )
                self.global_step += 1
        return logits, loss, labels


def make_train_sampler(arm, examples: list, cfg: TrainConfig) -> LengthGroupedBatchSampler:
    lengths = [arm.example_length(e) for e in examples]
    return LengthGroupedBatchSampler(
        lengths, cfg.per_device_train_batch_size, cfg.seed, grouped=cfg.length_grouping
    )


def build_train_step(
    cfg: TrainConfig, arm, examples: list, labels: list, accelerator, batch_sampler=None
) -> TrainStep:
    """The training step as `ftvs train` sets it up: the length-grouped batch sampler (or `batch_sampler`:
    the benchmarks choose which of its batches they time), dynamic padding, the arm's AdamW groups (fused
    on CUDA), frozen weights stored in the autocast dtype (`Arm.store_frozen_weights`), Accelerate,
    the LR schedule and the `--compile` policy (ftvs.compiling). `cfg.learning_rate` must be set."""
    sampler = batch_sampler or make_train_sampler(arm, examples, cfg)
    # its own generator: creating a loader iterator draws a seed, which must not advance the global RNG
    # (a resumed epoch creates its iterator after the RNG restore, an uninterrupted one before the checkpoint)
    loader = DataLoader(
        IndexedDataset(examples, labels),
        batch_sampler=sampler,
        collate_fn=make_collate(arm),
        num_workers=cfg.num_workers,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    arm.store_frozen_weights(autocast_dtype(accelerator.mixed_precision))
    fused = {"fused": True} if torch.cuda.is_available() else {}
    optimizer = torch.optim.AdamW(
        arm.param_groups(cfg), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), **fused
    )
    model, optimizer, loader = accelerator.prepare(arm.model, optimizer, loader)
    total_steps = max(1, math.ceil(len(loader) / cfg.gradient_accumulation_steps)) * cfg.num_train_epochs
    if cfg.max_train_steps:
        total_steps = min(total_steps, cfg.max_train_steps)
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.lr_scheduler_type, warmup_steps, total_steps)
    )
    total_micro = min(len(loader) * cfg.num_train_epochs, total_steps * cfg.gradient_accumulation_steps)
    compiler = StepCompiler(cfg.compile, arm, accelerator, total_micro, sampler)
    return TrainStep(
        cfg, accelerator, model, optimizer, scheduler, sampler, loader, total_steps, warmup_steps, compiler
    )


def resolve_config(cfg: TrainConfig, arm) -> TrainConfig:
    if cfg.learning_rate is None:
        cfg.learning_rate = arm.default_learning_rate
    return cfg


@dataclass
class Setup:
    """What the loop runs on, built once per process by `set_up`."""

    cfg: TrainConfig
    accelerator: object
    arm: object
    step: TrainStep
    val_loader: DataLoader
    val_labels: list
    label_names: list
    encode_seconds: float
    description: dict  # the arm's sizes as built (before any freeze-then-unfreeze changes what trains)
    resolved: dict  # the derived settings written under `resolved:` in config.yaml and into the summary
    tracker: RunTracker | None = None  # --report_to: set by train() once the run folder is ready

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def set_up(cfg: TrainConfig, accelerator, run_dir: Path | None = None, resume: bool = True) -> Setup:
    """With --teacher, the teacher's logits come from (or go to) `run_dir`'s cache (ftvs.distill); a
    resumed run refuses a cache of another teacher or other texts, a fresh one replaces it."""
    from accelerate.utils import set_seed

    meta = load_metadata(cfg.data)
    label_names = meta["label_names"]
    train_texts, train_labels = load_split(cfg.data, "train")
    val_texts, val_labels = load_split(cfg.data, "val")
    weights = class_weights.resolve(cfg.class_weights, train_labels, label_names)  # bad weights fail first
    # before the seed: loading the teacher must leave the student's random state as without it
    student = student_data(cfg, accelerator, run_dir, train_texts, train_labels, label_names, resume)
    set_seed(cfg.seed)
    texts, labels = student["texts"], student["labels"]  # the training texts, then any unlabeled ones
    arm = build_arm(cfg, texts, label_names)
    cfg = resolve_config(cfg, arm)
    t0 = time.perf_counter()  # tokenising; for a frozen base with the feature cache, its one forward pass
    train_examples = arm.encode(texts)
    val_examples = arm.encode(val_texts)
    encode_seconds = time.perf_counter() - t0 + student["seconds"]

    step = build_train_step(cfg, arm, train_examples, labels, accelerator)
    if student["logits"] is not None:
        step.distill = DistillLoss(
            student["logits"], cfg.distill_alpha, cfg.distill_temperature, accelerator.device
        )
    if weights is not None:
        step.class_weight = torch.tensor(weights, dtype=torch.float32, device=accelerator.device)
    val_loader = accelerator.prepare(
        make_eval_loader(arm, val_examples, val_labels, cfg.per_device_eval_batch_size, cfg.num_workers)
    )
    description = arm.describe()
    resolved = {
        "data_content_hash": meta.get("content_hash"),
        "world_size": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        # why: "requested", "cuda", "cpu amx_bf16: finetune step 1.58x faster in bf16", "cpu without
        # native bf16", ... (ftvs.precision decides per arm and device)
        "mixed_precision_reason": resolve_precision(
            cfg.mixed_precision, accelerator.device.type, cfg.arm
        ).reason,
        "effective_batch_size": cfg.per_device_train_batch_size
        * cfg.gradient_accumulation_steps
        * accelerator.num_processes,
        "steps_per_epoch": step.steps_per_epoch,
        "total_steps": step.total_steps,
        "warmup_steps": step.warmup_steps,
        "num_train_examples": len(train_labels),
        "num_unlabeled_examples": len(texts) - len(train_texts),
        "distill": student["record"],
        "num_val_examples": len(val_examples),
        "params_total": description["params_total"],
        "params_trainable": description["params_trainable"],
        "class_weights": weights,
    }
    accelerator.print(
        f"{cfg.arm} | {description['params_total']:,} params ({description['params_trainable']:,} trainable) "
        "| "
        f"{len(train_labels):,} train{student['unlabeled_text']} / {len(val_examples):,} val | device "
        f"{accelerator.device} | "
        f"{step.steps_per_epoch} steps/epoch x {cfg.num_train_epochs} epochs"
    )
    return Setup(
        cfg,
        accelerator,
        arm,
        step,
        val_loader,
        list(val_labels),
        label_names,
        encode_seconds,
        description,
        resolved,
    )


# --------------------------------------------------------------------------------------------------
# Fresh start or resume
# --------------------------------------------------------------------------------------------------


def check_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool, data_given: bool = True) -> None:
    started = (run_dir / HISTORY).exists() or ckpt.has_checkpoint(run_dir)
    if resume:
        data_hash = load_metadata(cfg.data).get("content_hash")
        check_same_data(run_dir, cfg.data, data_hash, explicit=data_given, doing="resume")
    if started and not resume:
        raise FtvsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --output_dir"
        )
    if resume and (run_dir / CONFIG).is_file():
        saved = read_saved_config(run_dir)
        current = cfg.to_dict()
        if saved.get("learning_rate") is not None and current.get("learning_rate") is None:
            current["learning_rate"] = saved["learning_rate"]
        diff = config_differences(saved, current)
        if diff:
            shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:4])
            raise FtvsError(
                f"--resume with a different config ({shown}); rerun with the original settings or a new "
                "--output_dir"
            )


def start_or_resume(setup: Setup, run_dir: Path, resume: bool) -> tuple[dict, dict]:
    """The loop's state (epoch, batches done in it, best so far, ...) and this process's running statistics
    of an epoch in progress: fresh, or restored with the weights, optimizer, schedule and RNGs."""
    state = {
        "epoch": 0,
        "batches_done": 0,
        "best_val_macro_f1": -1.0,
        "best_epoch": 0,
        "epochs_without_gain": 0,
        "train_seconds": 0.0,
        "encode_seconds": setup.encode_seconds,
    }
    step, history = setup.step, run_dir / HISTORY
    if not resume:
        if setup.main:
            write_config(run_dir, setup.cfg, setup.resolved)
            write_json(run_dir / TRAIN_SUMMARY, {"status": "running"})
            for stale in (HISTORY, METRICS):
                (run_dir / stale).unlink(missing_ok=True)
        return state, {}
    saved, running = ckpt.load_training_state(
        run_dir, setup.accelerator, setup.arm, step.optimizer, step.scheduler
    )
    state.update({k: saved[k] for k in state if k in saved})
    step.global_step = saved["global_step"]
    step.compiler.offset = step.global_step * setup.cfg.gradient_accumulation_steps
    step.nonfinite_skipped = saved.get("nonfinite_skipped", 0)
    if setup.main:  # history beyond the checkpoint came from epochs that will be replayed
        rows = [r for r in read_jsonl(history) if r["epoch"] <= state["epoch"]] if history.exists() else []
        atomic_write_bytes(history, b"")
        for r in rows:
            append_jsonl(history, r)
        write_config(run_dir, setup.cfg, setup.resolved)
    setup.accelerator.print(
        f"resumed {run_dir} at epoch {state['epoch'] + 1}, batch {state['batches_done']}, "
        f"step {step.global_step}"
    )
    return state, running


# --------------------------------------------------------------------------------------------------
# Fit: the epochs
# --------------------------------------------------------------------------------------------------


def fit(setup: Setup, run_dir: Path, state: dict, running: dict) -> dict:
    cfg, patience = setup.cfg, setup.cfg.early_stopping_patience
    progress = ProgressFile(run_dir / PROGRESS_FILE, cfg.num_train_epochs, len(setup.step.loader), setup.main)
    stop_reason = "max_epochs"
    start_epoch = state["epoch"]
    if patience and state["epochs_without_gain"] >= patience:
        start_epoch, stop_reason = (
            cfg.num_train_epochs,
            "early_stopping",
        )  # it had stopped: nothing left to train
    for epoch in range(start_epoch, cfg.num_train_epochs):
        skip = state["batches_done"] if epoch == start_epoch else 0
        trained = train_epoch(setup, run_dir, state, epoch, skip, running if skip else {}, progress)
        progress.write("eval", trained["batches"], setup.step.global_step)
        end_epoch(setup, run_dir, state, epoch, trained)
        running = {}
        state.update(epoch=epoch + 1, batches_done=0)
        save_state(setup, run_dir, state, [], [], torch.zeros((), dtype=torch.float64))
        if trained["reached_max_steps"]:
            stop_reason = "max_train_steps"
            break
        if patience and state["epochs_without_gain"] >= patience:
            stop_reason = "early_stopping"
            setup.accelerator.print(f"early stopping: no val macro-F1 gain for {patience} epochs")
            break
    progress.done(state["epoch"], setup.step.global_step)
    return finish(setup, run_dir, state, stop_reason, progress.started)


def train_epoch(
    setup: Setup, run_dir: Path, state: dict, epoch: int, skip: int, running: dict, progress
) -> dict:
    """One pass over the training batches (after the first `skip`, already trained before a resume)."""
    cfg, accelerator, step = setup.cfg, setup.accelerator, setup.step
    device, num_batches = accelerator.device, len(step.loader)
    setup.arm.on_epoch_start(epoch)
    step.sampler.set_epoch(epoch)
    if hasattr(step.loader, "set_epoch"):  # Accelerate's loader re-sets the sampler's epoch to its own
        step.loader.set_epoch(epoch)  # iteration count, which restarts at 0 in a resumed process
    loader = accelerator.skip_first_batches(step.loader, skip) if skip else step.loader
    preds = [running["preds"].to(device)] if "preds" in running else []
    golds = [running["labels"].to(device)] if "labels" in running else []
    loss_sum = (
        running["loss_sum"].to(device).sum()
        if "loss_sum" in running
        else torch.zeros((), device=device, dtype=torch.float64)
    )
    step.reset_fault_flags()
    step.model.train()
    progress.start_epoch(epoch, skip, step.global_step)
    epoch_start, seen, reached_max_steps, i = time.perf_counter(), 0, False, skip - 1
    bar = tqdm(
        total=num_batches,
        initial=skip,
        desc=f"epoch {epoch + 1}/{cfg.num_train_epochs}",
        disable=cfg.disable_tqdm or not setup.main,
        leave=False,
        unit="batch",
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )
    for i, batch in enumerate(loader, start=skip):
        logits, loss, labels = step(batch)
        preds.append(logits.detach().argmax(-1))
        golds.append(labels)
        loss_sum += loss.detach().double() * labels.shape[0]
        seen += labels.shape[0]
        bar.update(1)
        progress.tick(i + 1, step.global_step)
        if (i + 1) % cfg.logging_steps == 0 or i + 1 == num_batches:
            check_finite(setup, run_dir, state, epoch)
            lr = step.scheduler.get_last_lr()[0]
            if setup.tracker:
                setup.tracker.log_step(step.global_step, loss.item(), lr)
            bar.set_postfix(
                loss=f"{loss.item():.4f}",
                lr=f"{lr:.2e}",
                ex_s=f"{seen / (time.perf_counter() - epoch_start):.0f}",
            )
        if (
            accelerator.sync_gradients
            and cfg.save_steps
            and step.global_step % cfg.save_steps == 0
            and i + 1 < num_batches
        ):
            check_finite(
                setup, run_dir, state, epoch
            )  # never overwrite the last good checkpoint with NaN weights
            save_state(
                setup,
                run_dir,
                {**state, "epoch": epoch, "batches_done": i + 1},
                [p.cpu() for p in preds],
                [g.cpu() for g in golds],
                loss_sum,
            )
        if cfg.max_train_steps and step.global_step >= cfg.max_train_steps:
            reached_max_steps = True
            break
    bar.close()
    check_finite(setup, run_dir, state, epoch)
    seconds = time.perf_counter() - epoch_start
    state["train_seconds"] += seconds
    return {
        "preds": preds,
        "labels": golds,
        "loss_sum": loss_sum,
        "examples": seen,
        "seconds": seconds,
        "batches": i + 1,
        "reached_max_steps": reached_max_steps,
    }


def end_epoch(setup: Setup, run_dir: Path, state: dict, epoch: int, trained: dict) -> None:
    """Train statistics over every process, validation, the history row, the best model so far."""
    accelerator, step, num_labels = setup.accelerator, setup.step, len(setup.label_names)
    preds, gold = (
        accelerator.gather(
            accelerator.pad_across_processes(torch.cat(t).to(accelerator.device), pad_index=-1)
        )
        for t in (trained["preds"], trained["labels"])
    )
    preds, gold = preds[gold >= 0], gold[gold >= 0]
    train_loss = accelerator.reduce(trained["loss_sum"].reshape(1), "sum").item() / max(1, gold.numel())
    train_stats = summary_metrics(gold.cpu().numpy(), preds.cpu().numpy(), num_labels)
    with step.compiler.eager():  # validation: no second graph to compile
        val = predict_loader(step.model, setup.val_loader, len(setup.val_labels), accelerator)
    val_stats = summary_metrics(setup.val_labels, val["y_pred"], num_labels)
    seconds = trained["seconds"]
    row = {
        "epoch": epoch + 1,
        "step": step.global_step,
        "train_loss": train_loss,
        "train_accuracy": train_stats["accuracy"],
        "train_macro_f1": train_stats["macro_f1"],
        "val_loss": val["loss"],
        "val_accuracy": val_stats["accuracy"],
        "val_macro_f1": val_stats["macro_f1"],
        "lr": step.scheduler.get_last_lr()[0],
        "epoch_seconds": seconds,
        "elapsed_seconds": state["train_seconds"],
        "examples_per_second": trained["examples"] * accelerator.num_processes / max(seconds, 1e-9),
    }
    improved = val_stats["macro_f1"] > state["best_val_macro_f1"]
    if improved:
        state.update(best_val_macro_f1=val_stats["macro_f1"], best_epoch=epoch + 1, epochs_without_gain=0)
    else:
        state["epochs_without_gain"] += 1
    if setup.main:
        append_jsonl(run_dir / HISTORY, row)
        if setup.tracker:
            setup.tracker.log_epoch(row)
        if improved:
            _export_best(setup.arm, run_dir)
    accelerator.print(
        f"epoch {epoch + 1:>3} | train loss {train_loss:.4f} acc {train_stats['accuracy']:.4f} | "
        f"val loss {val['loss']:.4f} acc {val_stats['accuracy']:.4f} macro-F1 {val_stats['macro_f1']:.4f}"
        f"{' *' if improved else ''} | {seconds:.1f}s {row['examples_per_second']:.0f} ex/s"
    )


def save_state(setup: Setup, run_dir: Path, state: dict, preds: list, labels: list, loss_sum) -> None:
    """Checkpoint the loop at `state["epoch"]`, `state["batches_done"]` (every process calls it)."""
    step = setup.step
    ckpt.save_training_state(
        run_dir,
        setup.accelerator,
        setup.arm,
        step.optimizer,
        step.scheduler,
        {**state, "global_step": step.global_step, "nonfinite_skipped": step.nonfinite_skipped},
        preds=preds,
        labels=labels,
        loss_sum=loss_sum,
    )


def finish(setup: Setup, run_dir: Path, state: dict, stop_reason: str, started: float) -> dict:
    setup.accelerator.wait_for_everyone()
    history = read_history(run_dir)
    summary = {
        "status": "completed",
        "stop_reason": stop_reason,
        "epochs_run": len(history),
        "best_epoch": state["best_epoch"],
        "best_val_macro_f1": state["best_val_macro_f1"],
        "seconds_total": state["train_seconds"] + state["encode_seconds"],
        "seconds_per_epoch": state["train_seconds"] / max(1, len(history)),
        "seconds_preprocess": state["encode_seconds"],
        "global_step": setup.step.global_step,
        "wall_seconds_this_process": time.perf_counter() - started,
        "nonfinite_steps_skipped": setup.step.nonfinite_skipped,
        "compile": setup.step.compiler.record(),
        "model": setup.description,
        **setup.resolved,
    }
    if setup.main:
        write_json(run_dir / TRAIN_SUMMARY, summary)
    return summary


def check_finite(setup: Setup, run_dir: Path, state: dict, epoch: int) -> None:
    """Fail the run if the step flagged a NaN/Inf loss or gradient (one host sync)."""
    if setup.step.nonfinite.item():
        _fail_nonfinite(run_dir, setup.main, state, epoch, setup.cfg, setup.step.first_bad.item())


def _export_best(arm, run_dir: Path) -> None:
    tmp = run_dir / (MODEL_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    arm.save_pretrained(tmp)
    replace_dir(tmp, model_dir(run_dir))


def _fail_nonfinite(run_dir: Path, main: bool, state: dict, epoch: int, cfg: TrainConfig, step: int):
    ran_fp32 = training_precision(cfg).name == "no"
    fp32 = "" if ran_fp32 else "use --mixed_precision no (fp32), "
    kept = (
        f"the best model so far (epoch {state['best_epoch']}) is kept in {model_dir(run_dir)}"
        if state["best_epoch"]
        else "no epoch finished, so no model was saved"
    )
    msg = (
        f"loss or gradients became NaN/Inf at optimizer step {step} (epoch {epoch + 1}); lower "
        "--learning_rate "
        f"(now {cfg.learning_rate:g}), {fp32}or pass --skip_nan_steps N to tolerate a few; {kept}"
    )
    if main:
        summary = read_summary(run_dir)
        write_json(
            run_dir / TRAIN_SUMMARY,
            {
                **summary,
                "status": "failed",
                "stop_reason": "nonfinite",
                "error": msg,
                "best_epoch": state["best_epoch"],
                "failed_step": step,
            },
        )
    raise NonFiniteLoss(msg)
