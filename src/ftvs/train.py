"""The one training loop, shared by the from-scratch and the fine-tuned arm.

Read it top to bottom: `train()` sets up (data, arm, optimizer, schedule, Accelerate), optionally
resumes from the last checkpoint, then runs epochs; each epoch trains, validates, keeps the best model,
checkpoints and decides on early stopping. Everything the arm-specific code contributes goes through
the small `Arm` interface (arms.py).
"""

import contextlib
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ftvs import checkpoint as ckpt
from ftvs.arms import build_arm
from ftvs.batching import IndexedDataset, LengthGroupedBatchSampler, make_collate
from ftvs.config import TrainConfig, config_differences, resolve_mixed_precision
from ftvs.data import load_metadata, load_split
from ftvs.errors import FtvsError
from ftvs.fileio import (
    RunLock,
    append_jsonl,
    atomic_write_bytes,
    read_json,
    read_jsonl,
    recover_dir,
    replace_dir,
    write_json,
)
from ftvs.inference import make_eval_loader, predict_loader
from ftvs.metrics import summary_metrics


class NonFiniteLoss(FtvsError):
    pass


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    precision = resolve_mixed_precision(cfg.mixed_precision, torch.cuda.is_available())
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: ~free speed for fp32 parts
        torch.backends.cudnn.allow_tf32 = True
    from accelerate.utils import DistributedDataParallelKwargs

    from ftvs.launch import force_cpu

    # freeze-then-unfreeze leaves the base without gradients for the first epochs: DDP must expect that
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.arm == "finetune" and cfg.method == "unfreeze")
    from accelerate.utils import DataLoaderConfiguration

    # the train loader's batches are pinned on CUDA: copy them asynchronously (a blocking copy makes the
    # host wait for the GPU to finish the previous step before it can queue the next one)
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       cpu=force_cpu(), kwargs_handlers=[ddp],
                       dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()))


def lr_lambda(kind: str, warmup_steps: int, total_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return f


def forward_backward(accelerator, model, batch: dict, cfg: TrainConfig) -> tuple:
    """One training micro-batch, called inside `accelerator.accumulate(model)`: forward, loss, backward
    and, on a step that syncs the gradients, clipping. Returns (logits, loss, labels, bad), `bad` being
    the non-finite loss/grad-norm flag (a device tensor: no sync) on a syncing step, else None."""
    batch.pop("index")
    labels = batch.pop("labels")
    logits = model(**batch)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
    accelerator.backward(loss)
    if not accelerator.sync_gradients:
        return logits, loss, labels, None
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) \
        if cfg.max_grad_norm > 0 else torch.zeros((), device=accelerator.device)
    return logits, loss, labels, ~(torch.isfinite(loss.detach()) & torch.isfinite(torch.as_tensor(grad_norm)))


def resolve_config(cfg: TrainConfig, arm) -> TrainConfig:
    if cfg.learning_rate is None:
        cfg.learning_rate = arm.default_learning_rate
    return cfg


def write_config(run_dir: Path, cfg: TrainConfig, extra: dict) -> None:
    text = yaml.safe_dump({**cfg.to_dict(), "resolved": extra}, sort_keys=False)
    atomic_write_bytes(run_dir / "config.yaml", text.encode())


def read_saved_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FtvsError(f"{run_dir} has no config.yaml; it is not an ftvs run dir")
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("resolved", None)
    return data


def check_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool) -> None:
    started = (run_dir / "history.jsonl").exists() or ckpt.has_checkpoint(run_dir)
    if started and not resume:
        raise FtvsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output_dir")
    if resume and (run_dir / "config.yaml").is_file():
        saved = read_saved_config(run_dir)
        current = cfg.to_dict()
        if saved.get("learning_rate") is not None and current.get("learning_rate") is None:
            current["learning_rate"] = saved["learning_rate"]
        diff = config_differences(saved, current)
        if diff:
            shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:4])
            raise FtvsError(f"--resume with a different config ({shown}); rerun with the original settings or a new --output_dir")


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train one run into `cfg.output_dir`; returns the training summary."""
    run_dir = Path(cfg.output_dir)
    if not cfg.output_dir:
        raise FtvsError("no --output_dir given; name a folder for the run")
    accelerator = make_accelerator(cfg)
    if accelerator.distributed_type == "FSDP":  # checkpoints/export would hold one process's shard only
        raise FtvsError("FSDP is not supported yet (checkpoints and model export are written from unsharded "
                        "parameters); launch with DDP (`accelerate launch --multi_gpu ...`), see docs/multi_gpu.md")
    main = accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    with RunLock(run_dir) if main else contextlib.nullcontext():
        if main:  # a kill between replace_dir's two renames leaves only "<name>.old": put it back
            for name in (ckpt.CHECKPOINT_DIR, "model"):
                recover_dir(run_dir / name)
        accelerator.wait_for_everyone()
        resume = resume and ckpt.has_checkpoint(run_dir)  # --resume of a run that never checkpointed starts it
        check_run_dir(run_dir, cfg, resume)
        return _train(cfg, run_dir, accelerator, resume)


def _train(cfg: TrainConfig, run_dir: Path, accelerator, resume: bool) -> dict:
    from accelerate.utils import set_seed

    main = accelerator.is_main_process
    log = accelerator.print
    set_seed(cfg.seed)

    # --- data and model -------------------------------------------------------------------------
    meta = load_metadata(cfg.data)
    label_names = meta["label_names"]
    train_texts, train_labels = load_split(cfg.data, "train")
    val_texts, val_labels = load_split(cfg.data, "val")
    arm = build_arm(cfg, train_texts, label_names)
    cfg = resolve_config(cfg, arm)
    t0 = time.perf_counter()  # tokenising; for a frozen base with the feature cache, its one forward pass
    train_examples = arm.encode(train_texts)
    val_examples = arm.encode(val_texts)
    encode_seconds = time.perf_counter() - t0
    model = arm.model

    lengths = [arm.example_length(e) for e in train_examples]
    sampler = LengthGroupedBatchSampler(lengths, cfg.per_device_train_batch_size, cfg.seed,
                                        grouped=cfg.length_grouping)
    pin = torch.cuda.is_available()
    # its own generator: creating a loader iterator draws a seed, which must not advance the global RNG
    # (a resumed epoch creates its iterator after the RNG restore, an uninterrupted one before the checkpoint)
    train_loader = DataLoader(IndexedDataset(train_examples, train_labels), batch_sampler=sampler,
                              collate_fn=make_collate(arm), num_workers=cfg.num_workers, pin_memory=pin,
                              generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = make_eval_loader(arm, val_examples, val_labels, cfg.per_device_eval_batch_size, cfg.num_workers)

    fused = {"fused": True} if torch.cuda.is_available() else {}
    optimizer = torch.optim.AdamW(arm.param_groups(cfg), lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), **fused)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    if cfg.compile:
        model = torch.compile(model)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / cfg.gradient_accumulation_steps))
    total_steps = steps_per_epoch * cfg.num_train_epochs
    if cfg.max_train_steps:
        total_steps = min(total_steps, cfg.max_train_steps)
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.lr_scheduler_type, warmup_steps, total_steps))

    description = arm.describe()
    resolved = {"world_size": accelerator.num_processes, "device": str(accelerator.device),
                "mixed_precision": accelerator.mixed_precision,
                "effective_batch_size": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
                * accelerator.num_processes,
                "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "warmup_steps": warmup_steps,
                "num_train_examples": len(train_examples), "num_val_examples": len(val_examples),
                "params_total": description["params_total"], "params_trainable": description["params_trainable"]}

    # --- state, fresh or resumed ----------------------------------------------------------------
    state = {"epoch": 0, "batches_done": 0, "global_step": 0, "best_val_macro_f1": -1.0, "best_epoch": 0,
             "epochs_without_gain": 0, "train_seconds": 0.0, "nonfinite_skipped": 0,
             "encode_seconds": encode_seconds}
    running = {}
    if resume:
        loaded = ckpt.load_checkpoint(run_dir, accelerator.device)
        try:
            arm.load_trainable_state_dict(loaded["model"])
            optimizer.load_state_dict(loaded["optimizer"])
            scheduler.load_state_dict(loaded["state"]["scheduler"])
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as e:
            raise FtvsError(f"checkpoint in {run_dir / ckpt.CHECKPOINT_DIR} is corrupt or does not fit this model "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); delete it to restart") from None
        state.update({k: loaded["state"][k] for k in state if k in loaded["state"]})
        saved_world = loaded["state"].get("world_size", 1)  # checkpoints from before it was recorded: 1
        if saved_world != accelerator.num_processes:
            raise FtvsError(f"{run_dir} was trained on {saved_world} process(es), this is {accelerator.num_processes}; "
                            f"resume it with `accelerate launch --num_processes {saved_world} -m ftvs train ...`")
        # process r > 0 continues from its own RNG stream and epoch statistics (stored as running.rank{r}.*)
        rank = accelerator.process_index
        mine = {k.split(".", 1)[1]: v for k, v in loaded["running"].items() if k.startswith(f"rank{rank}.")}
        if rank:
            loaded["rng_tensors"], loaded["state"]["rng"] = mine, loaded["state"]["rank_rng"][rank - 1]
        ckpt.restore_rng(loaded["rng_tensors"], loaded["state"]["rng"])
        running = mine if rank else {k: v for k, v in loaded["running"].items() if not k.startswith("rank")}
        if main:  # history beyond the checkpoint came from epochs that will be replayed
            rows = [r for r in read_jsonl(run_dir / "history.jsonl") if r["epoch"] <= state["epoch"]] \
                if (run_dir / "history.jsonl").exists() else []
            atomic_write_bytes(run_dir / "history.jsonl", b"")
            for r in rows:
                append_jsonl(run_dir / "history.jsonl", r)
        log(f"resumed {run_dir} at epoch {state['epoch'] + 1}, batch {state['batches_done']}, step {state['global_step']}")
    elif main:
        write_config(run_dir, cfg, resolved)
        write_json(run_dir / "train_summary.json", {"status": "running"})
        for stale in ("history.jsonl", "metrics.json"):
            (run_dir / stale).unlink(missing_ok=True)
    if main and resume:
        write_config(run_dir, cfg, resolved)

    log(f"{cfg.arm} | {description['params_total']:,} params ({description['params_trainable']:,} trainable) | "
        f"{len(train_examples):,} train / {len(val_examples):,} val | device {accelerator.device} | "
        f"{steps_per_epoch} steps/epoch x {cfg.num_train_epochs} epochs")

    def save_state(epoch, batches_done, run_preds, run_labels, run_loss):
        accelerator.wait_for_everyone()
        mine = {"preds": torch.cat(run_preds).cpu() if run_preds else torch.zeros(0, dtype=torch.long),
                "labels": torch.cat(run_labels).cpu() if run_labels else torch.zeros(0, dtype=torch.long),
                "loss_sum": run_loss.detach().reshape(1).cpu().double()}
        others = []  # every other process's epoch statistics and RNG state, for an exact multi-process resume
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            others = gather_object([(mine, *ckpt.rng_state())])[1:]
        if main:
            for r, (stats, rng_tensors, _) in enumerate(others, start=1):
                mine.update({f"rank{r}.{k}": v for k, v in {**stats, **rng_tensors}.items()})
            # the arm holds the unwrapped module, so tensor names do not depend on DDP/compile wrappers
            ckpt.save_checkpoint(
                run_dir, model_state=arm.trainable_state_dict(),
                optimizer=optimizer, scheduler=scheduler,
                state={**state, "epoch": epoch, "batches_done": batches_done,
                       "world_size": accelerator.num_processes, "rank_rng": [meta for *_, meta in others]},
                running=mine)

    stop_reason = "max_epochs"
    start_epoch = state["epoch"]
    if cfg.early_stopping_patience and state["epochs_without_gain"] >= cfg.early_stopping_patience:
        start_epoch, stop_reason = cfg.num_train_epochs, "early_stopping"  # it had stopped: nothing left to train
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.num_train_epochs):
        arm.on_epoch_start(epoch)
        sampler.set_epoch(epoch)
        if hasattr(train_loader, "set_epoch"):  # Accelerate's loader re-sets the sampler's epoch to its own
            train_loader.set_epoch(epoch)  # iteration count, which restarts at 0 in a resumed process
        skip = state["batches_done"] if epoch == start_epoch else 0
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        run_preds = [running["preds"].to(accelerator.device)] if skip and "preds" in running else []
        run_labels = [running["labels"].to(accelerator.device)] if skip and "labels" in running else []
        run_loss = running["loss_sum"].to(accelerator.device).sum() if skip and "loss_sum" in running \
            else torch.zeros((), device=accelerator.device, dtype=torch.float64)
        nonfinite = torch.zeros((), device=accelerator.device, dtype=torch.bool)
        first_bad = torch.full((), -1, device=accelerator.device, dtype=torch.long)  # no sync per step
        model.train()
        epoch_start = time.perf_counter()
        seen = 0
        bar = tqdm(total=len(train_loader), initial=skip, desc=f"epoch {epoch + 1}/{cfg.num_train_epochs}",
                   disable=cfg.disable_tqdm or not main, leave=False, unit="batch",
                   mininterval=0.5 if sys.stderr.isatty() else 30)
        for i, batch in enumerate(loader, start=skip):
            with accelerator.accumulate(model):
                logits, loss, labels, bad = forward_backward(accelerator, model, batch, cfg)
                if bad is not None:  # a step that syncs the gradients
                    if cfg.skip_nan_steps and bad.item():  # tolerating faults costs a sync per step
                        state["nonfinite_skipped"] += 1
                        if state["nonfinite_skipped"] > cfg.skip_nan_steps:
                            nonfinite |= bad
                        optimizer.zero_grad(set_to_none=True)
                    else:
                        nonfinite |= bad
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    first_bad = torch.where(nonfinite & (first_bad < 0), state["global_step"] + 1, first_bad)
                    state["global_step"] += 1
            run_preds.append(logits.detach().argmax(-1))
            run_labels.append(labels)
            run_loss += loss.detach().double() * labels.shape[0]
            seen += labels.shape[0]
            bar.update(1)
            at_log = (i + 1) % cfg.logging_steps == 0 or i + 1 == len(train_loader)
            if at_log:
                if nonfinite.item():
                    _fail_nonfinite(run_dir, main, state, epoch, cfg, first_bad.item())
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                ex_s=f"{seen / (time.perf_counter() - epoch_start):.0f}")
            sync_point = accelerator.sync_gradients
            if sync_point and cfg.save_steps and state["global_step"] % cfg.save_steps == 0 and i + 1 < len(train_loader):
                if nonfinite.item():  # never overwrite the last good checkpoint with NaN weights
                    _fail_nonfinite(run_dir, main, state, epoch, cfg, first_bad.item())
                save_state(epoch, i + 1, [p.cpu() for p in run_preds], [lab.cpu() for lab in run_labels], run_loss)
            if cfg.max_train_steps and state["global_step"] >= cfg.max_train_steps:
                stop_reason = "max_train_steps"
                break
        bar.close()
        if nonfinite.item():
            _fail_nonfinite(run_dir, main, state, epoch, cfg, first_bad.item())
        epoch_seconds = time.perf_counter() - epoch_start
        state["train_seconds"] += epoch_seconds

        # --- end of epoch: train statistics, validation, best model, checkpoint, early stopping -
        preds, gold = (accelerator.gather(accelerator.pad_across_processes(
            torch.cat(t).to(accelerator.device), pad_index=-1)) for t in (run_preds, run_labels))
        preds, gold = preds[gold >= 0], gold[gold >= 0]
        train_loss = accelerator.reduce(run_loss.reshape(1), "sum").item() / max(1, gold.numel())
        train_stats = summary_metrics(gold.cpu().numpy(), preds.cpu().numpy(), len(label_names))
        val = predict_loader(model, val_loader, len(val_examples), accelerator)
        val_stats = summary_metrics(val_labels, val["y_pred"], len(label_names))
        row = {"epoch": epoch + 1, "step": state["global_step"], "train_loss": train_loss,
               "train_accuracy": train_stats["accuracy"], "train_macro_f1": train_stats["macro_f1"],
               "val_loss": val["loss"], "val_accuracy": val_stats["accuracy"], "val_macro_f1": val_stats["macro_f1"],
               "lr": scheduler.get_last_lr()[0], "epoch_seconds": epoch_seconds,
               "elapsed_seconds": state["train_seconds"],
               "examples_per_second": seen * accelerator.num_processes / max(epoch_seconds, 1e-9)}
        improved = val_stats["macro_f1"] > state["best_val_macro_f1"]
        if improved:
            state.update(best_val_macro_f1=val_stats["macro_f1"], best_epoch=epoch + 1, epochs_without_gain=0)
        else:
            state["epochs_without_gain"] += 1
        if main:
            append_jsonl(run_dir / "history.jsonl", row)
            if improved:
                _export_best(arm, run_dir)
        log(f"epoch {epoch + 1:>3} | train loss {train_loss:.4f} acc {train_stats['accuracy']:.4f} | "
            f"val loss {val['loss']:.4f} acc {val_stats['accuracy']:.4f} macro-F1 {val_stats['macro_f1']:.4f}"
            f"{' *' if improved else ''} | {epoch_seconds:.1f}s {row['examples_per_second']:.0f} ex/s")
        running = {}
        save_state(epoch + 1, 0, [], [], torch.zeros((), dtype=torch.float64))
        if stop_reason == "max_train_steps":
            break
        if cfg.early_stopping_patience and state["epochs_without_gain"] >= cfg.early_stopping_patience:
            stop_reason = "early_stopping"
            log(f"early stopping: no val macro-F1 gain for {cfg.early_stopping_patience} epochs")
            break

    accelerator.wait_for_everyone()
    history = read_jsonl(run_dir / "history.jsonl") if (run_dir / "history.jsonl").exists() else []
    summary = {"status": "completed", "stop_reason": stop_reason, "epochs_run": len(history),
               "best_epoch": state["best_epoch"], "best_val_macro_f1": state["best_val_macro_f1"],
               "seconds_total": state["train_seconds"] + state["encode_seconds"],
               "seconds_per_epoch": state["train_seconds"] / max(1, len(history)),
               "seconds_preprocess": state["encode_seconds"],
               "global_step": state["global_step"], "wall_seconds_this_process": time.perf_counter() - started,
               "nonfinite_steps_skipped": state["nonfinite_skipped"], "model": description, **resolved}
    if main:
        write_json(run_dir / "train_summary.json", summary)
    return summary


def _export_best(arm, run_dir: Path) -> None:
    tmp = run_dir / "model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    arm.save_pretrained(tmp)
    replace_dir(tmp, run_dir / "model")


def _fail_nonfinite(run_dir: Path, main: bool, state: dict, epoch: int, cfg: TrainConfig, step: int):
    fp32 = "" if cfg.mixed_precision == "no" else "use --mixed_precision no (fp32), "
    kept = (f"the best model so far (epoch {state['best_epoch']}) is kept in {run_dir / 'model'}"
            if state["best_epoch"] else "no epoch finished, so no model was saved")
    msg = (f"loss or gradients became NaN/Inf at optimizer step {step} (epoch {epoch + 1}); lower --learning_rate "
           f"(now {cfg.learning_rate:g}), {fp32}or pass --skip_nan_steps N to tolerate a few; {kept}")
    if main:
        summary = read_json(run_dir / "train_summary.json") if (run_dir / "train_summary.json").exists() else {}
        write_json(run_dir / "train_summary.json", {**summary, "status": "failed", "stop_reason": "nonfinite",
                                                     "error": msg, "best_epoch": state["best_epoch"],
                                                     "failed_step": step})
    raise NonFiniteLoss(msg)

