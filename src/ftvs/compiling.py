"""`--compile auto|yes|no`: torch.compile the transformer blocks of the training step, by default only where
the run is long enough to pay for it.

What is compiled is each transformer block of the arm (regional compilation: the blocks are instances of
one class, so they share their compiled code: one graph for the first block, whose input needs no gradient,
one for the others), with dynamic shapes, because batches differ in length. Inductor fuses what eager mode
runs as separate passes over the activations (RMSNorm, RoPE, SiLU x up, the dtype casts). On the LoRA step
of SmolLM2-135M (batch 16, 2 cores of an AMX Xeon, the same step timed compiled and eager in turn) the
first compile takes about a minute (13 s from inductor's on-disk cache), and the step then runs 1.59x
(64 tokens a text) and 1.47x (128) faster in bf16, 1.28x and 1.35x in fp32, but 0.96x at 16 tokens, where
there is little to fuse and dynamo's guard checks alone take ~28 ms of a 0.7 s step (benchmarks/RESULTS.md,
"Compiling the blocks"). On a Zen 4 EPYC without AMX, whose eager step already runs its matmuls at ~62% of
the bf16 peak, the gains are about half: 1.07x / 1.13x in bf16, 1.15x / 1.16x in fp32 ("A second CPU").
Compiling the whole model took minutes.

Only training runs compiled: validation between epochs runs the blocks eagerly (no second graph to
compile), and the test-set evaluation reloads the saved model, so the inference times a study reports are
eager ones.

`auto` (the default) compiles on the CPU, for the fine-tuned arm, in a single-process run, where a C++
compiler exists (inductor needs one there). It times the first eager micro-batches, estimates from them
the eager time of every batch the epoch will run (`planned_shapes`: the length-grouped sampler knows them),
and compiles when the saving expected at each batch's padded length (SAVING_BY_LENGTH, by CPU: none at 16
tokens a text, about half as much without AMX) over the rest of the run repays the compile time
(COMPILE_SECONDS) 1.5 times; it then times the compiled micro-batches and goes back to eager unless they
ran at least 5% faster than the same shapes would have eagerly. If compiling fails, the run goes on
eagerly and says why. `yes` compiles from the first step (and fails with a one-line error if it cannot);
`no` never compiles. What happened is recorded as `compile` in train_summary.json and metrics.json.
"""

import contextlib
import os
import shutil
import sys
import time

import numpy as np
import torch

COMPILE_SECONDS = 80.0  # measured: 50-81 s for the first dynamic compile of a SmolLM2 block, 2 cores
# the fraction of the eager LoRA step that compiling saves, by tokens a text and by CPU (the lower of fp32 and
# bf16, measured interleaved in one process: benchmarks/bench_shapes.py --compile both); nothing at 16 tokens.
# With AMX the matmuls are fast, so the passes inductor fuses are a larger share of the step: 1.28x / 1.35x
# at 64 / 128 tokens on an AMX Xeon, 1.07x / 1.13x on a Zen 4 EPYC with AVX-512 BF16 and no AMX, whose
# table also serves the CPUs not measured
SAVING_BY_LENGTH = {
    "amx": ((16, 0.0), (64, 0.2), (128, 0.25)),
    "no amx": ((16, 0.0), (64, 0.06), (128, 0.11)),
}
PAYBACK = 1.5  # compile only when the expected saving is 1.5 times the compile time or more
TIMED_MICRO_BATCHES = 6  # micro-batches timed before each decision (after a warm-up one)
MIN_MEASURED_GAIN = 1.05  # a compiled step less than 5% faster than the eager one goes back to eager


def cpp_compiler() -> str | None:
    """The C++ compiler inductor calls on the CPU ($CXX when torch was imported, else g++), or None when
    there is none."""
    from torch._inductor import config

    try:
        name = config.cpp.cxx[-1]
    except AttributeError:  # a private setting: inductor's default where it is not readable
        name = os.environ.get("CXX") or "g++"
    return shutil.which(name) if name else None


def compile_regions(arm) -> list[torch.nn.Module]:
    """What to compile: the arm's transformer blocks, or its whole model when it has none to name."""
    blocks = arm.blocks()
    return list(blocks) if blocks is not None else [arm.model]


def cpu_kind(cpu_flags=None) -> str:
    """ "amx" or "no amx": which row of SAVING_BY_LENGTH this CPU (or one with these bf16 flags) takes."""
    from ftvs.precision import cpu_native_bf16_flags

    flags = cpu_native_bf16_flags() if cpu_flags is None else cpu_flags
    return "amx" if "amx_bf16" in flags else "no amx"


def expected_saving(tokens_per_text: float, kind: str | None = None) -> float:
    """The fraction of the eager step compiling saves at this padded length on a CPU of `kind` (this one by
    default; SAVING_BY_LENGTH, linear in between, flat outside)."""
    (t0, s0), *rest = SAVING_BY_LENGTH[kind or cpu_kind()]
    if tokens_per_text <= t0:
        return s0
    for t1, s1 in rest:
        if tokens_per_text <= t1:
            return s0 + (s1 - s0) * (tokens_per_text - t0) / (t1 - t0)
        t0, s0 = t1, s1
    return s0


def pays_off(
    eager_seconds_left: float, saving: float, tokens_per_text: float, kind: str | None = None
) -> tuple[bool, str]:
    """`auto`'s rule: compile when the saving expected over the rest of the run (`saving`, a fraction of the
    eager time left, on a CPU of `kind`: this one by default) repays the compile time PAYBACK times."""
    seconds = saving * eager_seconds_left
    needed = PAYBACK * COMPILE_SECONDS
    cpu = "a CPU with AMX" if (kind or cpu_kind()) == "amx" else "a CPU without AMX"
    about = (
        f"~{eager_seconds_left / 60:.1f} min of eager training left at {tokens_per_text:.0f} tokens a "
        f"text, where compiling saves ~{saving:.0%} on {cpu}"
    )
    if seconds >= needed:
        return True, f"{about}: ~{seconds:.0f} s saved for ~{COMPILE_SECONDS:.0f} s of compiling"
    return False, f"{about}: ~{seconds:.0f} s, less than {needed:.0f} s that would repay compiling"


def planned_shapes(sampler) -> list[tuple[int, int]] | None:
    """(texts, padded tokens a text) of each training batch of an epoch, from a length-grouped sampler (None
    for any other: `auto` then plans from the batches it timed)."""
    if not hasattr(sampler, "batches") or not hasattr(sampler, "lengths"):
        return None
    lengths = sampler.lengths
    return [(len(b), int(max(lengths[i] for i in b))) for b in sampler.batches() if b]


class StepCompiler:
    """Runs each training micro-batch, eagerly or through the compiled blocks, and decides (`auto`) or
    starts (`yes`) compiling. `run(fn, batch)` calls `fn(batch)`; `eager()` is a context in which the
    compiled blocks run eagerly (validation).

    `auto` times TIMED_MICRO_BATCHES eager micro-batches, compiles if `pays_off`, then times as many
    compiled ones and goes back to eager unless they ran MIN_MEASURED_GAIN times faster than the eager
    line (`_eager_line`) predicts for their shapes."""

    def __init__(self, setting: str, arm, accelerator, total_micro_batches: int, sampler=None):
        self.setting, self.arm = setting, arm
        self.total_micro_batches = total_micro_batches
        self.sampler = sampler  # the training batches' sampler: `auto` plans from it (`planned_shapes`)
        self.done = 0  # micro-batches run by this process
        self.offset = 0  # micro-batches run before a resume (set by the loop)
        self.timed = {"eager": [], "compiled": []}  # (seconds, texts, padded tokens) per micro-batch
        self.compiled = False
        self.pending = False  # compiled, its first (compiling) micro-batch not run yet
        self.checking = False  # `auto`: compiled, its speed not measured yet
        self.compile_seconds = None
        self.at_micro_batch = None
        self.reason = self._eligible(setting, arm, accelerator)
        if setting == "yes":
            if cpp_compiler() is None and accelerator.device.type == "cpu":
                from ftvs.errors import FtvsError

                raise FtvsError(
                    "--compile yes needs a C++ compiler on the CPU (torch inductor calls $CXX or g++); "
                    "install g++ or use --compile no"
                )
            self._compile("requested")

    @staticmethod
    def _eligible(setting: str, arm, accelerator) -> str | None:
        """None while `auto` may still compile; otherwise why it does not (or 'requested'/'off')."""
        if setting == "no":
            return "--compile no"
        if setting == "yes":
            return None
        if accelerator.device.type != "cpu":
            return (
                f"auto compiles on the CPU only (measured there); pass --compile yes on {accelerator.device}"
            )
        if arm.kind != "finetune":
            return "auto compiles the fine-tuned arm only (the from-scratch step is small)"
        if accelerator.num_processes > 1:
            return "auto does not compile a multi-process run"
        if arm.blocks() is None:
            return "no transformer blocks run in the training step (feature cache)"
        if cpp_compiler() is None:
            return "no C++ compiler for torch inductor ($CXX or g++)"
        return None

    def _compile(self, why: str) -> None:
        # each precision, grad mode and first-block-or-not is a graph of its own; past the limit dynamo would
        # quietly run eagerly (a study trains many runs in one process)
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, 64)
        for region in compile_regions(self.arm):
            region.compile(dynamic=True)
        self.compiled, self.pending, self.reason = True, True, why
        self.checking = self.setting == "auto"
        self.at_micro_batch = self.offset + self.done

    def _uncompile(self, why: str) -> None:
        torch._dynamo.reset()
        for region in compile_regions(self.arm):
            region._compiled_call_impl = None  # what nn.Module.compile set: back to the eager forward
        self.compiled = self.pending = self.checking = False
        self.reason = why
        print(f"ftvs: {why}", file=sys.stderr)

    def eager(self):
        """A context in which compiled blocks run eagerly (nothing to do when none are compiled)."""
        if not self.compiled:
            return contextlib.nullcontext()
        return torch.compiler.set_stance("force_eager")

    def run(self, fn, batch: dict):
        ids = batch.get("input_ids")
        shape = tuple(ids.shape) if ids is not None and ids.ndim == 2 else (len(batch["labels"]), 1)
        start = time.perf_counter()
        out = self._first_compiled(fn, batch) if self.pending else fn(batch)
        seconds = time.perf_counter() - start
        self.done += 1
        if self.pending:  # the compiling micro-batch, less what it would have taken eagerly
            self.pending = False
            self.compile_seconds = seconds - (self._eager_seconds([shape])[0] if self.timed["eager"] else 0.0)
        elif self.setting == "auto" and (self.checking or (self.reason is None and not self.compiled)):
            self._measure(seconds, shape)
        return out

    def _rate(self, kind: str) -> float:
        """Seconds per padded token of the timed micro-batches of `kind` (0 when none)."""
        rows = self.timed[kind]
        return sum(r[0] for r in rows) / max(1, sum(r[1] * r[2] for r in rows))

    def _eager_line(self) -> tuple[float, float]:
        """(intercept, slope) of the eager time of a micro-batch against its padded tokens: a line through
        the timed ones where their sizes differ enough to fit it (short texts cost more per token), else
        their rate through zero."""
        rows = self.timed["eager"]
        x = np.array([b * t for _, b, t in rows], dtype=float)
        y = np.array([r[0] for r in rows])
        if len(rows) > 2 and x.max() > 1.5 * x.min():
            slope, intercept = np.polyfit(x, y, 1)
            if slope > 0 and intercept >= 0:
                return float(intercept), float(slope)
        return 0.0, self._rate("eager")

    def _eager_seconds(self, shapes) -> list[float]:
        """The eager time of each micro-batch of `shapes` ((texts, padded tokens a text) each)."""
        intercept, slope = self._eager_line()
        return [intercept + slope * b * t for b, t in shapes]

    def _measure(self, seconds: float, shape: tuple) -> None:
        kind = "compiled" if self.compiled else "eager"
        if self.done > 1:  # the first micro-batch warms up allocators and kernels
            self.timed[kind].append((seconds, *shape))
        if len(self.timed[kind]) < TIMED_MICRO_BATCHES:
            return
        if kind == "compiled":  # against what the same batches would have taken eagerly
            expected = sum(self._eager_seconds([(b, t) for _, b, t in self.timed["compiled"]]))
            gain = expected / sum(r[0] for r in self.timed["compiled"])
            self.checking = False
            if gain < MIN_MEASURED_GAIN:
                self._uncompile(f"the compiled step ran {gain:.2f}x the eager one here; trained eagerly")
            else:
                self.reason += f"; measured {gain:.2f}x faster"
            return
        shapes = planned_shapes(self.sampler) or [(b, t) for _, b, t in self.timed["eager"]]
        eager = self._eager_seconds(shapes)
        cpu = cpu_kind()
        per_batch = sum(eager) / len(shapes)
        saved = sum(expected_saving(t, cpu) * e for (_, t), e in zip(shapes, eager)) / len(shapes)
        tokens_per_text = sum(b * t for b, t in shapes) / sum(b for b, _ in shapes)
        left = self.total_micro_batches - self.offset - self.done
        go, why = pays_off(per_batch * left, saved / per_batch, tokens_per_text, cpu)
        if go:
            print(f"ftvs: compiling the transformer blocks (torch.compile): {why}", file=sys.stderr)
            self._compile(why)
        else:
            self.reason = why

    def _first_compiled(self, fn, batch: dict):
        kept = dict(batch)  # the step pops the labels and index out of the batch it is given
        try:
            return fn(batch)
        except Exception as e:  # noqa: BLE001 - any inductor/compiler failure: train on eagerly
            if self.setting == "yes":
                from ftvs.errors import FtvsError

                raise FtvsError(
                    f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                    "use --compile no"
                ) from e
            self._uncompile(f"compiling failed ({type(e).__name__}); trained eagerly")
            return fn(kept)

    def record(self) -> dict:
        eager, compiled = self._rate("eager"), self._rate("compiled")
        return {
            "setting": self.setting,
            "compiled": self.compiled,
            "reason": self.reason or "auto: still timing the eager step",
            "at_micro_batch": self.at_micro_batch,
            "compile_seconds": self.compile_seconds,
            "eager_ms_per_1k_tokens": eager * 1e6 if eager else None,
            "compiled_ms_per_1k_tokens": compiled * 1e6 if compiled else None,
        }
