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

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ftvs.arms.base import DEFAULT_LEARNING_RATES, Arm, base_ids, decay_param_groups, embedding_param_ids
from ftvs.arms.cast_once import cast_activations_once
from ftvs.arms.hf import (
    FeatureHead,
    SequenceClassifier,
    base_model,
    block_list,
    enable_gradient_checkpointing,
    feature_head_matches,
    head_name,
    load_classifier,
    pooled_features,
    quiet_peft,
    quiet_transformers,
    top_blocks_names,
    unwrap_peft,
)
from ftvs.arms.lora import add_lora
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
    safe_pretrained_kwargs,
)
from ftvs.rundir import MODEL_MARKER

METHODS = ("lora", "full", "frozen", "unfreeze")


def default_learning_rate(method: str) -> float:
    """Peak learning rate used when the user gives none (`unfreeze`: the head's; base = x base_lr_ratio)."""
    check_method(method)
    return DEFAULT_LEARNING_RATES[method]


def check_method(method: str) -> None:
    if method not in METHODS:
        raise FtvsError(
            f"unknown fine-tuning method {method!r}{closest(str(method), METHODS)}; "
            f"use one of {', '.join(METHODS)}"
        )


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
        check_method(method)
        self.net = net  # HF AutoModelForSequenceClassification, or its peft wrapper for LoRA
        self.hf = unwrap_peft(net)
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
        self._casts_once = False  # store_frozen_weights hooks the casts once (arms/cast_once.py)
        self.default_learning_rate = DEFAULT_LEARNING_RATES[method]
        self.pad_id = int(tokenizer.pad_token_id)
        self.empty_id = int(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else self.pad_id)
        self.head_name = head_name(self.hf, len(self.label_names))
        self.head = getattr(self.hf, self.head_name)
        if method == "lora":  # peft trains a copy of the head (modules_to_save); use that one
            active = getattr(self.head, "modules_to_save", None)
            if active is not None:
                self.head = active[net.active_adapter]

        self.wrapper = SequenceClassifier(net)
        self.head_names, self.base_names = trainable_names(
            net, self.head, self.head_name, method, unfreeze_top_k
        )
        for name, p in net.named_parameters():
            p.requires_grad_(name in self.head_names or name in self.base_names)
        self.wrapper.base_frozen = method == "frozen"
        self.feature_cache = method == "frozen" and feature_cache and self._feature_cache_works()
        self.model: nn.Module = FeatureHead(self.head) if self.feature_cache else self.wrapper
        self._epoch_state = None

    # --- what trains ---------------------------------------------------------------------------

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

    def store_frozen_weights(self, dtype) -> None:
        """LoRA under bf16/fp16 autocast: the frozen Linear weights of the base are stored in `dtype`, so
        the step does not cast ~100M weights again on every forward (and the base takes half the memory).
        Embeddings and norms stay fp32 (so does the residual stream they feed), and so do the adapters,
        the head, their gradients and optimizer state. Only LoRA: it never saves the base, so what is
        saved keeps the pre-trained fp32 weights; `ftvs evaluate` reloads the base in fp32. The training
        forward then casts each activation once (arms/cast_once.py)."""
        if dtype is None or self.method != "lora":
            return
        body = base_model(self.net)
        for module in body.modules():
            if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                module.to(dtype)
        if not self._casts_once:
            _, blocks = block_list(body, self.hf.config.get_text_config().num_hidden_layers)
            cast_activations_once(self.net, blocks)
            self._casts_once = True

    def blocks(self) -> nn.ModuleList | None:
        if self.feature_cache:  # the training forward runs the head only
            return None
        try:
            return block_list(base_model(self.net), self.hf.config.get_text_config().num_hidden_layers)[1]
        except FtvsError:
            return None

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
                f"checkpoint does not match this model ({len(missing)} tensors missing, {len(unexpected)} "
                f"unexpected, e.g. {example}); it belongs to another model or method"
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

    def token_ids(self, texts) -> list[list[int]]:
        """Token ids of `texts` as the model reads them (truncated; an empty text becomes one eos token)."""
        return [
            ids if ids else [self.empty_id] for ids in base_ids(self.tokenizer, list(texts), self.max_length)
        ]

    def encode(self, texts) -> list:
        ids = self.token_ids(texts)
        return self.features(ids) if self.feature_cache else ids

    def example_length(self, example) -> int:
        return 1 if torch.is_tensor(example) else len(example)

    def collate(self, examples) -> dict:
        if examples and torch.is_tensor(examples[0]):
            return {"features": torch.stack(examples)}
        return pad_token_batch(examples, self.pad_id)

    def features(self, token_ids: list[list[int]], batch_size: int = 64) -> list[torch.Tensor]:
        """Pooled base features (hidden state at the last non-pad token) of every example, in input order."""
        return pooled_features(base_model(self.net), token_ids, self.pad_id, batch_size)

    def _feature_cache_works(self) -> bool:
        """Check on two short texts that head(cached features) gives the full model's logits; warn if not."""
        ids = self.token_ids(["a short check", "another, slightly longer sentence to compare the two paths"])
        if feature_head_matches(self.wrapper, self.head, ids, self.pad_id):
            return True
        warnings.warn(
            f"{type(self.hf).__name__}: the frozen feature cache does not reproduce the model's own "
            "logits for this architecture; training through the full model instead",
            stacklevel=3,
        )
        return False

    # --- export and description ----------------------------------------------------------------

    def save_pretrained(self, out_dir) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():  # no "Writing model shards" bar at every best epoch
            self.net.save_pretrained(
                out_dir
            )  # LoRA: adapter + head (peft); else the full model (safetensors)
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
        write_json(out_dir / MODEL_MARKER, info)

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
        n = self.count_parameters()
        desc = {
            "architecture": _architecture(self.hf),
            "method": self.method,
            "pretrained_name": self.pretrained_name,
            "pretrained_path": self.pretrained_path,
            "params_total": n["total"],
            "params_trainable": n["trainable"],
            "params_trainable_head": n["trainable_head"],
            "params_trainable_base": n["trainable_base"],
            "head": f"Linear({self.head.in_features}->{self.head.out_features}, "
            f"{'bias' if self.head.bias is not None else 'no bias'}) "
            "on the hidden state of the last non-pad token",
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


def trainable_names(net, head: nn.Module, head_name: str, method: str, top_k: int | None):
    """Names (in `net`'s namespace) of head parameters and of base parameters `method` ever trains."""
    named = dict(net.named_parameters())
    if method == "lora":
        trained = {n for n, p in named.items() if p.requires_grad}  # as peft set them up
        heads = {n for n in trained if f".{head_name}." in f".{n}" or n.startswith(f"{head_name}.")}
        return heads, trained - heads
    head_ids = {id(p) for p in head.parameters()}
    heads = {n for n, p in named.items() if id(p) in head_ids}
    if method == "frozen":
        return heads, set()
    base_named = {n: p for n, p in named.items() if n not in heads}
    if method == "full" or top_k is None:
        return heads, set(base_named)
    return heads, top_blocks_names(net, base_named, top_k)


def _architecture(hf_model) -> dict:
    """The sizes of a pre-trained model, named as the from-scratch arm names its own."""
    cfg = hf_model.config.get_text_config()
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    return {
        "type": f"pre-trained decoder-only transformer ({type(hf_model).__name__})",
        "model_type": cfg.model_type,
        "n_layer": cfg.num_hidden_layers,
        "n_embd": cfg.hidden_size,
        "n_head": heads,
        "n_kv_head": getattr(cfg, "num_key_value_heads", None) or heads,
        "d_ff": getattr(cfg, "intermediate_size", None)
        or getattr(cfg, "n_inner", None)
        or 4 * cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "max_position": getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None),
    }


# --- building and loading ---------------------------------------------------------------------------


def _check_settings(cfg, label_names) -> None:
    """Refuse settings the model cannot be built with, before anything is loaded."""
    check_method(cfg.method)
    if len(label_names) < 2:
        raise FtvsError(f"need at least 2 labels to classify, got {len(label_names)}")
    cfg.validate()  # the ranges of every setting (TrainConfig.validate, the one place for them)


def _check_fits_model(cfg, hf_model) -> None:
    """Refuse settings that the loaded model's size rules out."""
    n_layers = hf_model.config.get_text_config().num_hidden_layers
    top_k = cfg.unfreeze_top_k
    if cfg.method == "unfreeze" and top_k is not None and not 1 <= top_k <= n_layers:
        raise FtvsError(
            f"invalid unfreeze_top_k={top_k}: this model has {n_layers} blocks; use 1..{n_layers}"
        )
    positions = getattr(hf_model.config, "max_position_embeddings", None) or getattr(
        hf_model.config, "n_positions", None
    )
    if positions and cfg.max_seq_length > positions:
        raise FtvsError(
            f"invalid max_seq_length={cfg.max_seq_length}: more than the model's {positions} positions; "
            f"use at most {positions}"
        )


def build_finetune_arm(cfg, train_texts, label_names) -> FinetuneArm:
    """A fresh fine-tuning arm: pre-trained body + new head, set up for `cfg.method`.

    `train_texts` is unused (the tokenizer is pre-trained); the signature is the scratch builder's."""
    _check_settings(cfg, label_names)
    model_name = str(cfg.model_name_or_path or DEFAULT_MODEL)
    source = resolve_model(model_name)
    check_decoder_only(load_config(model_name, resolved=source), model_name)
    tokenizer = load_tokenizer(model_name, resolved=source)
    hf_model = load_classifier(source, label_names, tokenizer.pad_token_id, model_name)
    _check_fits_model(cfg, hf_model)
    if cfg.gradient_checkpointing and cfg.method != "frozen":
        enable_gradient_checkpointing(hf_model)
    net, lora = hf_model, None
    if cfg.method == "lora":
        net, lora = add_lora(
            hf_model,
            head_name(hf_model, len(label_names)),
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
        )
    return FinetuneArm(
        net,
        tokenizer,
        label_names,
        method=cfg.method,
        max_length=cfg.max_seq_length,
        pretrained_name=model_name,
        pretrained_path=str(source),
        unfreeze_after_epochs=cfg.unfreeze_after_epochs,
        unfreeze_top_k=cfg.unfreeze_top_k,
        base_lr_ratio=cfg.base_lr_ratio,
        feature_cache=cfg.feature_cache,
        lora=lora,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _read_marker(model_dir: Path) -> dict:
    info = read_json(model_dir / MODEL_MARKER, "model marker")
    if info.get("arm") != "finetune":
        raise FtvsError(f"{model_dir} does not hold a fine-tuned model (ftvs.json arm={info.get('arm')!r})")
    for key in ("method", "label_names", "max_length", "base_model"):
        if key not in info:
            raise FtvsError(
                f"{model_dir / MODEL_MARKER} lacks {key!r}; the export is incomplete, retrain or restore it"
            )
    check_method(info["method"])
    return info


def _load_saved_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    kwargs = safe_pretrained_kwargs(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError) as e:
        raise FtvsError(f"cannot load the tokenizer saved in {model_dir}: {str(e).splitlines()[0]}") from None
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = tokenizer.truncation_side = "right"
    return tokenizer


def _load_lora_net(model_dir: Path, info: dict, pad_id: int):
    """The base model the adapter was trained on, with the saved adapter and head; and where the base is."""
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
    kwargs = safe_pretrained_kwargs(model_dir, weights=True)
    if not (model_dir / ADAPTER_WEIGHTS).is_file():  # peft would fall back to unpickling adapter_model.bin
        raise FtvsError(
            f"{model_dir} lacks {ADAPTER_WEIGHTS}; ftvs loads safetensors only: retrain or restore the export"
        )
    hf_model = load_classifier(source, info["label_names"], pad_id, info["base_model"])
    with quiet_peft():
        net = PeftModel.from_pretrained(hf_model, str(model_dir), is_trainable=False, **kwargs)
    return net, source


def load_finetune_arm(model_dir) -> FinetuneArm:
    """Rebuild an exported fine-tuned model (a run's `model/` folder) for evaluation, in eval mode."""
    model_dir = Path(model_dir)
    info = _read_marker(model_dir)
    method, label_names = info["method"], info["label_names"]
    tokenizer = _load_saved_tokenizer(model_dir)
    pad_id = int(info.get("pad_token_id", tokenizer.pad_token_id))
    if method == "lora":
        net, source = _load_lora_net(model_dir, info, pad_id)
        lora = info.get("lora")
    else:
        net = load_classifier(model_dir, label_names, pad_id, str(model_dir))
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
