"""The machine under the benchmark: what it is, its thread count, peak memory, a matmul probe (the peak that
MFU is measured against) and the timing helpers every timed loop shares."""

import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from ftvs.errors import FtvsError


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
        "loadavg_1min": load_average(),
        "cuda": torch.cuda.is_available(),
    }
    for mod in ("transformers", "peft", "accelerate"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            cuda_version=torch.version.cuda,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
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
        return {
            "threads": 1,
            "mode": f"auto (load average {load:.1f} >= {default} cores)",
            "default": default,
        }
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
    return {
        "threads": best,
        "mode": "auto",
        "default": default,
        "probe_ms": {str(k): round(v * 1e3, 4) for k, v in medians.items()},
    }


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
            return {
                "bytes": torch.cuda.max_memory_allocated(self.device),
                "kind": "cuda max_memory_allocated",
            }
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return {"bytes": int(line.split()[1]) * 1024, "kind": "peak RSS of the phase (VmHWM)"}
        except OSError:
            pass
        scale = 1 if sys.platform == "darwin" else 1024
        return {
            "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            "kind": "peak RSS of the process so far (ru_maxrss)",
        }


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


class MatmulProbe:
    """GFLOP/s of `torch.mm` of two size x size matrices in `dtype`, with the conditions of every
    measurement (torch threads, 1-minute load average): a probe taken while other jobs hold the cores
    measures them, not the machine's peak."""

    def __init__(self, device, dtype, size: int, note: str | None = None):
        self.device, self.dtype, self.size, self.note = device, dtype, size, note
        g = torch.Generator(device="cpu").manual_seed(0)
        self.a = torch.randn(size, size, generator=g).to(device, dtype)
        self.b = torch.randn(size, size, generator=g).to(device, dtype)
        self.out = torch.empty(size, size, device=device, dtype=dtype)
        self.inner = 20 if device.type == "cuda" else 1
        self.history: list[float] = []  # every GFLOP/s measured, start and between rounds
        self.loads: list[float] = []
        torch.mm(self.a, self.b, out=self.out)
        sync(device)

    def measure(self, repeats: int) -> list[float]:
        flops = 2 * self.size**3 * self.inner
        out = []
        load = load_average()
        if load is not None:
            self.loads.append(load)
        for _ in range(repeats):
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(self.inner):
                torch.mm(self.a, self.b, out=self.out)
            sync(self.device)
            out.append(flops / (time.perf_counter() - t0) / 1e9)
        self.history.extend(out)
        return out

    def peak(self) -> float:
        """The median of every measurement so far (GFLOP/s)."""
        return statistics.median(self.history)

    def describe(self) -> dict:
        cores = os.cpu_count() or 1
        worst = max(self.loads) if self.loads else None
        out = {
            "op": "torch.mm",
            "size": self.size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "gflops": summary(self.history),
            "conditions": {
                "torch_threads": torch.get_num_threads(),
                "cores": cores,
                "loadavg_1min_at_probes": summary(self.loads),
            },
        }
        if self.note:
            out["note"] = self.note
        if self.device.type == "cpu" and worst is not None and worst > cores:
            out["warning"] = (
                f"load average up to {worst:.1f} on {cores} cores while probing: other jobs held the "
                "cores, so this is below the machine's peak"
            )
        return out


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


def window(seconds: float, shapes) -> dict:
    """A timed window of `seconds` over batches of (batch size, padded length, real tokens) `shapes`."""
    return {
        "seconds": seconds,
        "steps": len(shapes),
        "examples": sum(b for b, _, _ in shapes),
        "padded_tokens": sum(b * t for b, t, _ in shapes),
        "tokens": sum(r for _, _, r in shapes),
        "shapes": [(b, t) for b, t, _ in shapes],
    }
