"""A LoRA step under autocast casts each activation once, where it is made, instead of once per consumer.

Under autocast the residual stream stays fp32 (embeddings and norms are fp32), so each block's norm output is
fp32 and autocast casts it to bf16 again for every Linear that reads it: q, k, v and the two LoRA `A`
matrices after the attention norm, gate and up after the MLP norm, with a cast back in the backward of each.
peft adds two more: it casts a LoRA layer's input to the adapter's fp32 dtype, and autocast casts that back
to bf16 for the matmul. The rotary cos/sin are fp32 too, so q and k leave RoPE in fp32 and are cast back for
attention. On SmolLM2-135M (LoRA r=8, 16 texts x 128 tokens, bf16, 2 idle cores of an AMX Xeon) that is 716
casts of a [16, 128, 576] activation a step, 15% of its time (benchmarks/RESULTS.md, "Casting once").

`cast_activations_once(net, blocks)` makes the norms inside the transformer blocks and the rotary embedding
return the autocast dtype (a forward hook, active only when autocast is on and gradients are recorded: a
training step), and turns peft's input cast off (autocast already picks the matmul dtype). What the Linear
layers receive is unchanged: autocast rounded the same fp32 values to bf16 before. What changes: the
gradients reaching a norm output are summed in bf16, and RoPE multiplies in bf16, as Hugging Face models
do when they run in bf16.
"""

import torch
import torch.nn as nn


def _cast_in_training(module, inputs, output):
    """Forward hook: `output` (a tensor or a tuple of them) in the autocast dtype of its device, when autocast
    is on there and gradients are recorded; otherwise unchanged."""
    first = output[0] if isinstance(output, tuple) else output
    if not isinstance(first, torch.Tensor) or not torch.is_grad_enabled():
        return output
    device = first.device.type
    if not torch.is_autocast_enabled(device):
        return output
    dtype = torch.get_autocast_dtype(device)
    if isinstance(output, tuple):
        return tuple(t.to(dtype) if torch.is_floating_point(t) else t for t in output)
    return output.to(dtype) if torch.is_floating_point(output) else output


def is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith(("RMSNorm", "LayerNorm"))


def cast_activations_once(net: nn.Module, blocks: nn.ModuleList) -> None:
    """Hooks on the norms in `blocks` and on `net`'s rotary embeddings, and peft's input cast off on its LoRA
    layers (see the module docstring)."""
    for module in net.modules():
        if hasattr(module, "lora_A") and hasattr(module, "_cast_input_dtype"):  # a peft LoRA layer
            module.cast_input_dtype_enabled = False
        elif type(module).__name__.endswith("RotaryEmbedding"):
            module.register_forward_hook(_cast_in_training)
    for module in blocks.modules():
        if is_norm(module):
            module.register_forward_hook(_cast_in_training)
