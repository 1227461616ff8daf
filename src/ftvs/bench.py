"""`ftvs bench`: how fast ftvs trains and predicts, measured against the obvious alternatives.

For one prepared dataset and one model (`--arm scratch --preset tiny`, `--arm finetune --model smollm2-135m
--method lora`, or `--arm both`) it measures, in one process:

- training throughput of the ftvs training step (examples/s, real and padded tokens/s, after warm-up);
- inference latency at batch 1 (p50/p95) and throughput at a large batch;
- peak memory per phase (CUDA `max_memory_allocated`; on CPU the peak RSS, `VmHWM`, reset per phase);
- a matmul probe of the machine (GFLOP/s of a square `torch.mm` in the training dtype) and the model FLOPs
  utilisation (MFU) of the training step against it;

and runs side by side, on the same data, model and batch size:

- (a) scratch: the ftvs step vs `PaddedReferenceClassifier` trained the way the seed repository did it
  (every batch padded to max length, hand-written attention with an explicit causal mask, shuffled batches);
- (b) finetune: the ftvs step vs `transformers.Trainer` with its defaults (dynamic padding, random order);
- (c) finetune: the MFU of the fine-tuning step.

Shared machines are noisy: the two sides of a comparison alternate in rounds (each round times a few
steps of each), so slow phases of the machine hit both; per-round ratios and their median are reported,
and the matmul probe is re-run between rounds so MFU is measured against the machine as it was.
Timings cover whole steps, data loading included, synchronising the device only at window boundaries.
"""

from __future__ import annotations

import argparse
import collections
import copy
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ftvs.config import autocast_dtype, resolve_mixed_precision
from ftvs.errors import FtvsError
from ftvs.model import ScratchClassifier

# The analytic FLOP count, written into the JSON next to the numbers it produced.
FLOPS_FORMULA = (
    "per batch of B sequences padded to T tokens: forward = sum over every Linear the forward pass calls of "
    "2*rows*in*out (rows = B*T for per-token layers, B for layers on the pooled vector) + attention "
    "4*L*B*T^2*d (QK^T and AV, full square); backward = 2*rows*in*out again for each Linear whose INPUT needs "
    "a gradient (activation grads; with LoRA they flow through the whole frozen base above the first adapter) "
    "+ 2*rows*in*out for each Linear whose WEIGHT is trainable (weight grads; LoRA: only the adapters and the "
    "head) + attention 8*L*B*T^2*d when anything below the head trains. Embedding look-ups, norms, "
    "activations, biases and the optimizer are not counted. Full fine-tuning reduces to the usual 6*N*tokens, "
    "LoRA to ~4*N*tokens. MFU = analytic FLOPs of the timed steps / their seconds / probed matmul FLOP/s. "
    "`mfu` counts the padded tokens the hardware actually processed; `mfu_useful` only the real tokens."
)

DEFAULTS = {  # per arm: (batch size, warm-up steps, rounds, steps per round, latency examples, throughput examples)
    "scratch": dict(batch_size=32, warmup_steps=5, rounds=5, steps_per_round=10, latency_examples=200,
                    throughput_examples=2048, throughput_batch_size=256),
    "finetune": dict(batch_size=16, warmup_steps=2, rounds=3, steps_per_round=3, latency_examples=30,
                     throughput_examples=256, throughput_batch_size=64),
}
QUICK = {
    "scratch": dict(warmup_steps=2, rounds=2, steps_per_round=3, latency_examples=20, throughput_examples=256),
    "finetune": dict(warmup_steps=1, rounds=1, steps_per_round=2, latency_examples=5, throughput_examples=32),
}
BATCH_ORDER = {
    "spread": "the length-grouped sampler's batches, visited in van der Corput order over their padded sizes "
              "(the timed steps sample the epoch's batch sizes evenly; see SpreadBatches)",
    "epoch": "the length-grouped sampler's batches in its own shuffled order",
}
TARGETS = {"a_scratch_vs_padded_reference": 2.0, "b_finetune_vs_trainer": 1.0, "c_finetune_mfu_cpu": 0.40}


# --------------------------------------------------------------------------------------------------
# Machine, threads, memory, matmul probe
# --------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.is_available(),
    }
    for mod in ("transformers", "peft", "accelerate"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory, cuda_version=torch.version.cuda,
                    bf16_supported=torch.cuda.is_bf16_supported())
    return info


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_threads(spec: str) -> dict:
    """`--threads N` or `auto`: on CPU, time a small transformer-like workload (a 256x512x512 matmul and
    an element-wise product) at 1 thread and at torch's default, and keep the faster; when the load
    average already reaches the core count, take 1 thread without probing. On a machine with more
    runnable threads than cores, OpenMP barriers stall whenever a worker thread is descheduled, and one
    thread is then many times faster than two (measured here: 10-100x on small ops); on an idle machine
    the default usually wins."""
    default = torch.get_num_threads()
    if spec != "auto":
        n = int(spec)
        if n < 1:
            raise FtvsError(f"--threads must be >= 1 or 'auto', got {spec}")
        torch.set_num_threads(n)
        return {"threads": n, "mode": "fixed", "default": default}
    if torch.cuda.is_available() or default <= 1:
        return {"threads": default, "mode": "auto (default kept)", "default": default}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load >= default:  # already more runnable threads than cores: a short probe can hit a calm moment
        torch.set_num_threads(1)
        return {"threads": 1, "mode": f"auto (load average {load:.1f} >= {default} cores)", "default": default}
    x, w = torch.randn(256, 512), torch.randn(512, 512)
    medians: dict[int, float] = {}
    for _ in range(2):  # alternate so a burst of load does not decide alone
        for n in (1, default):
            torch.set_num_threads(n)
            times = []
            for _ in range(15):
                t0 = time.perf_counter()
                (x @ w).mul_(x)
                times.append(time.perf_counter() - t0)
            medians[n] = min(medians.get(n, math.inf), statistics.median(times))
    best = min(medians, key=medians.get)
    torch.set_num_threads(best)
    return {"threads": best, "mode": "auto", "default": default,
            "probe_ms": {str(k): round(v * 1e3, 4) for k, v in medians.items()}}


class PeakMemory:
    """Peak memory of a phase: CUDA max_memory_allocated, or the peak RSS (Linux VmHWM, reset through
    /proc/self/clear_refs; elsewhere the process-lifetime ru_maxrss)."""

    def __init__(self, device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def read(self) -> dict:
        if self.device.type == "cuda":
            return {"bytes": torch.cuda.max_memory_allocated(self.device), "kind": "cuda max_memory_allocated"}
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return {"bytes": int(line.split()[1]) * 1024, "kind": "peak RSS of the phase (VmHWM)"}
        except OSError:
            pass
        scale = 1 if sys.platform == "darwin" else 1024
        return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
                "kind": "peak RSS of the process so far (ru_maxrss)"}


class MatmulProbe:
    """GFLOP/s of `torch.mm` of two size x size matrices in `dtype` (the dtype the training matmuls run in)."""

    def __init__(self, device, dtype, size: int):
        self.device, self.dtype, self.size = device, dtype, size
        g = torch.Generator(device="cpu").manual_seed(0)
        self.a = torch.randn(size, size, generator=g).to(device, dtype)
        self.b = torch.randn(size, size, generator=g).to(device, dtype)
        self.out = torch.empty(size, size, device=device, dtype=dtype)
        self.inner = 20 if device.type == "cuda" else 1
        torch.mm(self.a, self.b, out=self.out)
        sync(device)

    def measure(self, repeats: int) -> list[float]:
        flops = 2 * self.size**3 * self.inner
        out = []
        for _ in range(repeats):
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(self.inner):
                torch.mm(self.a, self.b, out=self.out)
            sync(self.device)
            out.append(flops / (time.perf_counter() - t0) / 1e9)
        return out

    def describe(self) -> dict:
        return {"op": "torch.mm", "size": self.size, "dtype": str(self.dtype).replace("torch.", ""),
                "device": str(self.device)}


def summary(values) -> dict:
    values = sorted(values)
    if not values:
        return {}
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "n": len(values)}


def percentile(values, q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------


def linear_flop_profile(model: nn.Module, batch: dict, grad: bool) -> dict:
    """Per-token and per-sequence matmul FLOPs of one forward pass, measured with hooks on every Linear
    (and transformers Conv1D) the forward pass actually calls; see FLOPS_FORMULA."""
    input_ids = batch.get("input_ids")
    B = next(iter(batch.values())).shape[0]
    T = input_ids.shape[1] if input_ids is not None else 1
    prof = {"tok_fwd": 0, "tok_act": 0, "tok_w": 0, "seq_fwd": 0, "seq_act": 0, "seq_w": 0,
            "weights_called": 0, "weights_trainable_called": 0}
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
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, linear_types) or type(m).__name__ == "Conv1D"]
    try:
        with torch.set_grad_enabled(grad):
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return prof


class FlopModel:
    """Analytic FLOPs of one training step for a batch of shape (B, T)."""

    def __init__(self, profile: dict, n_layer: int, d_attn: int, attention_backward: bool, uses_attention: bool):
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
        return {"formula": FLOPS_FORMULA,
                "per_token_flops": {"forward": p["tok_fwd"], "backward_activation_grads": p["tok_act"],
                                    "backward_weight_grads": p["tok_w"]},
                "per_sequence_flops": {"forward": p["seq_fwd"], "backward_activation_grads": p["seq_act"],
                                       "backward_weight_grads": p["seq_w"]},
                "matmul_weights_on_forward_path": p["weights_called"],
                "trainable_matmul_weights": p["weights_trainable_called"],
                "attention": {"layers": self.n_layer, "d": self.d_attn, "backward": self.attention_backward}}


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


# --------------------------------------------------------------------------------------------------
# The ftvs training step (as ftvs.train runs it)
# --------------------------------------------------------------------------------------------------


class SpreadBatches:
    """The batches of the ftvs sampler's epoch, visited in van der Corput order over the batches sorted by
    padded size: any run of consecutive steps samples the epoch's range of batch sizes evenly.

    Length grouping makes batch shapes vary a lot (most batches short, a few long); the first few batches
    of a shuffled epoch are then a biased sample, and a benchmark timing only some steps would over- or
    under-state the throughput of a whole epoch. The batches themselves are the sampler's own."""

    def __init__(self, sampler, lengths):
        self.sampler, self.lengths = sampler, np.asarray(lengths)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        batches = self.sampler.batches()
        n = len(batches)
        by_size = np.argsort([len(b) * int(self.lengths[b].max()) for b in batches], kind="stable")
        # quantile (j + 1/2) / n of each batch, as a 24-bit fraction, bit-reversed: the median comes
        # first, then the quartiles, the octiles, ... (a van der Corput sequence over the quantiles)
        fractions = [int((j + 0.5) / n * 2**24) for j in range(n)]
        visit = sorted(range(n), key=lambda j: (int(format(fractions[j], "024b")[::-1], 2), j))
        return iter([batches[by_size[j]] for j in visit])

    def __len__(self) -> int:
        return len(self.sampler)


class FtvsStepRunner:
    """The ftvs training step, set up exactly as `ftvs.train._train` sets it up: Accelerate, the
    length-grouped batch sampler, dynamic padding, the arm's AdamW groups (fused on CUDA), the LR schedule.
    The step body is the hot loop of `_train` without what only happens at logging intervals and epoch
    ends (progress bar, NaN check, checkpoints). Each collated batch's shape and real-token count are
    recorded on the host, so timing never synchronises the device."""

    def __init__(self, arm, cfg, examples, labels, accelerator, total_steps: int, spread: bool = True):
        from torch.utils.data import DataLoader

        from ftvs.batching import IndexedDataset, LengthGroupedBatchSampler, make_collate
        from ftvs.train import lr_lambda

        self.arm, self.cfg, self.accelerator = arm, cfg, accelerator
        self.shapes: collections.deque = collections.deque()
        base_collate = make_collate(arm)

        def collate(items):
            batch = base_collate(items)
            ids, mask = batch.get("input_ids"), batch.get("attention_mask")
            if ids is not None:
                real = int(mask.sum()) if mask is not None else ids.numel()
                self.shapes.append((ids.shape[0], ids.shape[1], real))
            else:  # cached features: one vector per example
                self.shapes.append((len(items), 1, len(items)))
            return batch

        lengths = [arm.example_length(e) for e in examples]
        self.sampler = LengthGroupedBatchSampler(lengths, cfg.per_device_train_batch_size, cfg.seed,
                                                 grouped=cfg.length_grouping)
        if spread:
            self.sampler = SpreadBatches(self.sampler, lengths)
        pin = torch.cuda.is_available()
        self.dataset, self.collate = IndexedDataset(examples, labels), collate
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate,
                            num_workers=cfg.num_workers, pin_memory=pin)
        fused = {"fused": True} if torch.cuda.is_available() else {}
        optimizer = torch.optim.AdamW(arm.param_groups(cfg), lr=cfg.learning_rate,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), **fused)
        self.model, self.optimizer, self.loader = accelerator.prepare(arm.model, optimizer, loader)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.lr_scheduler_type, int(cfg.warmup_ratio * total_steps), total_steps))
        device = accelerator.device
        self.nonfinite = torch.zeros((), device=device, dtype=torch.bool)
        self.run_loss = torch.zeros((), device=device, dtype=torch.float64)
        self.run_preds: list = []
        self.epoch, self._it = 0, None
        self.fused_adamw = bool(self.optimizer.defaults.get("fused"))

    def _next_batch(self):
        while True:
            if self._it is None:
                self.sampler.set_epoch(self.epoch)
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self.epoch += 1
                self._it = None

    def step(self, batch) -> None:
        from ftvs.train import forward_backward  # the training step of `ftvs train`, to the line

        accelerator, model, optimizer = self.accelerator, self.model, self.optimizer
        with accelerator.accumulate(model):
            logits, loss, labels, bad = forward_backward(accelerator, model, batch, self.cfg)
            if bad is not None:  # a step that syncs the gradients
                self.nonfinite |= bad
                optimizer.step()
                self.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        self.run_preds.append(logits.detach().argmax(-1))
        self.run_loss += loss.detach().double() * labels.shape[0]

    def sample_batch(self) -> dict:
        """One collated training batch on the device (for FLOP profiling), outside the timed stream."""
        batches = list(self.sampler)
        items = [self.dataset[i] for i in batches[len(batches) // 2]]
        batch = self.collate(items)
        self.shapes.pop()  # recorded by the collate, but not part of any timed window
        batch.pop("index")
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def count_host_syncs(self, steps: int) -> dict:
        """CUDA only: run `steps` more steps under torch.cuda.set_sync_debug_mode("warn") and count the
        operations that made the host wait for the GPU (item(), blocking copies, ...)."""
        import warnings

        self.model.train()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    batch = self._next_batch()
                    self.shapes.popleft()
                    self.step(batch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
        return {"steps": steps, "synchronizing_ops": len(syncs), "per_step": len(syncs) / max(1, steps),
                "examples": sorted(set(syncs))[:5]}

    def run(self, steps: int) -> dict:
        self.model.train()
        device = self.accelerator.device
        sync(device)
        t0 = time.perf_counter()
        shapes = []
        for _ in range(steps):
            batch = self._next_batch()
            shapes.append(self.shapes.popleft())
            self.step(batch)
        sync(device)
        seconds = time.perf_counter() - t0
        if len(self.run_preds) > 1000:
            self.run_preds = self.run_preds[-10:]
        return window(seconds, shapes)


def window(seconds: float, shapes) -> dict:
    return {"seconds": seconds, "steps": len(shapes), "examples": sum(b for b, _, _ in shapes),
            "padded_tokens": sum(b * t for b, t, _ in shapes), "tokens": sum(r for _, _, r in shapes),
            "shapes": [(b, t) for b, t, _ in shapes]}


# --------------------------------------------------------------------------------------------------
# (a) Baseline: the seed repository's scratch model and loop
# --------------------------------------------------------------------------------------------------


class ReferenceCausalSelfAttention(nn.Module):
    """Unfused attention with an explicit causal mask (GPT-2 style `tril` buffer), as the seed repo did it.
    Same parameters (qkv, proj) as ftvs.model.CausalSelfAttention."""

    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        mask = torch.tril(torch.ones(cfg.max_position, cfg.max_position, dtype=torch.bool))
        self.register_buffer("causal_mask", mask.view(1, 1, cfg.max_position, cfg.max_position), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
        att = att.masked_fill(~self.causal_mask[:, :, :T, :T], float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = att @ v
        return self.resid_dropout(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class PaddedReferenceClassifier(ScratchClassifier):
    """Baseline (a): the ftvs ScratchClassifier with every attention replaced by the reference one. Same
    sizes and parameter names (a state_dict moves between the two), so the comparison isolates the
    implementation: batches padded to max length + unfused attention with an explicit mask."""

    def __init__(self, cfg):
        super().__init__(cfg)
        for block in self.blocks:
            block.attn = ReferenceCausalSelfAttention(cfg)


def pad_to_length(sequences, length: int, pad_id: int) -> dict:
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        seq = seq[:length]
        input_ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class ReferenceStepRunner:
    """The seed repo's loop: shuffled batches, each padded to max_length, plain AdamW (same groups and
    fusing as ftvs), clipping, the same schedule and precision (autocast in the run's mixed precision)."""

    def __init__(self, state_dict, model_cfg, examples, labels, cfg, device, precision: str, total_steps: int):
        from torch.utils.data import DataLoader

        from ftvs.arms import PAD_ID, decay_param_groups, embedding_param_ids
        from ftvs.batching import IndexedDataset
        from ftvs.train import lr_lambda

        self.model = PaddedReferenceClassifier(model_cfg)
        self.model.load_state_dict(state_dict)
        self.model.to(device)
        self.device, self.cfg = device, cfg
        self.autocast_dtype = autocast_dtype(precision)
        max_len = model_cfg.max_position

        def collate(items):
            _, seqs, ys = zip(*items)
            batch = pad_to_length(seqs, max_len, PAD_ID)
            batch["labels"] = torch.as_tensor(ys, dtype=torch.long)
            return batch

        g = torch.Generator().manual_seed(cfg.seed)
        self.loader = DataLoader(IndexedDataset(examples, labels), batch_size=cfg.per_device_train_batch_size,
                                 shuffle=True, generator=g, collate_fn=collate, pin_memory=device.type == "cuda")
        fused = {"fused": True} if device.type == "cuda" else {}
        groups = decay_param_groups(self.model.named_parameters(), cfg.weight_decay,
                                    no_decay_ids=embedding_param_ids(self.model))
        for group in groups:
            group.pop("names", None)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                           **fused)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.lr_scheduler_type, int(cfg.warmup_ratio * total_steps), total_steps))
        self._it = None

    def _next_batch(self):
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None

    def run(self, steps: int) -> dict:
        model, device = self.model, self.device
        model.train()
        sync(device)
        t0 = time.perf_counter()
        shapes = []
        for _ in range(steps):
            batch = self._next_batch()
            ids, mask = batch["input_ids"], batch["attention_mask"]
            shapes.append((ids.shape[0], ids.shape[1], int(mask.sum())))
            ids, mask, labels = (batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels"))
            with torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                logits = model(ids, mask)
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        sync(device)
        return window(time.perf_counter() - t0, shapes)


def reference_equivalence(arm, examples, state_dict) -> float:
    """Max |logit difference| between the ftvs model (dynamic padding, SDPA) and the padded reference (max
    length, masked attention) on a few examples, in eval mode: ~0 shows both compute the same function."""
    from ftvs.arms import PAD_ID

    ref = PaddedReferenceClassifier(arm.model.config)
    ref.load_state_dict(state_dict)
    ref.eval()
    was = arm.model.training
    arm.model.eval()
    try:
        with torch.inference_mode():
            sample = examples[:8]
            ours = arm.model(**arm.collate(sample))
            theirs = ref(**pad_to_length(sample, arm.model.config.max_position, PAD_ID))
    finally:
        arm.model.train(was)
    return float((ours.float() - theirs.float()).abs().max())


# --------------------------------------------------------------------------------------------------
# (b) Baseline: transformers.Trainer on the same model
# --------------------------------------------------------------------------------------------------


def trainer_round(arm, examples, labels, cfg, precision: str, warmup: int, steps: int, device) -> dict:
    """One `transformers.Trainer.train()` of warmup + steps steps (warm-up: the first step, which also
    builds Trainer's optimizer) on arm.net (the same module ftvs trains),
    with Trainer's defaults: DataCollatorWithPadding (dynamic padding), random order, its own optimizer
    (adamw_torch_fused). A callback times the last `steps` steps (step end to step end, data loading
    included) and the collator records each batch's shape."""
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    records = []
    pad = DataCollatorWithPadding(arm.tokenizer)

    def collate(features):
        batch = pad(features)
        ids = batch["input_ids"]
        records.append((ids.shape[0], ids.shape[1], int(batch["attention_mask"].sum())))
        return batch

    marks = {}

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, warmup + steps):
                sync(device)
                marks[state.global_step] = time.perf_counter()

    data = [{"input_ids": list(e), "labels": int(y)} for e, y in zip(examples, labels)]
    with tempfile.TemporaryDirectory(prefix="ftvs-bench-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=cfg.per_device_train_batch_size,
            max_steps=warmup + steps, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm, lr_scheduler_type="constant", warmup_steps=0,
            save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            use_cpu=device.type != "cuda", bf16=precision == "bf16", fp16=precision == "fp16", seed=cfg.seed,
            dataloader_num_workers=0, remove_unused_columns=False, label_names=["labels"])
        trainer = Trainer(model=arm.net, args=args, train_dataset=data, data_collator=collate,
                          callbacks=[StepClock()])
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict to stdout
        out = trainer.train()
    timed = records[warmup: warmup + steps]
    result = window(marks[warmup + steps] - marks[warmup], timed)
    result["trainer_train_samples_per_second"] = out.metrics.get("train_samples_per_second")
    result["optimizer"] = str(getattr(args.optim, "value", args.optim))
    return result


# --------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------


def inference_bench(model, collate, examples, labels, device, latency_n: int, throughput_n: int,
                    batch_size: int, memory: PeakMemory) -> dict:
    """Latency at batch 1 (collate + copy to device + forward + argmax back on the host, texts already
    tokenised) and throughput of `ftvs.inference.timed_predict` over sorted batches of `batch_size`."""
    from ftvs.batching import sorted_batches
    from ftvs.inference import timed_predict

    model.eval()
    memory.reset()
    times = []
    warm = 3
    with torch.inference_mode():
        for i, ex in enumerate(examples[: latency_n + warm]):
            t0 = time.perf_counter()
            batch = {k: v.to(device) for k, v in collate([ex]).items()}
            model(**batch).argmax(-1).cpu()
            if i >= warm:
                times.append(time.perf_counter() - t0)
    latency_mem = memory.read()

    sub, sub_labels = examples[:throughput_n], labels[:throughput_n]
    batches = []
    memory.reset()
    for idx in sorted_batches([len(e) for e in sub], batch_size):  # as ftvs.inference.make_eval_loader
        batch = collate([sub[i] for i in idx])
        batch["labels"] = torch.as_tensor([sub_labels[i] for i in idx], dtype=torch.long)
        batch["index"] = torch.as_tensor(idx, dtype=torch.long)
        batches.append({k: v.to(device) for k, v in batch.items()})
    out = timed_predict(model, batches, len(sub))
    return {
        "latency_batch1_ms": {"p50": 1e3 * percentile(times, 0.5), "p95": 1e3 * percentile(times, 0.95),
                              "mean": 1e3 * statistics.fmean(times) if times else None, "n": len(times)},
        "throughput": {"batch_size": batch_size, "examples": len(sub), "seconds": out["seconds"],
                       "examples_per_second": len(sub) / max(out["seconds"], 1e-12)},
        "peak_memory_latency": latency_mem, "peak_memory_throughput": memory.read(),
        "note": "latency: collate + copy to device + forward + argmax on the host, texts pre-tokenised, "
                "3 warm-up examples; throughput: ftvs.inference.timed_predict on length-sorted batches already "
                "on the device, after 2 warm-up batches",
    }


# --------------------------------------------------------------------------------------------------
# One arm
# --------------------------------------------------------------------------------------------------


def token_ids(arm, texts, encoded=None) -> list:
    """Token id lists of a fine-tuned arm's `texts` (what `encoded` already is, unless the arm encodes into
    cached features): the arm's own tokenisation, as `encode` does it before the feature pass."""
    if encoded is not None and not getattr(arm, "feature_cache", False):
        return encoded
    return arm.token_ids(texts)


def make_train_config(args, kind: str, batch_size: int):
    from ftvs.config import build_config

    values = {"arm": kind, "data": str(args.data), "output_dir": "bench", "seed": args.seed,
              "max_seq_length": args.max_seq_length, "per_device_train_batch_size": batch_size,
              "mixed_precision": args.mixed_precision, "compile": args.compile, "disable_tqdm": True}
    if kind == "scratch":
        values.update(preset=args.preset, tokenizer=args.tokenizer)
    else:
        values.update(model_name_or_path=args.model, method=args.method)
    return build_config({}, values)


def model_shape(arm) -> tuple[int, int]:
    """(layers, attention width) for the attention FLOP term."""
    if arm.kind == "scratch":
        c = arm.model.config
        return c.n_layer, c.n_embd
    c = arm.hf.config.get_text_config()
    heads = getattr(c, "num_attention_heads", None) or c.n_head
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return c.num_hidden_layers, heads * head_dim


def bench_arm(kind: str, args, data: dict, probe: MatmulProbe, log) -> dict:
    from ftvs.arms import build_arm
    from ftvs.train import make_accelerator, resolve_config

    settings = {**DEFAULTS[kind], **(QUICK[kind] if args.quick else {})}
    for key in settings:
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    bs = settings["batch_size"]
    warmup, rounds, per_round = settings["warmup_steps"], settings["rounds"], settings["steps_per_round"]
    cfg = make_train_config(args, kind, bs)
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    memory = PeakMemory(device)

    t0 = time.perf_counter()
    arm = build_arm(cfg, data["train_texts"], data["label_names"])
    cfg = resolve_config(cfg, arm)
    build_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_examples = arm.encode(data["train_texts"])
    encode_seconds = time.perf_counter() - t0
    train_labels = data["train_labels"]
    desc = arm.describe()
    name = f"scratch-{cfg.preset}" if kind == "scratch" else f"{cfg.model_name_or_path} ({cfg.method})"
    log(f"[{kind}] {name}: {desc['params_total']:,} params ({desc['params_trainable']:,} trainable), batch {bs}, "
        f"{len(train_examples):,} train examples, device {device}, precision {accelerator.mixed_precision}")

    total_steps = warmup + rounds * per_round + 10
    initial_state = copy.deepcopy(arm.model.state_dict()) if kind == "scratch" else None
    equivalence = reference_equivalence(arm, train_examples, initial_state) if kind == "scratch" else None
    runner = FtvsStepRunner(arm, cfg, train_examples, train_labels, accelerator, total_steps,
                            spread=args.batch_order == "spread")

    # FLOP model from hooks on one real batch (train mode, gradients on: who needs which gradient)
    sample = runner.sample_batch()
    sample_labels = sample.pop("labels")
    runner.model.train()
    with accelerator.autocast():
        profile = linear_flop_profile(runner.model, sample, grad=True)
    n_layer, d_attn = model_shape(arm)
    trains_below_head = profile["tok_w"] > 0
    flop_model = FlopModel(profile, n_layer, d_attn, attention_backward=trains_below_head,
                           uses_attention="input_ids" in sample)
    B, T = sample["input_ids"].shape if "input_ids" in sample else (len(sample_labels), 1)
    check = None
    if not args.quick:
        with accelerator.autocast():
            counted = counted_flops(runner.model, sample, sample_labels)
        if counted:
            linear_only = FlopModel(profile, n_layer, d_attn, trains_below_head, uses_attention=False)
            check = {"batch_shape": [B, T], "flop_counter_mode": counted,
                     "analytic_linear_part": linear_only.train_step(B, T),
                     "analytic_with_attention": flop_model.train_step(B, T),
                     "six_n_t": 6 * profile["weights_called"] * B * T,
                     "note": "FlopCounterMode counts matmuls (and CUDA SDPA, not CPU fused attention)"}
    del sample

    # warm-up (its memory peak counts: first steps allocate gradients and optimizer state)
    ours, theirs, probes, trainer_examples = [], [], [], None
    warm = [measured(memory, runner.run, warmup)]
    reference = None
    if kind == "scratch" and args.compare:
        reference = ReferenceStepRunner(initial_state, arm.model.config, train_examples, train_labels, cfg,
                                        device, accelerator.mixed_precision, total_steps)
        warm.append(measured(memory, reference.run, max(1, warmup)))

    for r in range(rounds):
        ours.append(measured(memory, runner.run, per_round))
        if kind == "scratch" and reference is not None:
            theirs.append(measured(memory, reference.run, per_round))
        elif kind == "finetune" and args.compare:
            if trainer_examples is None:  # Trainer needs token ids, also where ftvs trains on cached features
                trainer_examples = token_ids(arm, data["train_texts"], train_examples)
            theirs.append(measured(memory, trainer_round, arm, trainer_examples, train_labels, cfg,
                                   accelerator.mixed_precision, 1, per_round, device))
            runner.model.train()
        probes.extend(probe.measure(args.probe_repeats))
        log(f"  round {r + 1}/{rounds}: ftvs {ours[-1]['examples'] / ours[-1]['seconds']:.1f} ex/s"
            + (f", baseline {theirs[-1]['examples'] / theirs[-1]['seconds']:.1f} ex/s" if theirs else "")
            + f", matmul {probes[-1]:.1f} GFLOP/s")
    host_syncs = runner.count_host_syncs(args.sync_check_steps) if device.type == "cuda" else None
    if bool(runner.nonfinite.item()):
        log("  warning: a NaN/Inf loss or gradient occurred during the timed steps")

    peak = statistics.median(probes)
    train = summarise_windows(ours, flop_model, peak, warm[0])
    train.update(nonfinite=bool(runner.nonfinite.item()), fused_adamw=runner.fused_adamw,
                 rounds=rounds, steps_per_round=per_round, warmup_steps=warmup, host_syncs=host_syncs,
                 batch_order=BATCH_ORDER[args.batch_order])

    # inference on the test split
    test_texts, test_labels = data["test_texts"], data["test_labels"]
    n_needed = max(settings["latency_examples"] + 3, settings["throughput_examples"])
    infer_texts, infer_labels = test_texts[:n_needed], test_labels[:n_needed]
    if getattr(arm, "feature_cache", False):  # the trained head alone is not the model: time the whole network
        from ftvs.batching import pad_token_batch

        infer_model = accelerator.prepare_model(arm.wrapper, evaluation_mode=True)
        infer_examples = token_ids(arm, infer_texts)

        def collate(examples):
            return pad_token_batch(examples, arm.pad_id)
    else:
        infer_model, infer_examples, collate = runner.model, arm.encode(infer_texts), arm.collate
    inference = inference_bench(infer_model, collate, infer_examples, infer_labels, device,
                                settings["latency_examples"], settings["throughput_examples"],
                                settings["throughput_batch_size"], memory)

    result = {
        "arm": kind, "model": name, "method": cfg.method if kind == "finetune" else None,
        "params_total": desc["params_total"], "params_trainable": desc["params_trainable"],
        "batch_size": bs, "max_seq_length": cfg.max_seq_length, "learning_rate": cfg.learning_rate,
        "device": str(device), "mixed_precision": accelerator.mixed_precision, "compile": cfg.compile,
        "build_seconds": build_seconds, "encode_seconds": encode_seconds,
        "train": train, "flops": {**flop_model.describe(), "cross_check": check},
        "matmul_probe_interleaved_gflops": summary(probes), "inference": inference,
    }
    if kind == "scratch" and reference is not None:
        ref = summarise_windows(theirs, None, peak, warm[1])
        result["reference"] = {
            "name": "PaddedReferenceClassifier (seed approach): same sizes and parameters, every batch padded "
                    f"to {cfg.max_seq_length}, unfused attention with an explicit causal mask, shuffled batches",
            "logit_max_abs_diff_vs_ftvs": equivalence, "train": ref,
            "ratio": ratio_block(ours, theirs, TARGETS["a_scratch_vs_padded_reference"]),
        }
    if kind == "finetune" and theirs:
        result["trainer"] = {
            "name": "transformers.Trainer defaults (DataCollatorWithPadding, random order, "
                    f"{theirs[0].get('optimizer')}), same model object, data, batch size and learning rate"
                    + ("; ftvs trains the head on cached base features, Trainer runs the frozen base every step"
                       if getattr(arm, "feature_cache", False) else ""),
            "train": summarise_windows(theirs, flop_model, peak),
            "trainer_reported_train_samples_per_second": [w.get("trainer_train_samples_per_second") for w in theirs],
            "ratio": ratio_block(ours, theirs, TARGETS["b_finetune_vs_trainer"]),
        }
    accelerator.free_memory()
    return result


def measured(memory: PeakMemory, fn, *args) -> dict:
    """fn(*args) -> a timing window, with the peak memory of that window added."""
    memory.reset()
    result = fn(*args)
    result["peak_memory"] = memory.read()
    return result


def summarise_windows(windows, flop_model, peak_gflops, warmup=None) -> dict:
    seconds = sum(w["seconds"] for w in windows)
    examples = sum(w["examples"] for w in windows)
    tokens = sum(w["tokens"] for w in windows)
    padded = sum(w["padded_tokens"] for w in windows)
    out = {"steps": sum(w["steps"] for w in windows), "seconds": seconds, "examples": examples,
           "examples_per_second": examples / seconds, "tokens_per_second": tokens / seconds,
           "padded_tokens_per_second": padded / seconds, "padding_fraction": 1 - tokens / max(1, padded),
           "tokens_per_example": tokens / max(1, examples),
           "per_round_examples_per_second": summary([w["examples"] / w["seconds"] for w in windows]),
           "step_seconds_median": statistics.median([w["seconds"] / w["steps"] for w in windows])}
    peaks = [w["peak_memory"] for w in [*windows, *([warmup] if warmup else [])] if "peak_memory" in w]
    if peaks:
        out["peak_memory"] = {"bytes": max(m["bytes"] for m in peaks), "kind": peaks[0]["kind"] + ", max over "
                              "the timed windows and the warm-up; on CPU the RSS includes whatever the process "
                              "already holds (weights, allocator caches): compare CUDA numbers"}
    if flop_model is not None:
        flops = sum(flop_model.train_step(b, t) for w in windows for b, t in w["shapes"])
        useful = flops * tokens / max(1, padded)
        achieved = flops / seconds / 1e9
        out.update(flops=flops, achieved_gflops=achieved, mfu=achieved / peak_gflops,
                   mfu_useful=useful / seconds / 1e9 / peak_gflops, peak_gflops_used=peak_gflops)
    return out


def ratio_block(ours, theirs, target: float) -> dict:
    per_round = [(a["examples"] / a["seconds"]) / (b["examples"] / b["seconds"]) for a, b in zip(ours, theirs)]
    overall = (sum(a["examples"] for a in ours) / sum(a["seconds"] for a in ours)) / \
              (sum(b["examples"] for b in theirs) / sum(b["seconds"] for b in theirs))
    return {"examples_per_second_ratio": overall, "per_round": per_round,
            "per_round_median": statistics.median(per_round), "target": target, "meets_target": overall >= target}


# --------------------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------------------


def load_data(data_dir, max_train: int | None, seed: int) -> dict:
    from ftvs.data import load_metadata, load_split

    meta = load_metadata(data_dir)
    train_texts, train_labels = load_split(data_dir, "train")
    test_texts, test_labels = load_split(data_dir, "test")
    if max_train and len(train_texts) > max_train:
        train_texts, train_labels = train_texts[:max_train], train_labels[:max_train]
    return {"label_names": meta["label_names"], "train_texts": list(train_texts), "train_labels": list(train_labels),
            "test_texts": list(test_texts), "test_labels": list(test_labels), "source": meta.get("source")}


def cmd_bench(args) -> int:
    if not Path(args.data, "metadata.json").is_file():
        raise FtvsError(f"{args.data} is not a prepared data folder (no metadata.json); run `ftvs prepare` first")
    arms = ["scratch", "finetune"] if args.arm == "both" else [args.arm]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    threads = choose_threads(args.threads)
    machine = machine_info()
    machine["threads_choice"] = threads
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    precision = resolve_mixed_precision(args.mixed_precision, cuda)
    dtype = autocast_dtype(precision) or torch.float32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    size = args.probe_size or (8192 if cuda else 2048)
    probe = MatmulProbe(device, dtype, size)
    start_probe = probe.measure(max(3, args.probe_repeats))
    log(f"machine: {machine['cpu_model']}, {machine['cpu_count']} cpus, torch {machine['torch']} "
        f"({threads['threads']} threads, {threads['mode']}), load {machine['loadavg_1min']}, "
        f"{machine.get('gpu', 'no GPU')}; matmul {size}^2 {probe.describe()['dtype']}: "
        f"{statistics.median(start_probe):.1f} GFLOP/s")

    data = load_data(args.data, args.max_train_examples, args.seed)
    results = {}
    for kind in arms:
        results[kind] = bench_arm(kind, args, data, probe, log)

    comparisons = {}
    if "scratch" in results and "reference" in results["scratch"]:
        r = results["scratch"]["reference"]["ratio"]
        comparisons["a_scratch_vs_padded_reference"] = {
            "what": "examples/s of the ftvs scratch training step / the padded reference loop", **r}
    if "finetune" in results:
        ft = results["finetune"]
        if "trainer" in ft:
            comparisons["b_finetune_vs_trainer"] = {
                "what": "examples/s of the ftvs fine-tuning step / transformers.Trainer", **ft["trainer"]["ratio"]}
        comparisons["c_finetune_mfu"] = {
            "what": "analytic FLOP/s of the ftvs fine-tuning step / probed matmul FLOP/s (same dtype, probe "
                    "interleaved with the timed rounds)",
            "mfu": ft["train"]["mfu"], "mfu_useful": ft["train"]["mfu_useful"],
            "target": TARGETS["c_finetune_mfu_cpu"] if not cuda else None,
            "meets_target": ft["train"]["mfu"] >= TARGETS["c_finetune_mfu_cpu"] if not cuda else None}
    machine["loadavg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report = {
        "command": "ftvs " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("ftvs", "__main__.py")
        else " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds_total": time.perf_counter() - started,
        "quick": args.quick, "data": str(args.data), "dataset": data["source"],
        "num_train_examples": len(data["train_texts"]),
        "machine": machine,
        "matmul_probe": {**probe.describe(), "gflops_at_start": summary(start_probe)},
        "results": results, "comparisons": comparisons,
    }
    if args.output:
        from ftvs.fileio import write_json

        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, report)
    print(format_table(report))
    if args.output:
        print(f"\nwritten: {args.output}")
    return 0


def format_table(report: dict) -> str:
    m = report["machine"]
    lines = [f"ftvs bench | {m['cpu_model']} | {m['cpu_count']} cpus | torch {m['torch']} "
             f"({m['threads_choice']['threads']} threads) | {m.get('gpu', 'CPU only')} | "
             f"matmul {report['matmul_probe']['size']}^2 {report['matmul_probe']['dtype']} "
             f"{report['matmul_probe']['gflops_at_start']['median']:.1f} GFLOP/s"]
    for kind, r in report["results"].items():
        t, inf = r["train"], r["inference"]
        lines += ["", f"{kind}: {r['model']} | {r['params_total']:,} params ({r['params_trainable']:,} trainable) | "
                      f"batch {r['batch_size']} | {r['device']} {r['mixed_precision']}",
                  f"  {'metric':<36} {'ftvs':>14} {'baseline':>14}"]
        base = r.get("reference", r.get("trainer"))
        bt = base["train"] if base else {}

        def row(label, key, fmt, src_a=t, src_b=bt, out=lines):
            a = src_a.get(key)
            b = src_b.get(key) if src_b else None
            out.append(f"  {label:<36} {format(a, fmt) if a is not None else '-':>14} "
                         f"{format(b, fmt) if b is not None else '-':>14}")

        row("train examples/s", "examples_per_second", ".1f")
        row("train tokens/s (real)", "tokens_per_second", ".0f")
        row("train tokens/s (padded)", "padded_tokens_per_second", ".0f")
        row("real tokens per example", "tokens_per_example", ".1f")
        row("padding fraction", "padding_fraction", ".2f")
        row("step seconds (median)", "step_seconds_median", ".4f")
        row("achieved GFLOP/s", "achieved_gflops", ".1f")
        row("MFU (padded tokens)", "mfu", ".1%")
        row("MFU (real tokens)", "mfu_useful", ".1%")
        lines.append(f"  {'train peak memory (MiB)':<36} {t['peak_memory']['bytes'] / 2**20:>14.0f} "
                     f"{bt['peak_memory']['bytes'] / 2**20 if bt.get('peak_memory') else float('nan'):>14.0f}")
        lines.append(f"  {'latency batch 1 p50 / p95 (ms)':<36} "
                     f"{inf['latency_batch1_ms']['p50']:>7.2f} / {inf['latency_batch1_ms']['p95']:.2f}")
        lines.append(f"  {'inference ex/s (batch ' + str(inf['throughput']['batch_size']) + ')':<36} "
                     f"{inf['throughput']['examples_per_second']:>14.1f}")
        if base:
            lines.append(f"  baseline: {base['name']}")
        if r.get("reference"):
            lines.append(f"  reference logits max |diff| vs ftvs: {r['reference']['logit_max_abs_diff_vs_ftvs']:.2e}")
    if report["comparisons"]:
        lines += ["", f"{'comparison':<36} {'value':>10} {'target':>8}  per-round"]
        for key, c in report["comparisons"].items():
            if "examples_per_second_ratio" in c:
                rounds = ", ".join(f"{x:.2f}" for x in c["per_round"])
                lines.append(f"{key:<36} {c['examples_per_second_ratio']:>9.2f}x {c['target']:>7.1f}x  [{rounds}]"
                             f"{'' if c['meets_target'] else '  BELOW TARGET'}")
            else:
                target = f"{c['target']:.0%}" if c.get("target") is not None else "-"
                lines.append(f"{key:<36} {c['mfu']:>10.1%} {target:>8}  (real tokens only: {c['mfu_useful']:.1%})"
                             f"{'  BELOW TARGET' if c.get('meets_target') is False else ''}")
    return "\n".join(lines)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="training/inference throughput, latency, memory and MFU, against baseline loops",
        description="Benchmark ftvs on a prepared dataset: training throughput, inference latency (batch 1) and "
                    "throughput, peak memory, a matmul probe and the MFU of the training step; side by side with "
                    "(a) a padded-to-max-length reference loop (scratch) and (b) transformers.Trainer (finetune), "
                    "in one process on the same data, model and batch size. Writes JSON with --output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="prepared data folder (from `ftvs prepare`)")
    p.add_argument("--arm", choices=("scratch", "finetune", "both"), default="scratch", help="what to benchmark")
    p.add_argument("--preset", default="tiny", help="scratch: size preset")
    p.add_argument("--tokenizer", default="smollm2-135m", help="scratch: tokenizer (name/path, or 'bpe')")
    p.add_argument("--model", "--model_name_or_path", dest="model", default="smollm2-135m",
                   help="finetune: pre-trained model")
    p.add_argument("--method", default="lora", choices=("lora", "full", "frozen", "unfreeze"), help="finetune: method")
    p.add_argument("--batch_size", "--batch-size", type=int, default=None,
                   help="training batch size (default: scratch 32, finetune 16)")
    p.add_argument("--max_seq_length", "--max-seq-length", type=int, default=128, help="truncation length")
    p.add_argument("--warmup_steps", "--warmup-steps", type=int, default=None, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (ftvs and baseline alternate)")
    p.add_argument("--steps_per_round", "--steps-per-round", type=int, default=None, help="timed steps per round")
    p.add_argument("--latency_examples", type=int, default=None, help="examples timed one by one")
    p.add_argument("--throughput_examples", type=int, default=None, help="examples for the inference throughput")
    p.add_argument("--throughput_batch_size", type=int, default=None, help="inference batch size")
    p.add_argument("--max_train_examples", type=int, default=None, help="use only the first N training texts")
    p.add_argument("--mixed_precision", default="auto", choices=("auto", "no", "bf16", "fp16"),
                   help="as for training (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the ftvs model")
    p.add_argument("--threads", default="auto", help="CPU threads: a number or auto (probe 1 vs torch's default)")
    p.add_argument("--probe_size", type=int, default=None, help="matmul probe size (default 2048 CPU, 8192 GPU)")
    p.add_argument("--probe_repeats", type=int, default=3, help="probe matmuls after each round")
    p.add_argument("--batch_order", choices=tuple(BATCH_ORDER), default="spread",
                   help="ftvs batches: spread (a representative sample of the epoch's batch sizes in every "
                        "window) or epoch (the sampler's own order: a few steps may be a biased sample)")
    p.add_argument("--sync_check_steps", type=int, default=10,
                   help="CUDA: extra steps run under torch.cuda.set_sync_debug_mode to count host syncs")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="run the baseline side by side")
    p.add_argument("--quick", action="store_true", help="a short run (smoke test): few steps, few examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o", help="write the results as JSON to this file")
    p.set_defaults(func=cmd_bench)


if __name__ == "__main__":
    from ftvs.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
