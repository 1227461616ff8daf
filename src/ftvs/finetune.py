"""The fine-tuning arm: a pre-trained decoder-only LM with a classification head.

The model is `AutoModelForSequenceClassification` (a Linear "score" head on the hidden state of the
last non-pad token, exactly as Hugging Face pools decoder-only models), trained by one of four methods:

- `lora`: peft LoRA adapters on the attention projections + the new head (`modules_to_save`);
- `full`: every weight;
- `frozen`: base frozen, head only. With the feature cache (default) `encode` runs the base ONCE over
  all texts and returns the pooled features; `model` is then just the head, so an epoch costs a
  Linear layer instead of a transformer pass. The export is still the full HF model;
- `unfreeze`: head only for `unfreeze_after_epochs` epochs, then the top k blocks (or all) too, with a
  lower learning rate for the base (discriminative LRs: base lr = lr * base_lr_ratio). Every parameter
  group exists from the start; `on_epoch_start(epoch)` toggles `requires_grad` (AdamW skips parameters
  without a gradient), so the schedule depends only on the epoch number and a resumed run replays it.

Multi-process note (DDP): every parameter `unfreeze` will ever train has `requires_grad=True` when the
arm is built (so DDP registers it) and is frozen by `on_epoch_start(0)`; DDP then needs
`find_unused_parameters=True` for that method.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ftvs.arms import Arm, base_ids, decay_param_groups, embedding_param_ids
from ftvs.batching import pad_token_batch
from ftvs.errors import FtvsError, closest
from ftvs.fileio import read_json, write_json
from ftvs.pretrained import (
    DEFAULT_MODEL,
    check_decoder_only,
    ensure_pad_token,
    load_config,
    load_tokenizer,
    resolve_model,
)

METHODS = ("lora", "full", "frozen", "unfreeze")
DEFAULT_LEARNING_RATES = {"lora": 5e-4, "full": 3e-5, "frozen": 1e-3, "unfreeze": 1e-3}

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


def default_learning_rate(method: str) -> float:
    """Peak learning rate used when the user gives none (for `unfreeze`: the head's; base = x base_lr_ratio)."""
    _check_method(method)
    return DEFAULT_LEARNING_RATES[method]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise FtvsError(
            f"unknown fine-tuning method {method!r}{closest(str(method), METHODS)}; use one of {', '.join(METHODS)}"
        )


# --------------------------------------------------------------------------------------------------
# Modules the training loop sees
# --------------------------------------------------------------------------------------------------


class SequenceClassifier(nn.Module):
    """`model(input_ids, attention_mask) -> logits [B, C]` around an HF (or peft) sequence classifier."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.base_frozen = False  # a frozen base is kept in eval mode (no dropout noise on fixed features)

    def forward(self, input_ids, attention_mask=None):
        return self.net(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.base_frozen:
            _base_model(self.net).eval()
        return self


class FeatureHead(nn.Module):
    """`model(features) -> logits`: the HF head (the very same Linear) on cached pooled features."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head

    def forward(self, features):
        return self.head(features.to(self.head.weight.dtype))


def _unwrap_peft(net: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or `net` itself)."""
    get_base = getattr(net, "get_base_model", None)
    return get_base() if callable(get_base) else net


def _base_model(net: nn.Module) -> nn.Module:
    """The transformer body (e.g. LlamaModel) of a sequence-classification model, peft-wrapped or not."""
    hf = _unwrap_peft(net)
    return getattr(hf, hf.base_model_prefix)


def _head_name(hf_model, num_labels: int) -> str:
    """Attribute name of the classification head ("score" for Llama/GPT-2/Qwen/Pythia...)."""
    prefix = hf_model.base_model_prefix
    for name, module in hf_model.named_children():
        if name != prefix and isinstance(module, nn.Linear) and module.out_features == num_labels:
            return name
    for name in ("score", "classifier"):
        if hasattr(hf_model, name):
            return name
    raise FtvsError(
        f"cannot find the classification head of {type(hf_model).__name__}; this architecture is not supported"
    )


def _block_list(base: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks inside the body (model.layers, transformer.h, ...)."""
    candidates = [
        (n, m) for n, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers
    ]
    if not candidates:
        raise FtvsError(
            f"cannot find the {num_layers} transformer blocks of {type(base).__name__}; use --unfreeze_top_k all"
        )
    return min(candidates, key=lambda nm: nm[0].count("."))


def _pool_last_non_pad(hidden: torch.Tensor, input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Hidden state at the rightmost token that is not the pad id: the HF decoder-only pooling rule."""
    non_pad = (input_ids != pad_id).to(torch.int64)
    idx = (torch.arange(input_ids.shape[-1], device=input_ids.device) * non_pad).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


# --------------------------------------------------------------------------------------------------
# The arm
# --------------------------------------------------------------------------------------------------


class FinetuneArm(Arm):
    kind = "finetune"

    def __init__(
        self,
        net: nn.Module,
        tokenizer,
        label_names,
        *,
        method: str,
        max_length: int,
        pretrained_name: str,
        pretrained_path: str,
        unfreeze_after_epochs: int = 1,
        unfreeze_top_k: int | None = None,
        base_lr_ratio: float = 0.1,
        feature_cache: bool = False,
        lora: dict | None = None,
        gradient_checkpointing: bool = False,
    ):
        _check_method(method)
        self.net = net  # HF AutoModelForSequenceClassification, or its peft wrapper for LoRA
        self.hf = _unwrap_peft(net)
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.method = method
        self.max_length = int(max_length)
        self.pretrained_name = str(pretrained_name)
        self.pretrained_path = str(pretrained_path)
        self.unfreeze_after_epochs = int(unfreeze_after_epochs)
        self.unfreeze_top_k = unfreeze_top_k
        self.base_lr_ratio = float(base_lr_ratio)
        self.lora = lora
        self.gradient_checkpointing = gradient_checkpointing
        self.default_learning_rate = DEFAULT_LEARNING_RATES[method]
        self.pad_id = int(tokenizer.pad_token_id)
        self.empty_id = int(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else self.pad_id)
        self.head_name = _head_name(self.hf, len(self.label_names))
        self.head = getattr(self.hf, self.head_name)
        if method == "lora":  # peft trains a copy of the head (modules_to_save); use that one
            active = getattr(self.head, "modules_to_save", None)
            if active is not None:
                self.head = active[net.active_adapter]

        self.wrapper = SequenceClassifier(net)
        self.head_names, self.base_names = self._split_trainable()
        params = dict(net.named_parameters())
        for name, p in params.items():
            p.requires_grad_(name in self.head_names or name in self.base_names)
        self.wrapper.base_frozen = method == "frozen"

        self.feature_cache = False
        self.model: nn.Module = self.wrapper
        if method == "frozen" and feature_cache:
            if self._fast_path_matches():
                self.feature_cache = True
                self.model = FeatureHead(self.head)
            else:
                warnings.warn(
                    f"{type(self.hf).__name__}: the frozen feature cache does not reproduce the model's own "
                    "logits for this architecture; training through the full model instead",
                    stacklevel=2,
                )
        self._epoch_state = None

    # --- what trains ---------------------------------------------------------------------------

    def _split_trainable(self) -> tuple[set[str], set[str]]:
        """Names (in `net`'s namespace) of head parameters and of base parameters the method ever trains."""
        named = dict(self.net.named_parameters())
        if self.method == "lora":
            trained = {n for n, p in named.items() if p.requires_grad}  # as peft set them up
            head = {
                n for n in trained if f".{self.head_name}." in f".{n}" or n.startswith(f"{self.head_name}.")
            }
            return head, trained - head
        head_ids = {id(p) for p in self.head.parameters()}
        head = {n for n, p in named.items() if id(p) in head_ids}
        if self.method == "frozen":
            return head, set()
        base_named = {n: p for n, p in named.items() if n not in head}
        if self.method == "full" or self.unfreeze_top_k is None:
            return head, set(base_named)
        # unfreeze the top k blocks + whatever sits above them (final norm); embeddings stay frozen
        cfg = self.hf.config.get_text_config()
        body = _base_model(self.net)
        _, blocks = _block_list(body, cfg.num_hidden_layers)
        top = {
            id(p) for block in list(blocks)[len(blocks) - self.unfreeze_top_k :] for p in block.parameters()
        }
        in_blocks = {id(p) for p in blocks.parameters()}
        embeddings = embedding_param_ids(body)
        base = {
            n
            for n, p in base_named.items()
            if id(p) in top or (id(p) not in in_blocks and id(p) not in embeddings)
        }
        return head, base

    def on_epoch_start(self, epoch: int) -> None:
        if self.method != "unfreeze":
            return
        unfrozen = epoch >= self.unfreeze_after_epochs
        if self._epoch_state == unfrozen:
            return
        self._epoch_state = unfrozen
        for name, p in self.net.named_parameters():
            if name in self.base_names:
                p.requires_grad_(unfrozen)
                if not unfrozen:
                    p.grad = None
        self.wrapper.base_frozen = not unfrozen
        self.wrapper.train(self.wrapper.training)

    def param_groups(self, cfg) -> list[dict]:
        lr = cfg.learning_rate
        base_lr = lr * self.base_lr_ratio if self.method == "unfreeze" else lr
        wanted = self.head_names | self.base_names
        seen, named = set(), []
        for name, p in self.net.named_parameters():
            if name in wanted and id(p) not in seen:
                seen.add(id(p))
                named.append((name, p))
        return decay_param_groups(
            named,
            cfg.weight_decay,
            lr_of=lambda n: lr if n in self.head_names else base_lr,
            no_decay_ids=embedding_param_ids(self.net),
        )

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        wanted = self.head_names | self.base_names
        return {n: p for n, p in self.net.named_parameters() if n in wanted}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.head_names | self.base_names)
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            example = sorted(missing or unexpected)[0]
            raise FtvsError(
                f"checkpoint does not match this model ({len(missing)} tensors missing, {len(unexpected)} unexpected, "
                f"e.g. {example}); it belongs to another model or method"
            )
        params = dict(self.net.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                if params[name].shape != value.shape:
                    raise FtvsError(
                        f"checkpoint tensor {name} has shape {tuple(value.shape)}, model expects "
                        f"{tuple(params[name].shape)}; it belongs to another model"
                    )
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    # --- data ----------------------------------------------------------------------------------

    def _token_ids(self, texts) -> list[list[int]]:
        return [
            ids if ids else [self.empty_id] for ids in base_ids(self.tokenizer, list(texts), self.max_length)
        ]

    def encode(self, texts) -> list:
        ids = self._token_ids(texts)
        return self.features(ids) if self.feature_cache else ids

    def example_length(self, example) -> int:
        return 1 if torch.is_tensor(example) else len(example)

    def collate(self, examples) -> dict:
        if examples and torch.is_tensor(examples[0]):
            return {"features": torch.stack(examples)}
        return pad_token_batch(examples, self.pad_id)

    @torch.no_grad()  # not inference_mode: the features feed autograd-recorded head steps later
    def features(self, token_ids: list[list[int]], batch_size: int = 64) -> list[torch.Tensor]:
        """Pooled base features (hidden state at the last non-pad token) of every example, in input order.
        Runs on the GPU when there is one, batches sorted by length, base in eval mode."""
        body = _base_model(self.net)
        home = next(body.parameters()).device
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else home
        was_training = body.training
        body.eval()
        body.to(device)
        out: list[torch.Tensor | None] = [None] * len(token_ids)
        try:
            order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = pad_token_batch([token_ids[i] for i in chunk], self.pad_id)
                input_ids = batch["input_ids"].to(device)
                hidden = body(
                    input_ids=input_ids, attention_mask=batch["attention_mask"].to(device), use_cache=False
                ).last_hidden_state
                pooled = _pool_last_non_pad(hidden, input_ids, self.pad_id).float().cpu()
                for j, i in enumerate(chunk):
                    out[i] = pooled[j].clone()
        finally:
            body.to(home)
            body.train(was_training)
        return out

    def _fast_path_matches(self) -> bool:
        """Check on two short texts that head(cached features) reproduces the full model's logits."""
        ids = self._token_ids(["a short check", "another, slightly longer sentence to compare the two paths"])
        was_training = self.wrapper.training
        self.wrapper.eval()
        try:
            with torch.inference_mode():
                batch = pad_token_batch(ids, self.pad_id)
                device = next(self.wrapper.parameters()).device
                slow = self.wrapper(**{k: v.to(device) for k, v in batch.items()}).float().cpu()
                fast = FeatureHead(self.head)(torch.stack(self.features(ids)).to(device)).float().cpu()
        finally:
            self.wrapper.train(was_training)
        return torch.allclose(slow, fast, atol=1e-4, rtol=1e-3)

    # --- export and description ----------------------------------------------------------------

    def save_pretrained(self, out_dir) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with _quiet_transformers():  # no "Writing model shards" bar at every best epoch
            self.net.save_pretrained(out_dir)  # LoRA: adapter + head (peft); else the full model (safetensors)
        self.tokenizer.save_pretrained(out_dir)
        info = {
            "arm": "finetune",
            "method": self.method,
            "base_model": self.pretrained_name,
            "base_model_path": self.pretrained_path,
            "label_names": self.label_names,
            "max_length": self.max_length,
            "pad_token_id": self.pad_id,
            "head": self.head_name,
        }
        if self.lora:
            info["lora"] = self.lora
        if self.method == "unfreeze":
            info["unfreeze"] = {
                "after_epochs": self.unfreeze_after_epochs,
                "top_k": self.unfreeze_top_k,
                "base_lr_ratio": self.base_lr_ratio,
            }
        write_json(out_dir / "ftvs.json", info)

    def count_parameters(self) -> dict:
        seen, total = set(), 0
        for p in self.net.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        params = dict(self.net.named_parameters())
        head = sum(params[n].numel() for n in self.head_names)
        base = sum(params[n].numel() for n in self.base_names)
        return {"total": total, "trainable": head + base, "trainable_head": head, "trainable_base": base}

    def describe(self) -> dict:
        cfg = self.hf.config.get_text_config()
        n = self.count_parameters()
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
        desc = {
            "architecture": {
                "type": f"pre-trained decoder-only transformer ({type(self.hf).__name__})",
                "model_type": cfg.model_type,
                "n_layer": cfg.num_hidden_layers,
                "n_embd": cfg.hidden_size,
                "n_head": heads,
                "n_kv_head": getattr(cfg, "num_key_value_heads", None) or heads,
                "d_ff": getattr(cfg, "intermediate_size", None)
                or getattr(cfg, "n_inner", None)
                or 4 * cfg.hidden_size,
                "vocab_size": cfg.vocab_size,
                "max_position": getattr(cfg, "max_position_embeddings", None)
                or getattr(cfg, "n_positions", None),
            },
            "method": self.method,
            "pretrained_name": self.pretrained_name,
            "pretrained_path": self.pretrained_path,
            "params_total": n["total"],
            "params_trainable": n["trainable"],
            "params_trainable_head": n["trainable_head"],
            "params_trainable_base": n["trainable_base"],
            "head": f"Linear({self.head.in_features}->{self.head.out_features}, "
            f"{'bias' if self.head.bias is not None else 'no bias'}) on the hidden state of the last non-pad token",
            "tokenizer": {
                "name": self.pretrained_name,
                "type": type(self.tokenizer).__name__,
                "vocab_size": len(self.tokenizer),
                "pad_token": self.tokenizer.pad_token,
                "pad_token_id": self.pad_id,
                "padding_side": "right",
            },
            "max_length": self.max_length,
            "feature_cache": self.feature_cache,
            "gradient_checkpointing": self.gradient_checkpointing,
        }
        if self.lora:
            desc["lora"] = self.lora
        if self.method == "unfreeze":
            desc["unfreeze"] = {
                "after_epochs": self.unfreeze_after_epochs,
                "top_k": self.unfreeze_top_k if self.unfreeze_top_k is not None else "all",
                "base_lr_ratio": self.base_lr_ratio,
                "note": "params_trainable counts the base once unfrozen",
            }
        return desc


# --------------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_transformers():
    """Hide the "newly initialized score.weight" load report (the new head is intended) and the
    per-file progress bars of loading and saving."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load is noise in logs and errors
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet_peft():
    """peft (0.21) queries transformers' deprecated `is_gradient_checkpointing`; nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _load_classifier(source, label_names, pad_id: int, name: str):
    from transformers import AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    config = load_config(name, resolved=source)
    check_decoder_only(config, name)
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise FtvsError(
            f"model type {config.model_type!r} of {name!r} has no sequence-classification head in transformers"
        )
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {label: i for i, label in enumerate(label_names)}
    config.pad_token_id = pad_id  # HF pools the last token != pad_token_id: a wrong id silently ruins it
    if hasattr(config, "get_text_config") and config.get_text_config() is not config:
        config.get_text_config().pad_token_id = pad_id
    try:
        with _quiet_transformers():
            return AutoModelForSequenceClassification.from_pretrained(
                str(source), config=config, dtype=torch.float32
            )
    except OSError as e:
        raise FtvsError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None


def _enable_gradient_checkpointing(hf_model) -> None:
    if not getattr(hf_model, "supports_gradient_checkpointing", False):
        raise FtvsError(
            f"{type(hf_model).__name__} does not support gradient checkpointing; drop --gradient_checkpointing"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(hf_model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def resolve_lora_targets(hf_model, override=None) -> list[str]:
    """LoRA target module names for this architecture (or the user's, checked to exist)."""
    linear_names = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in _base_model(hf_model).named_modules()
            if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
        }
    )
    if override:
        targets = [t.strip() for t in override if t and t.strip()]
        unknown = [t for t in targets if t not in linear_names]
        if unknown:
            raise FtvsError(
                f"--lora_target_modules {unknown[0]!r} is not a linear layer of this model{closest(unknown[0], linear_names)}; "
                f"choose from {', '.join(linear_names)}"
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


def build_finetune_arm(
    model_name,
    label_names,
    *,
    method: str = "lora",
    max_length: int = 128,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    lora_target_modules=None,
    unfreeze_after_epochs: int = 1,
    unfreeze_top_k: int | None = None,
    base_lr_ratio: float = 0.1,
    gradient_checkpointing: bool = False,
    feature_cache: bool = True,
) -> FinetuneArm:
    """A fresh fine-tuning arm: pre-trained body + new head, set up for `method`."""
    _check_method(method)
    if len(label_names) < 2:
        raise FtvsError(f"need at least 2 labels to classify, got {len(label_names)}")
    if max_length < 1:
        raise FtvsError(f"invalid max_length={max_length}: must be >= 1")
    if method == "lora" and lora_r < 1:
        raise FtvsError(f"invalid lora_r={lora_r}: must be >= 1 (e.g. 8)")
    if method == "unfreeze":
        if unfreeze_after_epochs < 0:
            raise FtvsError(f"invalid unfreeze_after_epochs={unfreeze_after_epochs}: must be >= 0")
        if not base_lr_ratio > 0:
            raise FtvsError(f"invalid base_lr_ratio={base_lr_ratio}: must be > 0 (e.g. 0.1)")
    model_name = str(model_name or DEFAULT_MODEL)
    source = resolve_model(model_name)
    config = load_config(model_name, resolved=source)
    check_decoder_only(config, model_name)
    tokenizer = load_tokenizer(model_name, resolved=source)
    hf_model = _load_classifier(source, label_names, tokenizer.pad_token_id, model_name)
    n_layers = hf_model.config.get_text_config().num_hidden_layers
    if method == "unfreeze" and unfreeze_top_k is not None and not 1 <= unfreeze_top_k <= n_layers:
        raise FtvsError(
            f"invalid unfreeze_top_k={unfreeze_top_k}: this model has {n_layers} blocks; use 1..{n_layers}"
        )
    positions = getattr(hf_model.config, "max_position_embeddings", None) or getattr(
        hf_model.config, "n_positions", None
    )
    if positions and max_length > positions:
        raise FtvsError(
            f"max_length={max_length} exceeds the model's {positions} positions; lower --max_seq_length"
        )

    if gradient_checkpointing and method != "frozen":
        _enable_gradient_checkpointing(hf_model)

    net, lora = hf_model, None
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        targets = resolve_lora_targets(hf_model, lora_target_modules)
        head = _head_name(hf_model, len(label_names))
        lora = {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "target_modules": targets}
        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=targets,
            modules_to_save=[head],
            fan_in_fan_out=hf_model.config.model_type in CONV1D_MODEL_TYPES,
            bias="none",
        )
        try:
            with warnings.catch_warnings():  # peft calls transformers' deprecated checkpointing query
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
                )
                net = get_peft_model(hf_model, peft_config)
        except ValueError as e:
            raise FtvsError(
                f"LoRA set-up failed: {str(e).splitlines()[0]}; check --lora_target_modules"
            ) from None

    return FinetuneArm(
        net,
        tokenizer,
        label_names,
        method=method,
        max_length=max_length,
        pretrained_name=model_name,
        pretrained_path=str(source),
        unfreeze_after_epochs=unfreeze_after_epochs,
        unfreeze_top_k=unfreeze_top_k,
        base_lr_ratio=base_lr_ratio,
        feature_cache=feature_cache,
        lora=lora,
        gradient_checkpointing=gradient_checkpointing,
    )


def load_finetune_arm(model_dir) -> FinetuneArm:
    """Rebuild an exported fine-tuned model (a run's `model/` folder) for evaluation, in eval mode."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    info = read_json(model_dir / "ftvs.json", "model marker")
    if info.get("arm") != "finetune":
        raise FtvsError(f"{model_dir} does not hold a fine-tuned model (ftvs.json arm={info.get('arm')!r})")
    for key in ("method", "label_names", "max_length", "base_model"):
        if key not in info:
            raise FtvsError(
                f"{model_dir / 'ftvs.json'} lacks {key!r}; the export is incomplete, retrain or restore it"
            )
    method, label_names = info["method"], info["label_names"]
    _check_method(method)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except OSError as e:
        raise FtvsError(f"cannot load the tokenizer saved in {model_dir}: {str(e).splitlines()[0]}") from None
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = tokenizer.truncation_side = "right"
    pad_id = int(info.get("pad_token_id", tokenizer.pad_token_id))

    if method == "lora":
        from peft import PeftModel

        if not (model_dir / "adapter_config.json").is_file():
            raise FtvsError(
                f"{model_dir} lacks adapter_config.json; the LoRA export is incomplete, retrain or restore it"
            )
        base_path = info.get("base_model_path")
        if base_path and Path(base_path, "config.json").is_file():
            source = Path(base_path)
        else:
            source = resolve_model(info["base_model"])
        hf_model = _load_classifier(source, label_names, pad_id, info["base_model"])
        with _quiet_peft():
            net = PeftModel.from_pretrained(hf_model, str(model_dir), is_trainable=False)
        lora = info.get("lora")
    else:
        net = _load_classifier(model_dir, label_names, pad_id, str(model_dir))
        source, lora = info.get("base_model_path", info["base_model"]), None
    unfreeze = info.get("unfreeze") or {}
    arm = FinetuneArm(
        net,
        tokenizer,
        label_names,
        method=method,
        max_length=info["max_length"],
        pretrained_name=info["base_model"],
        pretrained_path=str(source),
        feature_cache=False,
        lora=lora,
        unfreeze_after_epochs=unfreeze.get("after_epochs", 1),
        unfreeze_top_k=unfreeze.get("top_k"),
        base_lr_ratio=unfreeze.get("base_lr_ratio", 0.1),
    )
    for p in arm.net.parameters():
        p.requires_grad_(False)
    arm.model.eval()
    return arm
