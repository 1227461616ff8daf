"""The interface between the training loop and a model family ("arm"), and what every arm shares.

The loop only ever calls what `Arm` defines, so the from-scratch transformer and any fine-tuned
Hugging Face model train, checkpoint, evaluate and export through the same code.
"""

import torch
import torch.nn as nn

from ftvs.batching import pad_token_batch
from ftvs.errors import FtvsError

# Peak learning rate used when the user gives none: per arm, and for the fine-tuning arm per method
# (for `unfreeze` it is the head's; the base gets lr x base_lr_ratio).
# full: 5e-5, not the 2e-5..3e-5 of long fine-tunes: on 1,000 Banking77 texts 3e-5 stayed near chance (0.152
# test
# accuracy after 126 steps) where 5e-5 reached 0.543 (252 steps); the small-data rule gives such runs >= 200
# steps.
DEFAULT_LEARNING_RATES = {"scratch": 1e-3, "lora": 5e-4, "full": 5e-5, "frozen": 1e-3, "unfreeze": 1e-3}


def describe_default_learning_rates() -> str:
    """The table above in words, for help texts: "scratch 1e-3, lora 5e-4, ..."."""
    return ", ".join(f"{name} {lr:.0e}".replace("e-0", "e-") for name, lr in DEFAULT_LEARNING_RATES.items())


def decay_param_groups(named_params, weight_decay: float, lr_of=lambda name: None, no_decay_ids=frozenset()):
    """AdamW groups: weight decay on matrices only; biases, norms and embeddings are left alone.

    `lr_of(name)` may give a parameter its own learning rate (discriminative fine-tuning); parameters
    with the same (lr, decay) share a group.
    """
    groups: dict = {}
    for name, p in named_params:
        decay = p.ndim >= 2 and id(p) not in no_decay_ids
        key = (lr_of(name), decay)
        group = groups.setdefault(
            key, {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0}
        )
        if key[0] is not None:
            group["lr"] = key[0]
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def embedding_param_ids(model: nn.Module) -> frozenset:
    return frozenset(id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding))


def base_ids(tokenizer, texts, max_length: int) -> list[list[int]]:
    """Token ids of `texts`, truncated to `max_length`, tokenised in chunks to bound memory."""
    out = []
    for i in range(0, len(texts), 2048):
        enc = tokenizer(list(texts[i : i + 2048]), truncation=True, max_length=max_length)
        out.extend(enc["input_ids"])
    return out


class Arm:
    """What the training loop needs from a model family. Subclasses set `kind` and `model`."""

    kind = "base"
    model: nn.Module
    default_learning_rate = DEFAULT_LEARNING_RATES["scratch"]

    def encode(self, texts: list[str]) -> list:
        raise NotImplementedError

    def example_length(self, example) -> int:
        return len(example)

    def collate(self, examples: list) -> dict:
        return pad_token_batch(examples, self.pad_id)

    def param_groups(self, cfg) -> list[dict]:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        return decay_param_groups(named, cfg.weight_decay, no_decay_ids=embedding_param_ids(self.model))

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules that change what is trainable (freeze-then-unfreeze)."""

    def store_frozen_weights(self, dtype) -> None:
        """Called once before training with the autocast dtype of the run (None for fp32): an arm may keep
        weights that never train in that dtype, so autocast does not cast them again at every step."""

    def blocks(self) -> nn.ModuleList | None:
        """The transformer blocks the training forward runs through (what `--compile` compiles), or None."""
        return None

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must hold: everything the optimizer may change."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.trainable_state_dict()) - set(state)
        if missing:
            raise FtvsError(
                f"checkpoint lacks {len(missing)} tensors (e.g. {sorted(missing)[0]}); "
                "it belongs to another model"
            )
        self.model.load_state_dict(state, strict=False)

    def save_pretrained(self, out_dir) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError
