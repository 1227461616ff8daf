"""Jobs as Ray tasks on a cluster: `ftvs study ... --executor ray [--ray_address auto|ray://HOST:PORT]`.

Each job is a Ray task asking for what the job needs (a CPU per process, and a GPU per process when
the cluster has GPUs). The task runs the job's command as a child process on its worker, writing into
the study folder, which must be on a filesystem that every node mounts at the same path: the driver
checks that before it submits anything. A task whose worker dies, or whose child is killed, is
retried by Ray (`max_retries`); the retry finds the run started and continues it from its last
checkpoint. Setting up a cluster: docs/cluster.md.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from ftvs.errors import FtvsError
from ftvs.executors import RAY_TIMEOUT, Job
from ftvs.executors.local import run_job

try:
    import ray
except ImportError:  # this module is imported only for --executor ray
    raise FtvsError(
        "--executor ray needs Ray on this machine and every node: pip install 'ftvs[ray]'"
    ) from None

MARKER = ".ftvs-ray-check"
PROBE_SECONDS = 300  # a node may first have to start a worker process (slow on a busy machine)
STOP_SECONDS = (
    45  # a cancelled task interrupts its child like Ctrl-C (stop_child: up to 40 s), then it is killed
)


class ChildKilled(Exception):
    """The job's process died from a signal (killed, or out of memory): Ray retries the task."""


def _on_worker(job: Job, driver_python: str) -> int:
    """The task body: the driver's interpreter is this node's own (same environment, docs/cluster.md)."""

    def here(cmd):
        return [sys.executable if c == driver_python else c for c in cmd] if cmd else cmd

    job = dataclasses.replace(job, cmd=here(job.cmd), retry_cmd=here(job.retry_cmd))
    rc = run_job(job)
    if rc < 0:
        raise ChildKilled(f"{job.label}process killed by signal {-rc} on {socket.gethostname()}")
    return rc


def _read_marker(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _cluster_endpoint(address: str | None) -> tuple[str, str] | None:
    """(host, port) that `ray.init(address)` will connect to; None when it starts a Ray instance here."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address == "local":
        return None
    if address.startswith("ray://"):  # Ray Client: the client server's host and port
        parts = urlsplit(address)
        return parts.hostname or "", str(parts.port or "")
    from ray._private.services import canonicalize_bootstrap_address

    try:
        bootstrap = canonicalize_bootstrap_address(address)  # "auto": this node's cluster, if any
    except ConnectionError:
        return None  # ray.init says there is none, at once
    if not bootstrap:
        return None
    host, _, port = bootstrap.rpartition(":")
    return host, port


def connect(address: str | None, timeout: float = RAY_TIMEOUT) -> None:
    """`ray.init(address)`, failing in one line when the cluster's address does not answer within
    `timeout` seconds (Ray itself retries with warnings for as long as it is left running)."""
    endpoint = _cluster_endpoint(address)
    if endpoint is not None:
        _wait_for_port(*endpoint, address or os.environ.get("RAY_ADDRESS", ""), timeout)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise FtvsError(
            f"cannot reach the Ray cluster at {address or 'the default address'} ({e}); "
            "start it with `ray start --head` (docs/cluster.md) or fix --ray_address"
        ) from None


def _wait_for_port(host: str, port: str, address: str, timeout: float) -> None:
    """A TCP connection to host:port, retried until `timeout` (the head may still be starting)."""
    fix = "start it with `ray start --head` (docs/cluster.md), fix --ray_address, or raise --ray_timeout"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(5.0, timeout))):
                return
        except (ValueError, OverflowError, socket.gaierror) as e:  # no such host or port: no retry
            raise FtvsError(f"cannot reach the Ray cluster at {address} ({e}); {fix}") from None
        except OSError as e:
            if time.monotonic() >= deadline:
                raise FtvsError(
                    f"the Ray cluster at {address} did not answer within {timeout:g} s ({e}); {fix}"
                ) from None
            time.sleep(1.0)


class RayHandle:
    def __init__(self, ref, job: Job):
        self.ref, self.job = ref, job

    def wait(self, timeout: float) -> int | None:
        ready, _ = ray.wait([self.ref], timeout=timeout)
        if not ready:
            return None
        try:
            return ray.get(self.ref)
        except Exception as e:  # retries used up, or a task Ray could not run: say why in the run's log
            reason = " ".join(str(getattr(e, "cause", None) or e).split())[:300]
            with open(self.job.log, "a", encoding="utf-8") as f:
                f.write(f"\nftvs: error: the Ray task failed: {reason}\n")
            return 1

    def stop(self) -> None:
        ray.cancel(self.ref)  # KeyboardInterrupt in the task: it stops its child, which checkpoints
        ready, _ = ray.wait([self.ref], timeout=STOP_SECONDS)
        if not ready:
            ray.cancel(self.ref, force=True)


class RayExecutor:
    """Jobs as Ray tasks; `max_in_flight` caps the runs submitted at once (default: what the cluster
    holds)."""

    name = "ray"

    def __init__(
        self,
        study_dir: Path,
        address: str | None = None,
        max_in_flight: int | None = None,
        retries: int = 3,
        connect_timeout: float = RAY_TIMEOUT,
    ):
        self.study_dir = Path(study_dir).resolve()
        self.retries = retries
        self._owns = not ray.is_initialized()
        if self._owns:
            connect(address, connect_timeout)
        res = ray.cluster_resources()
        self.gpus = res.get("GPU", 0) > 0
        self.slots = max_in_flight or max(1, int(res.get("GPU" if self.gpus else "CPU", 1)))
        self._task = ray.remote(_on_worker)
        self.check_shared_folder()

    def check_shared_folder(self) -> None:
        """Every alive node must see the study folder; refuse before a single job is submitted."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.study_dir.mkdir(parents=True, exist_ok=True)
        marker = self.study_dir / MARKER
        token = secrets.token_hex(8)
        marker.write_text(token)
        try:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            probe = ray.remote(_read_marker)
            refs = [
                probe.options(
                    num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                ).remote(str(marker))
                for n in nodes
            ]
            try:
                seen = ray.get(refs, timeout=PROBE_SECONDS)
            except ray.exceptions.GetTimeoutError:
                raise FtvsError(
                    f"the Ray nodes did not answer the shared-folder check within {PROBE_SECONDS} s; see "
                    "`ray status` (are the nodes alive and not overloaded?) and docs/cluster.md"
                ) from None
        finally:
            marker.unlink(missing_ok=True)
        blind = [n.get("NodeManagerAddress", n["NodeID"]) for n, s in zip(nodes, seen) if s != token]
        if blind:
            raise FtvsError(
                f"Ray node(s) {', '.join(blind)} cannot see the study folder {self.study_dir}; put it on "
                "a filesystem every node mounts at the same path (docs/cluster.md)"
            )

    def start(self, job: Job) -> RayHandle:
        n = max(1, job.processes)
        # one thread per process, like Ray's own default for a task with num_cpus=1 (no oversubscription)
        job = dataclasses.replace(job, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **job.env})
        opts = {
            "num_cpus": n,
            "num_gpus": n if self.gpus else 0,
            "max_retries": self.retries,
            "retry_exceptions": [ChildKilled],
        }
        return RayHandle(self._task.options(**opts).remote(job, sys.executable), job)

    def close(self) -> None:
        if self._owns and ray.is_initialized():
            ray.shutdown()
