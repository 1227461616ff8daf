"""Which precision a run computes in: `mixed_precision: auto` resolved for the arm and the device at hand.

This module owns the decision; `launch.make_accelerator`, training, evaluation and the benchmarks ask it.
bf16 autocast pays only where the hardware multiplies bf16 natively: CUDA GPUs that support it, and CPUs
with AVX-512 BF16 or AMX-BF16. On any other CPU torch emulates bf16 matmuls (measured on an AVX2-only
CPU: 0.76 GFLOP/s in bf16 against 26 in fp32), so `auto` keeps fp32 there. Even on a CPU with native bf16,
`auto` picks bf16 only for an arm whose training step it measurably speeds up (`CPU_BF16_STEP_SPEEDUP`,
at least `MIN_BF16_SPEEDUP`, measured by benchmarks/bench*.py, with accuracy parity checked by
benchmarks/checks/test_precision_parity.py): the from-scratch presets are too narrow for bf16 matmuls to
beat the casts around them, so they stay fp32 there. Under autocast only the matmul-heavy ops run in bf16:
the weights, the from-scratch head and its logits (model.py), the loss, the gradients and the optimizer
state stay fp32; a LoRA run stores its frozen base in bf16 (arms/finetune.py).
"""

import contextlib
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the x86 bf16 instructions
# training step time fp32 / bf16 on a CPU with AMX-BF16 (benchmarks/RESULTS.md, "Precision by arm" and "The
# LoRA step on the CPU"): scratch tiny on Banking77 (~15 tokens a text, batch 32); SmolLM2-135M LoRA r=8,
# batch 16, at 16 tokens, its shortest inputs (2.03x at 64, 2.29x at 128), frozen base stored in bf16,
# activations cast once (arms/cast_once.py), grouped bf16 attention (arms/cpu_attention.py), no LoRA dropout
# (a Zen 4 EPYC with AVX-512 BF16 and no AMX gave scratch 1.13x, LoRA 1.76x at 16 tokens: the same choices)
CPU_BF16_STEP_SPEEDUP = {"scratch": 1.04, "finetune": 1.58}
MIN_BF16_SPEEDUP = 1.2  # `auto` takes bf16 on a CPU only for a step at least this much faster
ARMS = ("scratch", "finetune")


def native_bf16_flags(cpuinfo_text: str) -> list[str]:
    """The native-bf16 instruction flags named in the `flags` lines of a Linux /proc/cpuinfo text."""
    found = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            found.update(f for f in value.split() if f in NATIVE_BF16_CPU_FLAGS)
    return [f for f in NATIVE_BF16_CPU_FLAGS if f in found]


@functools.cache
def cpu_native_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 flags of this CPU, read once. Empty outside Linux: torch reports no reliable
    equivalent there (its CPU capability says AVX512, not whether bf16 is native), so fp32 is kept."""
    if not sys.platform.startswith("linux"):
        return ()
    try:
        return tuple(native_bf16_flags(Path("/proc/cpuinfo").read_text(errors="replace")))
    except OSError:
        return ()


def cpu_has_native_bf16() -> bool:
    return bool(cpu_native_bf16_flags())


@dataclass(frozen=True)
class Precision:
    """A resolved precision: "no" (fp32), "bf16" or "fp16", and why it was chosen."""

    name: str
    reason: str

    @property
    def autocast_dtype(self):
        return autocast_dtype(self.name)


def resolve_precision(requested: str, device_type: str, arm: str, cpu_flags=None) -> Precision:
    """`auto` (the default): bf16 on a CUDA device that supports it; on a CPU with native bf16
    instructions (`cpu_flags`, by default this CPU's) only for an arm whose step bf16 speeds up by
    `MIN_BF16_SPEEDUP` or more; fp32 ("no") elsewhere. Any other value is kept."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {', '.join(ARMS)}, got {arm!r}")
    if requested != "auto":
        return Precision(requested, "requested")
    if device_type == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "cuda")
        return Precision("no", "cuda without bf16")
    if device_type == "cpu":
        flags = cpu_native_bf16_flags() if cpu_flags is None else tuple(cpu_flags)
        if not flags:
            return Precision("no", "cpu without native bf16")
        speedup = CPU_BF16_STEP_SPEEDUP[arm]
        if speedup >= MIN_BF16_SPEEDUP:
            return Precision("bf16", f"cpu {flags[0]}: {arm} step {speedup:.2f}x faster in bf16")
        return Precision(
            "no", f"cpu {flags[0]}: {arm} step only {speedup:.2f}x faster in bf16 (< {MIN_BF16_SPEEDUP}x)"
        )
    return Precision("no", f"{device_type}: fp32")


def autocast_dtype(precision: str):
    """The dtype autocast runs in for a resolved precision; None for fp32 ("no")."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(precision: str, device_type: str):
    """torch.autocast in a resolved precision on `device_type`; a no-op for fp32 ("no")."""
    import torch

    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
