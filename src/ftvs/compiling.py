"""`--compile auto|yes|no`: torch.compile the transformer blocks of the training step, by default only where
the run is long enough to pay for it.

What is compiled is each transformer block of the arm (regional compilation: the blocks are instances of one
class, so they share one compiled graph), with dynamic shapes, because batches differ in length. Inductor
fuses what eager mode runs as separate passes over the activations (RMSNorm, RoPE, SiLU x up, the dtype
casts). On the LoRA step of SmolLM2-135M (batch 16, 2 idle cores of an AMX Xeon) the compile takes about a
minute and the step then runs 1.29x (16 tokens) to 1.69x (128 tokens) faster in bf16, 1.25x in fp32
(benchmarks/RESULTS.md, "Compiling the blocks"). Compiling the whole model took minutes and gained less.

Only training runs compiled: validation between epochs runs the blocks eagerly (no second graph to
compile), and the test-set evaluation reloads the saved model, so the inference times a study reports are
eager ones.

`auto` (the default) compiles on the CPU, for the fine-tuned arm, in a single-process run, where a C++
compiler exists (inductor needs one there): it times the first eager micro-batches and compiles when the
rest of the run would take more than PAYBACK_SECONDS eagerly, that is when even the smallest measured
saving (MIN_SAVING) repays the compile time (COMPILE_SECONDS) 1.5 times. If compiling fails, the run goes on
eagerly and says why. `yes` compiles from the first step (and fails with a one-line error if it cannot);
`no` never compiles. What happened is recorded as `compile` in train_summary.json and metrics.json.
"""

import contextlib
import shutil
import statistics
import sys
import time

import torch

COMPILE_SECONDS = 80.0  # measured: 50-81 s for the first dynamic compile of a SmolLM2 block, 2 cores
# measured saving of the compiled LoRA step: bf16 23% (16 tokens) to 40% (128), fp32 20% to 21%
MIN_SAVING = 0.2
PAYBACK = 1.5  # compile only when the expected saving is 1.5 times the compile time or more
PAYBACK_SECONDS = PAYBACK * COMPILE_SECONDS / MIN_SAVING  # 600 s of eager training left
TIMED_MICRO_BATCHES = 6  # eager micro-batches timed before `auto` decides (after the first, a warm-up)


def cpp_compiler() -> str | None:
    """The C++ compiler inductor calls on the CPU ($CXX when torch was imported, else g++), or None when
    there is none."""
    from torch._inductor import config

    return shutil.which(config.cpp.cxx[-1])


def compile_regions(arm) -> list[torch.nn.Module]:
    """What to compile: the arm's transformer blocks, or its whole model when it has none to name."""
    blocks = arm.blocks()
    return list(blocks) if blocks is not None else [arm.model]


def pays_off(eager_seconds_left: float) -> tuple[bool, str]:
    """`auto`'s rule: compile when the rest of the run would take more than PAYBACK_SECONDS eagerly."""
    minutes = eager_seconds_left / 60
    if eager_seconds_left > PAYBACK_SECONDS:
        return True, (
            f"the rest of the run would take ~{minutes:.0f} min eagerly; compiling (1-2 min) saves "
            f">= {MIN_SAVING:.0%} of it"
        )
    return False, (
        f"the rest of the run would take ~{minutes:.1f} min eagerly, less than the "
        f"{PAYBACK_SECONDS / 60:.0f} min that repay compiling"
    )


class StepCompiler:
    """Runs each training micro-batch, eagerly or through the compiled blocks, and decides (`auto`) or
    starts (`yes`) compiling. `run(fn, batch)` calls `fn(batch)`; `eager()` is a context in which the
    compiled blocks run eagerly (validation)."""

    def __init__(self, setting: str, arm, accelerator, total_micro_batches: int):
        self.setting, self.arm = setting, arm
        self.total_micro_batches = total_micro_batches
        self.done = 0  # micro-batches run by this process
        self.offset = 0  # micro-batches run before a resume (set by the loop)
        self.times: list[float] = []
        self.compiled = False
        self.pending = False  # compiled, its first (compiling) micro-batch not run yet
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
        self.at_micro_batch = self.offset + self.done

    def _uncompile(self) -> None:
        torch._dynamo.reset()
        for region in compile_regions(self.arm):
            region._compiled_call_impl = None  # what nn.Module.compile set: back to the eager forward

    def eager(self):
        """A context in which compiled blocks run eagerly (nothing to do when none are compiled)."""
        if not self.compiled:
            return contextlib.nullcontext()
        return torch.compiler.set_stance("force_eager")

    def run(self, fn, batch: dict):
        start = time.perf_counter()
        if self.pending:
            out = self._first_compiled(fn, batch)
        else:
            out = fn(batch)
        seconds = time.perf_counter() - start
        self.done += 1
        if self.pending:
            self.pending = False
            self.compile_seconds = seconds - (statistics.median(self.times) if self.times else 0.0)
        elif self.setting == "auto" and not self.compiled and self.reason is None:
            self._time_eager(seconds)
        return out

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
            self._uncompile()
            self.compiled, self.pending = False, False
            self.reason = f"compiling failed ({type(e).__name__}); trained eagerly"
            print(
                f"ftvs: torch.compile failed ({type(e).__name__}); training goes on eagerly", file=sys.stderr
            )
            return fn(kept)

    def _time_eager(self, seconds: float) -> None:
        if self.done > 1:  # the first micro-batch warms up allocators and kernels
            self.times.append(seconds)
        if len(self.times) < TIMED_MICRO_BATCHES:
            return
        left = self.total_micro_batches - self.offset - self.done
        go, why = pays_off(statistics.mean(self.times) * left)
        if go:
            print(f"ftvs: compiling the transformer blocks (torch.compile): {why}", file=sys.stderr)
            self._compile(why)
        else:
            self.reason = why

    def record(self) -> dict:
        return {
            "setting": self.setting,
            "compiled": self.compiled,
            "reason": self.reason or "auto: still timing the eager step",
            "at_micro_batch": self.at_micro_batch,
            "compile_seconds": self.compile_seconds,
            "eager_seconds_per_micro_batch": statistics.mean(self.times) if self.times else None,
        }
