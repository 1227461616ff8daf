"""Where a study's child commands run: the executor seam between the supervisor and the machines.

A run is one or more jobs (`ftvs train`, `ftvs evaluate`, `ftvs baseline`): a command line, the run
folder it writes, its log, and what it needs (`processes`: the launcher's num_processes, a GPU or a
share of the CPU cores each). An executor places a job and reports its exit code; it never reads or
writes study.json, which stays with the supervisor (the one source of truth for resume, whatever
executes).

    local  the embedded default: one job at a time (today's behaviour), or `--parallel N` jobs at once,
           each pinned to its own GPUs or to its share of the cores
    ray    each job a Ray task on a cluster (`--executor ray`); imported only then (docs/cluster.md)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ftvs.errors import FtvsError, check_count
from ftvs.rundir import HISTORY, has_checkpoint


@dataclass
class Job:
    """One child command of a run."""

    cmd: list[str]
    run_dir: Path
    log: Path
    label: str = ""  # the log's header line starts with it ("train: ")
    processes: int = 1  # launcher num_processes: each takes a device, or a share of the cores
    retry_cmd: list[str] | None = None  # what a retried job runs: continues from run_dir's checkpoint
    env: dict = field(default_factory=dict)  # set by the executor: the job's devices and thread counts

    def command(self) -> list[str]:
        """What to run now. The supervisor wipes a run folder it starts afresh, so a started run found
        there (history or checkpoint) is this job's own earlier try, killed: a retry continues it."""
        started = (self.run_dir / HISTORY).exists() or has_checkpoint(self.run_dir)
        return self.retry_cmd if self.retry_cmd and started else self.cmd


class Handle(Protocol):
    def wait(self, timeout: float) -> int | None:
        """The job's exit code, or None if it is still running after `timeout` seconds."""

    def stop(self) -> None:
        """Interrupt the job like Ctrl-C would (it checkpoints), then insist."""


RAY_TIMEOUT = 60.0  # --ray_timeout default: seconds the driver waits for the Ray cluster's address to answer


class Executor(Protocol):
    name: str  # "local" or "ray"
    slots: int  # how many runs the supervisor keeps in flight

    def start(self, job: Job) -> Handle:
        """Start `job` (blocking while the resources it needs are taken)."""

    def close(self) -> None: ...


def check_parallel(parallel) -> None:
    """--parallel N (study runs, tune trials): a count of 1 or more, when given."""
    if parallel is not None:
        check_count("--parallel", parallel, fix="give a number of runs at once, 1 or more")


def make_executor(
    name: str = "local",
    parallel: int | None = None,
    ray_address: str | None = None,
    study_dir: Path | None = None,
    retries: int = 3,
    ray_timeout: float = RAY_TIMEOUT,
) -> Executor:
    check_parallel(parallel)
    check_count("--ray_retries", retries, minimum=0)
    if not 0 < ray_timeout < float("inf"):
        raise FtvsError(f"--ray_timeout {ray_timeout:g}: give the seconds to wait for the cluster, e.g. 60")
    if name == "local":
        from ftvs.executors.local import LocalExecutor

        return LocalExecutor(parallel or 1)
    if name == "ray":
        from ftvs.executors.ray import RayExecutor

        return RayExecutor(
            study_dir,
            address=ray_address,
            max_in_flight=parallel,
            retries=retries,
            connect_timeout=ray_timeout,
        )
    raise FtvsError(f"unknown executor {name!r}; use --executor local or --executor ray")


def add_executor_flags(parser, what: str) -> None:
    """--parallel, --executor, --ray_address, --ray_retries: the same flags for `ftvs study` (runs) and
    `ftvs tune` (trials)."""
    parser.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help=f"run up to N {what} at once, each on its own GPU, or on CPU on cores/N threads; with "
        f"--executor ray, at most N {what} submitted at once (default: what the cluster holds)",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help=f"where the {what} execute: this machine (default) or a Ray cluster (docs/cluster.md)",
    )
    parser.add_argument(
        "--ray_address",
        "--ray-address",
        dest="ray_address",
        metavar="ADDRESS",
        help="the Ray cluster: auto (the one this node belongs to) or ray://HOST:PORT; default: "
        "$RAY_ADDRESS, else a Ray instance started on this machine",
    )
    parser.add_argument(
        "--ray_timeout",
        "--ray-timeout",
        dest="ray_timeout",
        type=float,
        default=RAY_TIMEOUT,
        metavar="SECONDS",
        help="seconds to wait for the Ray cluster's address to answer before giving up (default %(default)g)",
    )
    parser.add_argument(
        "--ray_retries",
        "--ray-retries",
        dest="ray_retries",
        type=int,
        default=3,
        help=f"times Ray retries one of the {what} whose worker or process died (it resumes from its "
        "checkpoint)",
    )


def check_executor_flags(args) -> None:
    """Refuse flag combinations that cannot mean anything, before any work."""
    if args.ray_address and args.executor != "ray":
        raise FtvsError("--ray_address is for --executor ray; add --executor ray")
    check_parallel(args.parallel)


def executor_from_args(args, folder: Path) -> Executor:
    """The executor the flags of `add_executor_flags` ask for; `folder` is where the jobs write (a Ray
    executor checks every node sees it)."""
    check_executor_flags(args)
    return make_executor(
        args.executor, args.parallel, args.ray_address, folder, args.ray_retries, args.ray_timeout
    )
