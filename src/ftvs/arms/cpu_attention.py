"""The attention of a fine-tuned step that trains on the CPU: grouped-query attention as two plain matmuls
in the autocast dtype (bf16 where it runs) around an fp32 softmax.

torch's SDPA kernels are slow to train through on the CPU in bf16: the fused flash kernel's backward costs
~14x its forward, and the math kernel upcasts bf16 inputs to fp32 and repeats the key/value heads for
grouped-query attention. Here the query heads that share a key/value head are stacked into one matrix, so each
(batch, key/value head) pair is one bf16 matmul with no repeated keys or values. Forward + backward of one
layer at SmolLM2-135M's shapes (16 texts, 9 query heads on 3 key/value heads), 2 idle cores of an AMX
Xeon, at 16 / 64 / 128 tokens: bf16 1.1 / 4.6 / 11.8 ms here against 1.6 / 8.8 / 22.3 ms for SDPA's math
kernel and 6.5 / 16.0 / 36.0 ms for its flash kernel; fp32 0.8 / 5.1 / 19.3 ms against 1.4 / 6.9 / 19.5
(math) and 1.3 / 5.5 / 18.7 (flash) (benchmarks/RESULTS.md, "The LoRA step on the CPU").

`training_attention(config, device_type)` switches an SDPA model to it for one training forward; inference
(no grad) and CUDA keep torch's SDPA. Registered with transformers' AttentionInterface under
`GROUPED_ATTENTION`, with SDPA's mask function made to always build the boolean mask (SDPA's skips it for a
batch without padding): a compiled block (ftvs.compiling) then has one graph for every batch.
"""

import contextlib
import functools

import torch
import torch.nn.functional as F

GROUPED_ATTENTION = "ftvs_cpu_grouped"


def grouped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention-interface function: `query` [B, H, T, d], `key`/`value` [B, KV, S, d] (H a multiple of
    KV, head h reads key/value head h // (H / KV), as HF's `repeat_kv`). Returns ([B, T, H, d], None).
    What it does not implement (logit soft-capping, attention sinks, unequal head sizes, no grad) goes to
    transformers' SDPA function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    unsupported = kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None
    if unsupported or not torch.is_grad_enabled() or query.shape[-1] != value.shape[-1]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    B, H, T, d = query.shape
    KV, S = key.shape[1], key.shape[2]
    G = H // KV
    scaling = d**-0.5 if scaling is None else scaling
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    q = (query * scaling).to(dtype).reshape(B, KV, G * T, d)  # the G query heads of a key/value head
    scores = torch.matmul(q, key.to(dtype).transpose(-1, -2)).view(B, KV, G, T, S)
    if attention_mask is None:
        if kwargs.get("is_causal", getattr(module, "is_causal", True)) and T > 1:
            causal = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    else:
        m = (
            attention_mask[:, :, None]
            if attention_mask.shape[1] == 1
            else attention_mask.unflatten(1, (KV, G))
        )
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min)
        else:
            scores = scores + m
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
    if dropout and module.training:
        probs = F.dropout(probs, dropout)
    out = torch.matmul(probs.view(B, KV, G * T, S), value.to(dtype)).view(B, H, T, d)
    return out.transpose(1, 2).contiguous(), None


def boolean_mask(*args, **kwargs):
    """SDPA's mask function, returning the mask even where plain causal attention would do."""
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False})


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, boolean_mask)


@contextlib.contextmanager
def training_attention(config, device_type: str):
    """Within it, a model of `config` that attends with SDPA trains through `grouped_attention` when on the
    CPU with grad enabled; anything else is left as it is."""
    current = getattr(config, "_attn_implementation", None)
    if device_type != "cpu" or not torch.is_grad_enabled() or current != "sdpa":
        yield
        return
    _register()
    config._attn_implementation = GROUPED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = current
