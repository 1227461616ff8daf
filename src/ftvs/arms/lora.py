"""LoRA for the fine-tuning arm: which linear layers get adapters, and wrapping a model with peft."""

import torch.nn as nn

from ftvs.arms.hf import base_model, quiet_peft
from ftvs.errors import FtvsError, closest

# LoRA targets per architecture: every attention projection (peft's own defaults are often q/v only).
LORA_TARGETS = {
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "stablelm",
            "starcoder2",
            "cohere",
            "helium",
            "glm",
            "exaone4",
        ),
        ["q_proj", "k_proj", "v_proj", "o_proj"],
    ),
    **dict.fromkeys(("gpt2", "gpt_bigcode"), ["c_attn", "c_proj"]),
    **dict.fromkeys(("gpt_neox", "bloom", "falcon"), ["query_key_value", "dense"]),
    **dict.fromkeys(("gpt_neo", "gptj", "opt", "xglm"), ["q_proj", "k_proj", "v_proj", "out_proj"]),
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
    "mpt": ["Wqkv", "out_proj"],
}
CONV1D_MODEL_TYPES = {"gpt2", "gpt_bigcode"}  # transformers Conv1D layers: LoRA needs fan_in_fan_out=True


def resolve_lora_targets(hf_model, override=None) -> list[str]:
    """LoRA target module names for this architecture (or the user's, checked to exist)."""
    linear_names = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in base_model(hf_model).named_modules()
            if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
        }
    )
    if override:
        targets = [t.strip() for t in override if t and t.strip()]
        unknown = [t for t in targets if t not in linear_names]
        if unknown:
            raise FtvsError(
                f"--lora_target_modules {unknown[0]!r} is not a linear layer of this model"
                f"{closest(unknown[0], linear_names)}; choose from {', '.join(linear_names)}"
            )
        return targets
    model_type = hf_model.config.model_type
    if model_type in LORA_TARGETS:
        return list(LORA_TARGETS[model_type])
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    guess = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj") if n in linear_names]
    if guess:
        return guess
    raise FtvsError(
        f"no default LoRA target modules for model type {model_type!r}; pass --lora_target_modules "
        f"(linear layers: {', '.join(linear_names)})"
    )


def add_lora(hf_model, head: str, *, r: int, alpha: int, dropout: float, target_modules=None):
    """`hf_model` wrapped by peft with LoRA adapters, the new `head` trained in full (`modules_to_save`).
    Returns (peft model, the LoRA settings as recorded in ftvs.json)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = resolve_lora_targets(hf_model, target_modules)
    peft_config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=[head],
        fan_in_fan_out=hf_model.config.model_type in CONV1D_MODEL_TYPES,
        bias="none",
    )
    try:
        with quiet_peft():
            net = get_peft_model(hf_model, peft_config)
    except ValueError as e:
        raise FtvsError(
            f"LoRA set-up failed: {str(e).splitlines()[0]}; check --lora_target_modules"
        ) from None
    return net, {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets}
