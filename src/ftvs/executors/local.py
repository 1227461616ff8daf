"""Jobs as child processes of this machine: one at a time, or `--parallel N` at once.

With N > 1 every job gets its own devices: on a GPU machine a slot is a GPU (or N-th of them) and the
job sees only its slots' GPUs (CUDA_VISIBLE_DEVICES); on CPU a slot is cores // N threads
(OMP_NUM_THREADS, which torch follows), so N jobs never oversubscribe the cores. A job with launcher
num_processes k takes k slots. With N = 1 a job runs exactly as it always did: no slot, no change to
its environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ftvs.errors import FtvsError
from ftvs.executors import Job
from ftvs.fmt import now


def _die_with_parent_fn():
    """preexec_fn: on Linux the child gets SIGTERM when its parent dies (even by SIGKILL), so a killed
    study (or Ray worker) never leaves an orphaned training that holds its run lock. The "parent" is
    the thread that started the child: that thread must wait for it (the supervisor's run threads do)."""
    parent = os.getpid()

    def setup():
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(143)

    return setup if sys.platform.startswith("linux") else None


def open_child(cmd: list[str], log: Path, label: str, env: dict | None = None):
    """A child process writing into `log` (appended, after a header line); returns (process, log file)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    log.parent.mkdir(parents=True, exist_ok=True)
    logf = open(log, "ab")  # noqa: SIM115 - closed by whoever waits for the process
    logf.write(f"\n=== {now()} {label}{shlex.join(cmd)}\n".encode())
    logf.flush()
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent_fn(),
        )
    except BaseException:
        logf.close()
        raise
    return proc, logf


@contextlib.contextmanager
def child_process(cmd: list[str], log: Path, label: str, env: dict | None = None):
    """`open_child` for a `with` block: the child is stopped if the block is interrupted."""
    proc, logf = open_child(cmd, log, label, env)
    with logf:
        try:
            yield proc
        except BaseException:
            stop_child(proc)
            raise


def stop_child(proc: subprocess.Popen) -> None:
    """Interrupt a child like Ctrl-C would (it checkpointed at its last epoch), then insist."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


class LocalHandle:
    def __init__(self, proc: subprocess.Popen, logf, release):
        self.proc, self._logf, self._release = proc, logf, release

    def wait(self, timeout: float) -> int | None:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._done()
        return rc

    def stop(self) -> None:
        stop_child(self.proc)
        self._done()

    def _done(self) -> None:
        if self._release is not None:
            self._logf.close()
            self._release()
            self._release = None


def _cpu_count() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class LocalExecutor:
    """Up to `parallel` jobs at once on this machine."""

    name = "local"

    def __init__(self, parallel: int = 1):
        if parallel < 1:
            raise FtvsError(f"--parallel {parallel}: give a number of runs at once, 1 or more")
        self.slots = parallel
        self._free = list(range(parallel))
        self._cond = threading.Condition()
        self._gpus: list[list[str]] | None = None  # per slot, found at the first job (torch costs seconds)

    def _slot_gpus(self) -> list[list[str]]:
        if self._gpus is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible is not None:
                ids = [d for d in visible.split(",") if d.strip()]
            else:
                import torch

                ids = [str(i) for i in range(torch.cuda.device_count())]
            if ids and len(ids) < self.slots:
                raise FtvsError(
                    f"--parallel {self.slots} needs a GPU per run but {len(ids)} are visible; "
                    f"use --parallel {len(ids)}"
                )
            share = len(ids) // self.slots
            self._gpus = [ids[i * share : (i + 1) * share] for i in range(self.slots)] if ids else []
        return self._gpus

    def _env(self, slots: list[int]) -> dict:
        gpus = self._slot_gpus()
        if gpus:
            return {"CUDA_VISIBLE_DEVICES": ",".join(g for s in slots for g in gpus[s])}
        threads = str(
            max(1, _cpu_count() // self.slots)
        )  # per process: a launcher's k processes hold k slots
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def start(self, job: Job) -> LocalHandle:
        if self.slots == 1:  # today's behaviour exactly: the job sees the whole machine
            proc, logf = open_child(job.command(), job.log, job.label, job.env)
            return LocalHandle(proc, logf, lambda: None)
        need = min(max(1, job.processes), self.slots)
        with self._cond:
            self._cond.wait_for(lambda: len(self._free) >= need)
            taken, self._free = self._free[:need], self._free[need:]
        try:
            proc, logf = open_child(job.command(), job.log, job.label, {**self._env(taken), **job.env})
        except BaseException:
            self._give_back(taken)
            raise
        return LocalHandle(proc, logf, lambda: self._give_back(taken))

    def _give_back(self, slots: list[int]) -> None:
        with self._cond:
            self._free = sorted(self._free + slots)
            self._cond.notify_all()

    def close(self) -> None:
        pass


def run_job(job: Job) -> int:
    """Run `job` to its end here (a Ray task's body); the child is stopped if this is interrupted."""
    with child_process(job.command(), job.log, job.label, job.env) as proc:
        return proc.wait()


def last_error(log_path: Path) -> str:
    """The most useful line of a failed subprocess's log: `ftvs: error: ...`, else the last exception line."""
    if not log_path.is_file():
        return "no log"
    with open(log_path, "rb") as f:
        f.seek(max(0, log_path.stat().st_size - 64_000))
        lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in reversed(lines):
        if ln.startswith("ftvs: error:"):
            return ln[len("ftvs: error:") :].strip()
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", ln):
            return ln
    return lines[-1] if lines else "no output"
