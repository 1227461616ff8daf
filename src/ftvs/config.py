"""Training configuration: one dataclass, filled from defaults ← YAML file ← command-line flags.

YAML keys are the flag names (`learning_rate`, `num_train_epochs`, ...). The resolved config is written
into every run dir, and `--resume` refuses a run whose saved config differs in anything that would
change the result.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ftvs.errors import FtvsError, closest


@dataclass
class TrainConfig:
    # what to train
    arm: str = "scratch"  # scratch | finetune
    data: str = ""
    output_dir: str = ""
    seed: int = 0
    # from-scratch model
    preset: str = "tiny"
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    d_ff: int | None = None
    pooling: str = "last"  # last | mean | max
    positional: str = "learned"  # learned | sinusoidal
    dropout: float = 0.1
    token_dropout: float = 0.0  # word dropout: replace training tokens by <unk> with this probability
    tokenizer: str = "smollm2-135m"  # a pre-trained tokenizer name/path, or "bpe" (trained on the train split)
    bpe_vocab_size: int = 8000
    max_vocab: int = 16000  # trimmed embedding table: most frequent train tokens kept
    lowercase: bool = False  # lower-case texts before the scratch tokenizer (fewer, denser tokens)
    # fine-tuned model
    model_name_or_path: str = "smollm2-135m"
    method: str = "lora"  # lora | full | frozen | unfreeze
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    unfreeze_after_epochs: int = 1
    unfreeze_top_k: int | None = None
    base_lr_ratio: float = 0.1
    gradient_checkpointing: bool = False
    feature_cache: bool = True
    # optimisation
    max_seq_length: int = 128
    num_train_epochs: int = 10
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None  # None: the arm's default (scratch 1e-3, LoRA 5e-4, full 3e-5, ...)
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    warmup_ratio: float = 0.06
    lr_scheduler_type: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    early_stopping_patience: int = 5  # epochs without val macro-F1 gain; 0 disables
    # runtime
    mixed_precision: str = "auto"  # auto (bf16 on CUDA) | no | bf16 | fp16
    compile: bool = False
    length_grouping: bool = True
    logging_steps: int = 20
    save_steps: int = 0  # also checkpoint every N optimizer steps (0: end of each epoch only)
    skip_nan_steps: int = 0
    max_train_steps: int | None = None  # stop after this many optimizer steps (smoke tests, benchmarks)
    num_workers: int = 0
    disable_tqdm: bool = False
    extra: dict = field(default_factory=dict)  # free-form tags (study sweeps: train_fraction, ...)

    def validate(self) -> "TrainConfig":
        def bad(key, why, fix):
            raise FtvsError(f"invalid {key}={getattr(self, key)!r}: {why}; {fix}")

        choices = {
            "arm": ("scratch", "finetune"),
            "pooling": ("last", "mean", "max"),
            "positional": ("learned", "sinusoidal"),
            "method": ("lora", "full", "frozen", "unfreeze"),
            "lr_scheduler_type": ("cosine", "linear", "constant"),
            "mixed_precision": ("auto", "no", "bf16", "fp16"),
        }
        for key, allowed in choices.items():
            value = getattr(self, key)
            if value not in allowed:
                bad(key, f"must be one of {', '.join(allowed)}", f"use one of them{closest(str(value), allowed)}")
        from ftvs.model import PRESETS

        if self.arm == "scratch" and self.preset not in PRESETS:
            bad("preset", "unknown preset", f"choose from {', '.join(PRESETS)}{closest(self.preset, PRESETS)}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            bad("learning_rate", "must be > 0", "use e.g. 1e-3 (scratch) or 5e-4 (LoRA)")
        for key in ("max_seq_length", "num_train_epochs", "per_device_train_batch_size",
                    "per_device_eval_batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1", "use a positive integer")
        for key in ("dropout", "token_dropout", "lora_dropout", "warmup_ratio", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "must be in [0, 1)", "use e.g. 0.1")
        for key in ("weight_decay", "max_grad_norm", "early_stopping_patience", "save_steps", "skip_nan_steps"):
            if getattr(self, key) < 0:
                bad(key, "must be >= 0", "use 0 to disable")
        if self.arm == "scratch" and self.n_embd and self.n_head and self.n_embd % self.n_head:
            bad("n_embd", f"must be divisible by n_head={self.n_head}", "pick a multiple of the head count")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
# keys that only one arm reads (its `train` subcommand shows only its own flags)
SCRATCH_ONLY = {"dropout", "preset", "n_layer", "n_head", "n_embd", "d_ff", "pooling", "positional", "tokenizer",
                "bpe_vocab_size", "max_vocab", "token_dropout", "lowercase"}
FINETUNE_ONLY = {"model_name_or_path", "method", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                 "unfreeze_after_epochs", "unfreeze_top_k", "base_lr_ratio", "gradient_checkpointing",
                 "feature_cache"}
# keys that may differ between an interrupted run and its resumption without changing the result
RESUME_FREE_KEYS = {"output_dir", "disable_tqdm", "logging_steps", "save_steps", "num_workers", "data"}


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FtvsError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise FtvsError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None
    if not isinstance(data, dict):
        raise FtvsError(f"config file {path} must be a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(file_values: dict, cli_values: dict) -> TrainConfig:
    """Defaults, then the YAML file, then the flags the user actually gave (non-None)."""
    merged = {}
    for source, values in (("config file", file_values), ("flags", cli_values)):
        for key, value in values.items():
            if key not in FIELDS:
                raise FtvsError(f"unknown {source} key {key!r}{closest(key, FIELDS)}; see `ftvs train --help`")
            if value is not None:
                merged[key] = value
    try:
        cfg = TrainConfig(**merged)
    except TypeError as e:
        raise FtvsError(f"invalid configuration: {e}") from None
    return cfg.validate()


def resolve_mixed_precision(requested: str, on_cuda: bool) -> str:
    """`auto` (the default): bf16 on a CUDA device that supports it, fp32 ("no") elsewhere."""
    if requested != "auto":
        return requested
    import torch

    return "bf16" if on_cuda and torch.cuda.is_bf16_supported() else "no"


def autocast_dtype(precision: str):
    """The dtype autocast runs in for a resolved precision; None for fp32 ("no")."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def config_differences(saved: dict, current: dict, free_keys=RESUME_FREE_KEYS) -> list[str]:
    """Keys (outside `free_keys`) whose value differs between a saved config and the current one."""
    # a training key that an older ftvs did not write yet had its default value then
    defaults = TrainConfig().to_dict()
    saved = {**{k: defaults[k] for k in current if k in defaults}, **saved}
    keys = (set(saved) | set(current)) - free_keys
    return sorted(k for k in keys if saved.get(k) != current.get(k))
