"""Model families ("arms") behind one interface: `build_arm` for training, `load_arm` for a trained one.

- `base`: the `Arm` interface the training loop calls, parameter groups, the default learning rates;
- `scratch`: the from-scratch transformer and its trimmed tokenizer;
- `finetune`: a pre-trained Hugging Face decoder-only LM with a classification head (with `hf`, its
  model plumbing, and `lora`, its adapters).
"""

import json
from pathlib import Path

from safetensors import SafetensorError

from ftvs.arms.base import (
    DEFAULT_LEARNING_RATES,
    Arm,
    base_ids,
    decay_param_groups,
    describe_default_learning_rates,
    embedding_param_ids,
)
from ftvs.arms.finetune import FinetuneArm, build_finetune_arm, default_learning_rate, load_finetune_arm
from ftvs.arms.scratch import (
    PAD_ID,
    UNK_ID,
    ScratchArm,
    TrimmedTokenizer,
    build_scratch_arm,
    scratch_model_config,
)
from ftvs.errors import FtvsError
from ftvs.rundir import MODEL_DIR, MODEL_MARKER

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "PAD_ID",
    "UNK_ID",
    "Arm",
    "FinetuneArm",
    "ScratchArm",
    "TrimmedTokenizer",
    "base_ids",
    "build_arm",
    "build_finetune_arm",
    "build_scratch_arm",
    "decay_param_groups",
    "default_learning_rate",
    "describe_default_learning_rates",
    "embedding_param_ids",
    "load_arm",
    "load_finetune_arm",
    "scratch_model_config",
]

# every builder takes (TrainConfig, training texts, label names)
BUILDERS = {"scratch": build_scratch_arm, "finetune": build_finetune_arm}


def build_arm(cfg, train_texts, label_names) -> Arm:
    """A fresh arm for training (weights initialised or loaded from the pre-trained model)."""
    return BUILDERS[cfg.arm](cfg, train_texts, label_names)


def load_arm(model_dir) -> Arm:
    """Rebuild a trained arm from an exported model folder (a run's `model/`), in eval mode."""
    model_dir = Path(model_dir)
    if (model_dir / MODEL_DIR / MODEL_MARKER).is_file():
        model_dir = model_dir / MODEL_DIR
    marker = model_dir / MODEL_MARKER
    if not marker.is_file():
        raise FtvsError(
            f"{model_dir} holds no trained ftvs model (no {MODEL_MARKER}); train one with `ftvs train`"
        )
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        raise FtvsError(f"{marker} is corrupt; retrain or restore the run dir") from None
    if info.get("arm") == "scratch":
        return ScratchArm.load(model_dir, info)
    if info.get("arm") == "finetune":
        try:
            return load_finetune_arm(model_dir)
        except SafetensorError as e:
            raise FtvsError(
                f"model files in {model_dir} are truncated or corrupt ({e}); restore them or retrain"
            ) from None
    if info.get("arm") == "baseline":
        raise FtvsError(
            f"{model_dir} is a TF-IDF baseline: `ftvs baseline` scores it when it fits (see its "
            "metrics.json); rerun `ftvs baseline` to score other data"
        )
    raise FtvsError(f"{marker} names an unknown arm {info.get('arm')!r}")
