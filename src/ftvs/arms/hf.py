"""Hugging Face plumbing under the fine-tuning arm: loading a sequence classifier quietly, finding its
head, body and blocks, and the modules the training loop sees around it.

HF pools decoder-only classifiers on the hidden state of the last non-pad token; `pool_last_non_pad`
is that rule, so features computed once by `pooled_features` feed the very same head.
"""

import contextlib
import warnings

import torch
import torch.nn as nn

from ftvs.arms.base import embedding_param_ids
from ftvs.arms.cpu_attention import training_attention
from ftvs.batching import pad_token_batch
from ftvs.errors import FtvsError
from ftvs.pretrained import check_decoder_only, load_config, safe_pretrained_kwargs


class SequenceClassifier(nn.Module):
    """`model(input_ids, attention_mask) -> logits [B, C]` around an HF (or peft) sequence classifier."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.base_frozen = False  # a frozen base is kept in eval mode (no dropout noise on fixed features)

    def forward(self, input_ids, attention_mask=None):
        with training_attention(unwrap_peft(self.net).config, input_ids.device.type):
            return self.net(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.base_frozen:
            base_model(self.net).eval()
        return self


class FeatureHead(nn.Module):
    """`model(features) -> logits`: the HF head (the very same Linear) on cached pooled features."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head

    def forward(self, features):
        return self.head(features.to(self.head.weight.dtype))


def unwrap_peft(net: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or `net` itself)."""
    get_base = getattr(net, "get_base_model", None)
    return get_base() if callable(get_base) else net


def base_model(net: nn.Module) -> nn.Module:
    """The transformer body (e.g. LlamaModel) of a sequence-classification model, peft-wrapped or not."""
    hf = unwrap_peft(net)
    return getattr(hf, hf.base_model_prefix)


def head_name(hf_model, num_labels: int) -> str:
    """Attribute name of the classification head ("score" for Llama/GPT-2/Qwen/Pythia...)."""
    prefix = hf_model.base_model_prefix
    for name, module in hf_model.named_children():
        if name != prefix and isinstance(module, nn.Linear) and module.out_features == num_labels:
            return name
    for name in ("score", "classifier"):
        if hasattr(hf_model, name):
            return name
    raise FtvsError(
        f"cannot find the classification head of {type(hf_model).__name__}; "
        "this architecture is not supported"
    )


def block_list(base: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks inside the body (model.layers, transformer.h, ...)."""
    candidates = [
        (n, m) for n, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers
    ]
    if not candidates:
        raise FtvsError(
            f"cannot find the {num_layers} transformer blocks of {type(base).__name__}; "
            "use --unfreeze_top_k all"
        )
    return min(candidates, key=lambda nm: nm[0].count("."))


def top_blocks_names(net: nn.Module, base_named: dict, top_k: int) -> set[str]:
    """Names among `base_named` in the top `top_k` blocks or above them (final norm); embeddings excluded."""
    body = base_model(net)
    _, blocks = block_list(body, unwrap_peft(net).config.get_text_config().num_hidden_layers)
    top = {id(p) for block in list(blocks)[len(blocks) - top_k :] for p in block.parameters()}
    in_blocks = {id(p) for p in blocks.parameters()}
    embeddings = embedding_param_ids(body)
    return {
        n
        for n, p in base_named.items()
        if id(p) in top or (id(p) not in in_blocks and id(p) not in embeddings)
    }


def pool_last_non_pad(hidden: torch.Tensor, input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Hidden state at the rightmost token that is not the pad id: the HF decoder-only pooling rule."""
    non_pad = (input_ids != pad_id).to(torch.int64)
    idx = (torch.arange(input_ids.shape[-1], device=input_ids.device) * non_pad).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


@torch.no_grad()  # not inference_mode: the features feed autograd-recorded head steps later
def pooled_features(
    body: nn.Module, token_ids: list[list[int]], pad_id: int, batch_size: int
) -> list[torch.Tensor]:
    """Pooled `body` features of every example, in input order. Runs on the GPU when there is one,
    batches sorted by length, body in eval mode (its device and mode are restored afterwards)."""
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
            batch = pad_token_batch([token_ids[i] for i in chunk], pad_id)
            input_ids = batch["input_ids"].to(device)
            hidden = body(
                input_ids=input_ids, attention_mask=batch["attention_mask"].to(device), use_cache=False
            ).last_hidden_state
            pooled = pool_last_non_pad(hidden, input_ids, pad_id).float().cpu()
            for j, i in enumerate(chunk):
                out[i] = pooled[j].clone()
    finally:
        body.to(home)
        body.train(was_training)
    return out


def feature_head_matches(wrapper: SequenceClassifier, head: nn.Linear, token_ids, pad_id: int) -> bool:
    """Whether `head` on pooled features reproduces the full model's logits for `token_ids`."""
    was_training = wrapper.training
    wrapper.eval()
    try:
        with torch.inference_mode():
            batch = pad_token_batch(token_ids, pad_id)
            device = next(wrapper.parameters()).device
            slow = wrapper(**{k: v.to(device) for k, v in batch.items()}).float().cpu()
            features = pooled_features(base_model(wrapper.net), token_ids, pad_id, batch_size=64)
            fast = FeatureHead(head)(torch.stack(features).to(device)).float().cpu()
    finally:
        wrapper.train(was_training)
    return torch.allclose(slow, fast, atol=1e-4, rtol=1e-3)


@contextlib.contextmanager
def quiet_transformers():
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
def quiet_peft():
    """peft (0.21) queries transformers' deprecated `is_gradient_checkpointing`; nothing a user can fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_classifier(source, label_names, pad_id: int, name: str):
    """`AutoModelForSequenceClassification` for `label_names` (fp32), pooling on `pad_id`."""
    from transformers import AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    config = load_config(name, resolved=source)
    check_decoder_only(config, name)
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise FtvsError(
            f"model type {config.model_type!r} of {name!r} has no sequence-classification head "
            "in transformers"
        )
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {label: i for i, label in enumerate(label_names)}
    config.pad_token_id = pad_id  # HF pools the last token != pad_token_id: a wrong id silently ruins it
    if hasattr(config, "get_text_config") and config.get_text_config() is not config:
        config.get_text_config().pad_token_id = pad_id
    kwargs = safe_pretrained_kwargs(source, weights=True)
    try:
        with quiet_transformers():
            return AutoModelForSequenceClassification.from_pretrained(
                str(source), config=config, dtype=torch.float32, **kwargs
            )
    except (OSError, ValueError) as e:
        raise FtvsError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None


def enable_gradient_checkpointing(hf_model) -> None:
    if not getattr(hf_model, "supports_gradient_checkpointing", False):
        raise FtvsError(
            f"{type(hf_model).__name__} does not support gradient checkpointing; "
            "drop --gradient_checkpointing"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(hf_model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
