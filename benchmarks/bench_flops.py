"""The analytic FLOP model of a training step (what MFU divides by), measured with hooks on the Linear layers
the forward pass really calls, and torch's FlopCounterMode as a cross-check."""

import torch
import torch.nn as nn
import torch.nn.functional as F

# The analytic FLOP count, written into the JSON next to the numbers it produced.
FLOPS_FORMULA = (
    "per batch of B sequences padded to T tokens: forward = sum over every Linear the forward pass calls of "
    "2*rows*in*out (rows = B*T for per-token layers, B for layers on the pooled vector) + attention "
    "4*L*B*T^2*d (QK^T and AV, full square); backward = 2*rows*in*out again for each Linear whose INPUT "
    "needs "
    "a gradient (activation grads; with LoRA they flow through the whole frozen base above the first "
    "adapter) "
    "+ 2*rows*in*out for each Linear whose WEIGHT is trainable (weight grads; LoRA: only the adapters and "
    "the "
    "head) + attention 8*L*B*T^2*d when anything below the head trains. Embedding look-ups, norms, "
    "activations, biases and the optimizer are not counted. Full fine-tuning reduces to the usual "
    "6*N*tokens, "
    "LoRA to ~4*N*tokens. MFU = analytic FLOPs of the timed steps / their seconds / probed matmul FLOP/s. "
    "`mfu` counts the padded tokens the hardware actually processed; `mfu_useful` only the real tokens."
)


def linear_flop_profile(model: nn.Module, batch: dict, grad: bool) -> dict:
    """Per-token and per-sequence matmul FLOPs of one forward pass, measured with hooks on every Linear
    (and transformers Conv1D) the forward pass actually calls; see FLOPS_FORMULA."""
    input_ids = batch.get("input_ids")
    B = next(iter(batch.values())).shape[0]
    T = input_ids.shape[1] if input_ids is not None else 1
    prof = {
        "tok_fwd": 0,
        "tok_act": 0,
        "tok_w": 0,
        "seq_fwd": 0,
        "seq_act": 0,
        "seq_w": 0,
        "weights_called": 0,
        "weights_trainable_called": 0,
    }
    seen = set()

    def hook(module, inputs, output):
        x = inputs[0]
        weight = module.weight
        per_row = 2 * weight.numel()
        rows = x.numel() // x.shape[-1]
        kind = "tok" if rows == B * T and T > 1 else "seq"
        scale = T if kind == "tok" else 1
        prof[f"{kind}_fwd"] += per_row * rows / (B * scale)
        if x.requires_grad:
            prof[f"{kind}_act"] += per_row * rows / (B * scale)
        if weight.requires_grad:
            prof[f"{kind}_w"] += per_row * rows / (B * scale)
        if id(module) not in seen:
            seen.add(id(module))
            prof["weights_called"] += weight.numel()
            prof["weights_trainable_called"] += weight.numel() if weight.requires_grad else 0

    linear_types = (nn.Linear,)
    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, linear_types) or type(m).__name__ == "Conv1D"
    ]
    try:
        with torch.set_grad_enabled(grad):
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return prof


class FlopModel:
    """Analytic FLOPs of one training step for a batch of shape (B, T)."""

    def __init__(
        self, profile: dict, n_layer: int, d_attn: int, attention_backward: bool, uses_attention: bool
    ):
        self.p = profile
        self.n_layer = n_layer if uses_attention else 0
        self.d_attn = d_attn
        self.attention_backward = attention_backward

    def train_step(self, B: int, T: int) -> float:
        p = self.p
        per_tok = p["tok_fwd"] + p["tok_act"] + p["tok_w"]
        per_seq = p["seq_fwd"] + p["seq_act"] + p["seq_w"]
        attn = 4 * self.n_layer * B * T * T * self.d_attn * (3 if self.attention_backward else 1)
        return per_tok * B * T + per_seq * B + attn

    def describe(self) -> dict:
        p = self.p
        return {
            "formula": FLOPS_FORMULA,
            "per_token_flops": {
                "forward": p["tok_fwd"],
                "backward_activation_grads": p["tok_act"],
                "backward_weight_grads": p["tok_w"],
            },
            "per_sequence_flops": {
                "forward": p["seq_fwd"],
                "backward_activation_grads": p["seq_act"],
                "backward_weight_grads": p["seq_w"],
            },
            "matmul_weights_on_forward_path": p["weights_called"],
            "trainable_matmul_weights": p["weights_trainable_called"],
            "attention": {"layers": self.n_layer, "d": self.d_attn, "backward": self.attention_backward},
        }


def counted_flops(model, batch, labels) -> float | None:
    """FLOPs of one forward+backward as torch's FlopCounterMode counts them (a cross-check of the linear part:
    it does not count CPU fused attention kernels)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(**batch).float(), labels).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def model_shape(arm) -> tuple[int, int]:
    """(layers, attention width) for the attention FLOP term."""
    if arm.kind == "scratch":
        c = arm.model.config
        return c.n_layer, c.n_embd
    c = arm.hf.config.get_text_config()
    heads = getattr(c, "num_attention_heads", None) or c.n_head
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return c.num_hidden_layers, heads * head_dim
