"""What every arm shares: the default learning rates (one table), AdamW parameter groups, `build_arm`."""

import torch.nn as nn

from ftvs.arms import (
    DEFAULT_LEARNING_RATES,
    FinetuneArm,
    ScratchArm,
    build_arm,
    decay_param_groups,
    default_learning_rate,
    describe_default_learning_rates,
    embedding_param_ids,
)
from ftvs.config import TrainConfig


def test_default_learning_rates_come_from_one_table():
    assert ScratchArm.default_learning_rate == DEFAULT_LEARNING_RATES["scratch"] == 1e-3
    for method in ("lora", "full", "frozen", "unfreeze"):
        assert default_learning_rate(method) == DEFAULT_LEARNING_RATES[method]
    assert (
        describe_default_learning_rates() == "scratch 1e-3, lora 5e-4, full 5e-5, frozen 1e-3, unfreeze 1e-3"
    )


def test_weight_decay_only_on_matrices_and_never_on_embeddings():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    groups = decay_param_groups(model.named_parameters(), 0.01, no_decay_ids=embedding_param_ids(model))
    decay = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert decay == {"0.weight": 0.0, "1.weight": 0.01, "1.bias": 0.0, "2.weight": 0.0, "2.bias": 0.0}
    assert all("lr" not in g for g in groups)
    named = decay_param_groups(
        model.named_parameters(), 0.01, lr_of=lambda n: 1e-4 if n.startswith("1.") else 1e-3
    )
    assert {name: g["lr"] for g in named for name in g["names"]}["1.bias"] == 1e-4


def test_build_arm_builds_the_arm_the_config_names(tiny_llama_dir):
    texts = ["my card has not arrived", "what is the exchange rate", "top up failed", "card declined"] * 4
    scratch = build_arm(
        TrainConfig(tokenizer="bpe", bpe_vocab_size=300, max_seq_length=16), texts, ["a", "b"]
    )
    assert isinstance(scratch, ScratchArm) and scratch.model.config.num_labels == 2
    cfg = TrainConfig(
        arm="finetune", model_name_or_path=str(tiny_llama_dir), method="frozen", max_seq_length=16
    )
    finetuned = build_arm(cfg, texts, ["a", "b"])
    assert isinstance(finetuned, FinetuneArm) and finetuned.method == "frozen" and finetuned.max_length == 16
