"""What the report says about each model (architecture, head, tokenizer, sizes, settings) and the data set."""

from __future__ import annotations

import numpy as np

from ftvs import rundir
from ftvs.comparison.runs import Run, resolve_data_dir
from ftvs.config import FINETUNE_ONLY, SCRATCH_ONLY
from ftvs.fileio import read_json, read_jsonl


def describe_model(run: Run) -> dict:
    """Architecture outline, head, tokenizer and sizes (metrics.json `model` → model/ftvs.json → config)."""
    m = run.metrics
    desc = dict(m.get("model") or {})
    arch = dict(desc.get("architecture") or {})
    if not arch:
        if run.arm == "scratch":
            for k in ("preset", "n_layer", "n_head", "n_embd", "d_ff", "pooling", "positional", "dropout"):
                v = run.config.get(k, run.marker.get(k))
                if v is not None:
                    arch[k] = v
        elif run.arm == "finetune":
            arch["base model"] = run.model_name
    tok = desc.get("tokenizer") or {}
    if not tok and run.arm == "scratch":
        tok = {"type": run.config.get("tokenizer")}
    elif not tok and run.arm == "finetune":
        tok = {"type": f"pre-trained tokenizer of {run.model_name}"}
    params = m.get("params") or {}
    return {
        "run": run.name,
        "arm": run.arm,
        "method": run.method,
        "model_name": run.model_name,
        "architecture": arch,
        "head": desc.get("head") or run.marker.get("head"),
        "tokenizer": tok,
        "params_total": params.get("total", desc.get("params_total")),
        "params_trainable": params.get("trainable", desc.get("params_trainable")),
        "params_embedding": desc.get("params_embedding"),
        "size_on_disk_bytes": m.get("size_on_disk_bytes"),
        "max_seq_length": run.config.get("max_seq_length"),
        "training": {
            k: run.config.get(k)
            for k in (
                "learning_rate",
                "num_train_epochs",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "weight_decay",
                "warmup_ratio",
                "lr_scheduler_type",
                "max_grad_norm",
                "dropout",
                "token_dropout",
                "label_smoothing",
                "class_weights",
                "early_stopping_patience",
                "lora_r",
                "lora_alpha",
                "C",
            )
            if run.config.get(k) is not None
            and not (run.arm != "finetune" and k in FINETUNE_ONLY)
            and not (run.arm != "scratch" and k in SCRATCH_ONLY)
        },
        "resolved": run.config.get("resolved") or {},
    }


def describe_dataset(runs: list[Run], n_examples: int = 6, seed: int = 0) -> dict:
    """metadata.json of the runs' data folder plus a few seeded examples (distinct classes)."""
    data_dir = next((d for d in (resolve_data_dir(r) for r in runs) if d is not None), None)
    if data_dir is None:
        return {"available": False, "data_dir": runs[0].data_dir if runs else None}
    meta = read_json(data_dir / rundir.DATA_METADATA, "data metadata")
    names = meta.get("label_names") or []
    examples = []
    path = data_dir / "train.jsonl"
    if path.is_file():
        rows = read_jsonl(path)
        rng = np.random.default_rng(seed)
        seen = set()
        for i in rng.permutation(len(rows)):
            row = rows[int(i)]
            if row.get("label") in seen:
                continue
            seen.add(row.get("label"))
            label = row.get("label")
            examples.append(
                {
                    "text": str(row.get("text", "")),
                    "label": names[label] if isinstance(label, int) and 0 <= label < len(names) else label,
                }
            )
            if len(examples) >= n_examples:
                break
    per_class = ((meta.get("splits") or {}).get("train") or {}).get("per_class") or {}
    counts = [int(v) for v in per_class.values()] if per_class else []
    return {
        "available": True,
        "data_dir": str(data_dir),
        "source": meta.get("source"),
        "source_description": meta.get("source_description"),
        "num_labels": meta.get("num_labels", len(names)),
        "label_names": names,
        "splits": {k: {"count": (v or {}).get("count")} for k, v in (meta.get("splits") or {}).items()},
        "train_per_class_min": min(counts) if counts else None,
        "train_per_class_max": max(counts) if counts else None,
        "train_per_class_median": float(np.median(counts)) if counts else None,
        "length_words": meta.get("length_words"),
        "length_tokens": meta.get("length_tokens"),
        "tokenizer_for_stats": meta.get("tokenizer"),
        "cleaning": meta.get("cleaning") or {},
        "val_source": meta.get("val_source"),
        "test_source": meta.get("test_source"),
        "validation_split": meta.get("validation_split"),
        "test_split": meta.get("test_split"),
        "max_train_examples": meta.get("max_train_examples"),
        "seed": meta.get("seed"),
        "train_fraction": meta.get("train_fraction"),
        "content_hash": meta.get("content_hash"),
        "examples": examples,
    }
