"""Training configuration: one dataclass, filled from defaults ← YAML file ← command-line flags.

YAML keys are the flag names (`learning_rate`, `num_train_epochs`, ...); each field carries its default, its
flag help and its allowed values (the `ftvs train` flags are built from them). The resolved config is written
into every run dir, and `--resume` refuses a run whose saved config differs in anything that would
change the result.
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from ftvs.errors import FtvsError, closest, is_count
from ftvs.fileio import atomic_write_bytes
from ftvs.rundir import CONFIG


def default_learning_rates() -> str:
    """The arms' table of default learning rates, in words (the help of --learning_rate)."""
    from ftvs.arms.base import describe_default_learning_rates  # lazy: ftvs.arms imports torch

    return describe_default_learning_rates()


def option(default, help: str, choices: tuple = (), default_text=None):
    """A config field with its flag help; `choices` are checked by `validate`; `default_text`, a function,
    describes a default that is resolved later (shown in --help instead of the field's None)."""
    metadata = {"help": help, "choices": choices, "default_text": default_text}
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    # what to train
    arm: str = option("scratch", "scratch | finetune", choices=("scratch", "finetune"))
    data: str = option("", "prepared data folder (from `ftvs prepare`)")
    output_dir: str = option("", "run folder: config, history, checkpoints, best model, metrics")
    seed: int = option(0, "seed for Python, NumPy, torch and the batch order")
    # from-scratch model
    preset: str = option("tiny", "from-scratch size preset: tiny, small, medium, large (see `ftvs models`)")
    n_layer: int | None = option(None, "override the preset's number of transformer blocks")
    n_head: int | None = option(None, "override the preset's attention heads")
    n_embd: int | None = option(None, "override the preset's width")
    d_ff: int | None = option(None, "override the preset's feed-forward width")
    pooling: str = option(
        "last",
        "how token states become one vector: last (last non-pad token), mean or max",
        choices=("last", "mean", "max"),
    )
    positional: str = option(
        "learned", "position embeddings: learned or sinusoidal", choices=("learned", "sinusoidal")
    )
    dropout: float = option(0.1, "dropout in embeddings, attention, MLP and head")
    token_dropout: float = option(
        0.0, "word dropout: during training each token becomes <unk> with this probability"
    )
    tokenizer: str = option(
        "smollm2-135m",
        "pre-trained tokenizer to reuse (name or path; trimmed to the training "
        "vocabulary), or 'bpe' to train a byte-level BPE on the training split",
    )
    bpe_vocab_size: int = option(8000, "vocabulary size when --tokenizer bpe")
    max_vocab: int = option(
        16000, "keep at most this many most frequent training tokens in the embedding table"
    )
    lowercase: bool = option(
        False,
        "lower-case texts before the from-scratch tokenizer (merges 'Card'/'card'; the "
        "fine-tuned arm always sees the original text)",
    )
    # fine-tuned model
    model_name_or_path: str = option(
        "smollm2-135m",
        "pre-trained decoder-only model: built-in 'smollm2-135m' "
        "(offline), a Hub id (gpt2, EleutherAI/pythia-160m, Qwen/Qwen2.5-0.5B, ...) or a "
        "local folder",
    )
    method: str = option(
        "lora",
        "lora (adapters + head), full (all weights), frozen (head only), unfreeze (head, then top blocks)",
        choices=("lora", "full", "frozen", "unfreeze"),
    )
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(16, "LoRA scaling alpha")
    lora_dropout: float = option(
        0.0,
        "dropout on the input of each LoRA adapter; 0 as in peft (0.05 scored the same over 3 seeds "
        "and cost a quarter of a bf16 LoRA step on the CPU: benchmarks/checks/test_lora_dropout.py)",
    )
    lora_target_modules: list[str] | None = option(
        None, "modules to adapt (default: attention projections of the architecture)"
    )
    unfreeze_after_epochs: int = option(1, "method unfreeze: epochs of head-only training before unfreezing")
    unfreeze_top_k: int | None = option(
        None, "method unfreeze: number of top blocks to unfreeze (default all)"
    )
    base_lr_ratio: float = option(0.1, "method unfreeze: base learning rate = learning_rate x this ratio")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    feature_cache: bool = option(
        True, "method frozen: run the base once and train the head on cached features"
    )
    # optimisation
    max_seq_length: int = option(
        128, "truncate texts to this many tokens (batches are padded to their longest text only)"
    )
    num_train_epochs: int = option(
        10,
        "maximum epochs (early stopping may end sooner); if not given and the run would make fewer than 200 "
        "optimizer steps, it rises after the batch size (at most 30 scratch, 20 finetune)",
    )
    per_device_train_batch_size: int = option(
        32,
        "training batch size per process; if not given and the run would make fewer than 200 optimizer "
        "steps (small data), 16 or 8",
    )
    per_device_eval_batch_size: int = option(128, "evaluation batch size per process")
    gradient_accumulation_steps: int = option(1, "batches per optimizer step")
    learning_rate: float | None = option(
        None, "peak learning rate", default_text=lambda: "per arm/method: " + default_learning_rates()
    )
    weight_decay: float = option(
        0.01, "AdamW weight decay on weight matrices (not biases, norms, embeddings)"
    )
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.999, "AdamW beta2")
    warmup_ratio: float = option(0.06, "fraction of steps with linear warm-up")
    lr_scheduler_type: str = option(
        "cosine", "decay after warm-up: cosine, linear or constant", choices=("cosine", "linear", "constant")
    )
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 disables)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    class_weights: str = option(
        "none",
        "class weights of the cross-entropy: none, balanced (n / (classes x count) over the training split) "
        "or a JSON file {label_name: weight}",
    )
    # distillation (docs/distill.md): a student learning from a trained run's probabilities
    teacher: str | None = option(
        None,
        "a trained run folder (fine-tuned, from scratch or TF-IDF) whose logits on the training and "
        "unlabeled texts the student learns from; computed once and cached in the run folder",
    )
    distill_alpha: float = option(
        0.5,
        "with --teacher: loss = A x CE(labels) + (1 - A) x T^2 x KL(teacher || student) on labelled texts",
    )
    distill_temperature: float = option(
        2.0, "with --teacher: the softmax temperature T of both sides of the KL"
    )
    distill_max_unlabeled: int | None = option(
        None,
        "with --teacher: use at most N texts of the data folder's unlabeled.jsonl (KD term only; default "
        "all, 0 none)",
    )
    early_stopping_patience: int = option(
        5, "stop after this many epochs without a val macro-F1 gain (0 disables)"
    )
    # runtime
    mixed_precision: str = option(
        "auto",
        "auto (bf16 on CUDA; on CPUs with native bf16, AVX-512 BF16/AMX, where the arm gains: "
        "the fine-tuned arm; else fp32), no, bf16 or fp16",
        choices=("auto", "no", "bf16", "fp16"),
    )
    compile: str = option(
        "auto",
        "torch.compile the transformer blocks for training: auto (the fine-tuned arm on the CPU, when the "
        "rest of the run at its text length repays ~1 min of compiling, kept only if measured faster), "
        "yes (`--compile` alone) or no",
        choices=("auto", "yes", "no"),
    )
    length_grouping: bool = option(True, "group training batches by length (less padding)")
    logging_steps: int = option(20, "update the progress bar and check for NaN every N batches")
    save_steps: int = option(0, "also checkpoint every N optimizer steps (0: end of every epoch only)")
    skip_nan_steps: int = option(
        0, "tolerate up to N optimizer steps with NaN/Inf loss (skipped) before failing"
    )
    max_train_steps: int | None = option(None, "stop after N optimizer steps (smoke tests, benchmarks)")
    num_workers: int = option(0, "DataLoader worker processes")
    disable_tqdm: bool = option(False, "no progress bars")
    report_to: str = option(
        "none",
        "experiment trackers, logging under RUN/logs/: none, all, or a comma list of tensorboard, mlflow, "
        "trackio, wandb",
    )
    tracking_project: str = option(
        "", "tracker experiment/project name (default: the run folder's name; a study passes its own)"
    )
    extra: dict = field(default_factory=dict)  # free-form tags (study sweeps: train_fraction, ...); no flag
    # the keys the user set (flags, --config, study train keys), filled by `build_config`; None (a config
    # built in Python) counts every key as given. Not a field: it is not a setting and is never saved.
    given: ClassVar[frozenset | None] = None

    def validate(self) -> "TrainConfig":
        def bad(key, why, fix):
            raise FtvsError(f"invalid {key}={getattr(self, key)!r}: {why}; {fix}")

        for key, allowed in (
            (f.name, f.metadata["choices"]) for f in dataclasses.fields(self) if f.metadata.get("choices")
        ):
            value = getattr(self, key)
            if value not in allowed:
                bad(
                    key,
                    f"must be one of {', '.join(allowed)}",
                    f"use one of them{closest(str(value), allowed)}",
                )
        from ftvs.model import MAX_POSITIONS, PRESETS

        if self.arm == "scratch" and self.preset not in PRESETS:
            bad(
                "preset", "unknown preset", f"choose from {', '.join(PRESETS)}{closest(self.preset, PRESETS)}"
            )
        if self.learning_rate is not None and not self.learning_rate > 0:
            bad("learning_rate", "must be > 0", "use e.g. 1e-3 (scratch) or 5e-4 (LoRA)")
        if not self.base_lr_ratio > 0:
            bad("base_lr_ratio", "must be > 0", "use e.g. 0.1")
        for key in (
            "max_seq_length",
            "num_train_epochs",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "bpe_vocab_size",
            "max_vocab",
            "lora_r",
            "lora_alpha",
            *(k for k in ("max_train_steps", "unfreeze_top_k", "n_layer", "n_head", "n_embd", "d_ff")
              if getattr(self, k) is not None),
        ):  # fmt: skip
            if not is_count(getattr(self, key), 1):
                bad(key, "must be >= 1", "use a positive integer")
        for key in ("dropout", "token_dropout", "lora_dropout", "warmup_ratio", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "must be in [0, 1)", "use e.g. 0.1")
        for key in ("weight_decay", "max_grad_norm"):
            if not getattr(self, key) >= 0:
                bad(key, "must be >= 0", "use 0 to disable")
        for key in ("early_stopping_patience", "save_steps", "skip_nan_steps", "unfreeze_after_epochs",
                    "num_workers"):  # fmt: skip
            if not is_count(getattr(self, key), 0):
                bad(key, "must be >= 0", "use 0 to disable")
        if self.arm == "scratch" and self.max_seq_length > MAX_POSITIONS:
            bad(
                "max_seq_length",
                f"more than the from-scratch model's {MAX_POSITIONS} positions",
                f"use at most {MAX_POSITIONS}",
            )
        from ftvs.class_weights import check_spec
        from ftvs.tracking import parse_report_to

        parse_report_to(self.report_to)
        check_spec(self.class_weights)
        if not 0 <= self.distill_alpha <= 1:
            bad("distill_alpha", "must be in [0, 1]", "use e.g. 0.5 (1: labels only, 0: teacher only)")
        if not self.distill_temperature > 0:
            bad("distill_temperature", "must be > 0", "use e.g. 2")
        if self.distill_max_unlabeled is not None and self.distill_max_unlabeled < 0:
            bad("distill_max_unlabeled", "must be >= 0", "use 0 for no unlabeled texts")
        if self.arm == "scratch" and self.n_embd and self.n_head and self.n_embd % self.n_head:
            bad("n_embd", f"must be divisible by n_head={self.n_head}", "pick a multiple of the head count")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_FIELD_TYPES = typing.get_type_hints(TrainConfig)
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
_FIELD_CHOICES = {f.name: f.metadata.get("choices", ()) for f in dataclasses.fields(TrainConfig)}
# keys that only one arm reads (its `train` subcommand shows only its own flags)
SCRATCH_ONLY = {
    "dropout",
    "preset",
    "n_layer",
    "n_head",
    "n_embd",
    "d_ff",
    "pooling",
    "positional",
    "tokenizer",
    "bpe_vocab_size",
    "max_vocab",
    "token_dropout",
    "lowercase",
}
FINETUNE_ONLY = {
    "model_name_or_path",
    "method",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "unfreeze_after_epochs",
    "unfreeze_top_k",
    "base_lr_ratio",
    "gradient_checkpointing",
    "feature_cache",
}
# keys that may differ between an interrupted run and its resumption without changing the result
RESUME_FREE_KEYS = {
    "output_dir",
    "disable_tqdm",
    "logging_steps",
    "save_steps",
    "num_workers",
    "data",
    "report_to",
    "tracking_project",
    "compile",  # how the step runs (compiled or eager), not what it computes
}


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FtvsError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise FtvsError(
            f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax"
        ) from None
    if not isinstance(data, dict):
        raise FtvsError(f"config file {path} must be a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(file_values: dict, cli_values: dict) -> TrainConfig:
    """Defaults, then the YAML file, then the flags the user actually gave (non-None)."""
    merged = {}
    for source, values in (("config file", file_values), ("flags", cli_values)):
        for key, value in values.items():
            if key not in FIELDS:
                raise FtvsError(
                    f"unknown {source} key {key!r}{closest(key, FIELDS)}; see `ftvs train --help`"
                )
            if value is not None:
                merged[key] = check_type(key, value)
    try:
        cfg = TrainConfig(**merged)
    except TypeError as e:
        raise FtvsError(f"invalid configuration: {e}") from None
    cfg.given = frozenset(merged)
    return cfg.validate()


_TYPE_WORDS = {
    int: ("an integer", "e.g. 8"),
    float: ("a number", "e.g. 0.1"),
    bool: ("true or false", "true"),
    str: ("a text", "a quoted string"),
    dict: ("a mapping", "key: value pairs"),
}


def check_type(key: str, value):
    """`value` as the type of TrainConfig field `key` (YAML and `--set` give strings such as "1e-3" for
    numbers, which are converted); a one-line FtvsError when it is not of that type."""
    kind = _FIELD_TYPES[key]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    if typing.get_origin(kind) is list:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise FtvsError(f"invalid {key}={value!r}: must be a list of names; use e.g. [q_proj, v_proj]")
    choices = _FIELD_CHOICES.get(key, ())
    if kind is str and isinstance(value, bool) and ("yes" if value else "no") in choices:
        return "yes" if value else "no"  # YAML reads yes/no as booleans; older runs saved compile: false
    converted = convert_value(value, kind)
    if converted is None:
        what, example = _TYPE_WORDS[kind]
        default = _FIELD_DEFAULTS.get(key)
        if isinstance(default, kind) and kind is not bool and default != "":
            example = f"e.g. {default}"
        raise FtvsError(f"invalid {key}={value!r}: must be {what}; use {example}")
    return converted


def convert_value(value, kind):
    """`value` as `kind`, or None when it is not one (bools are not numbers, 1.5 is not an integer)."""
    if kind is bool:
        return value if isinstance(value, bool) else None
    if kind in (int, float):
        if isinstance(value, bool):  # True is not the number 1 here
            return None
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                return None
        if isinstance(value, (int, float)) and math.isfinite(value):
            if kind is float:
                return float(value)
            return int(value) if float(value).is_integer() else None
        return None
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # `data: 2024` names a folder "2024"
    return value if isinstance(value, kind) else None


def config_differences(saved: dict, current: dict, free_keys=RESUME_FREE_KEYS) -> list[str]:
    """Keys (outside `free_keys`) whose value differs between a saved config and the current one."""
    # a training key that an older ftvs did not write yet had its default value then
    defaults = TrainConfig().to_dict()
    saved = {**{k: defaults[k] for k in current if k in defaults}, **saved}
    keys = (set(saved) | set(current)) - free_keys
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def write_config(run_dir: Path, cfg: TrainConfig, extra: dict) -> None:
    """RUN/config.yaml: the run's full config, and under `resolved:` what the run derived from it."""
    text = yaml.safe_dump({**cfg.to_dict(), "resolved": extra}, sort_keys=False)
    atomic_write_bytes(run_dir / CONFIG, text.encode())


def read_saved_config(run_dir: Path) -> dict:
    """A run's config as written by `write_config`, without the `resolved:` part."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise FtvsError(f"{run_dir} has no {CONFIG}; it is not an ftvs run dir")
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("resolved", None)
    return data
