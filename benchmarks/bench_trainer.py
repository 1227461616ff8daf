"""Baseline (b): `transformers.Trainer` with its defaults, training the same module ftvs fine-tunes."""

import tempfile
import time

from bench_machine import sync, window


def trainer_round(arm, examples, labels, cfg, precision: str, warmup: int, steps: int, device) -> dict:
    """One `transformers.Trainer.train()` of warmup + steps steps (warm-up: the first step, which also
    builds Trainer's optimizer) on arm.net (the same module ftvs trains),
    with Trainer's defaults: DataCollatorWithPadding (dynamic padding), random order, its own optimizer
    (adamw_torch_fused). A callback times the last `steps` steps (step end to step end, data loading
    included) and the collator records each batch's shape."""
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    records = []
    pad = DataCollatorWithPadding(arm.tokenizer)

    def collate(features):
        batch = pad(features)
        ids = batch["input_ids"]
        records.append((ids.shape[0], ids.shape[1], int(batch["attention_mask"].sum())))
        return batch

    marks = {}

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, warmup + steps):
                sync(device)
                marks[state.global_step] = time.perf_counter()

    data = [{"input_ids": list(e), "labels": int(y)} for e, y in zip(examples, labels)]
    with tempfile.TemporaryDirectory(prefix="ftvs-bench-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=cfg.per_device_train_batch_size,
            max_steps=warmup + steps,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            lr_scheduler_type="constant",
            warmup_steps=0,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=device.type != "cuda",
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            seed=cfg.seed,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            label_names=["labels"],
        )
        trainer = Trainer(
            model=arm.net, args=args, train_dataset=data, data_collator=collate, callbacks=[StepClock()]
        )
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict to stdout
        out = trainer.train()
    timed = records[warmup : warmup + steps]
    result = window(marks[warmup + steps] - marks[warmup], timed)
    result["trainer_train_samples_per_second"] = out.metrics.get("train_samples_per_second")
    result["optimizer"] = str(getattr(args.optim, "value", args.optim))
    return result
