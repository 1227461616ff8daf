"""`ftvs serve` as a real process on loopback, and a bounded load generator: shared by tests/test_serve.py and
benchmarks/serve_load.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from tiny_runs import child_env

URL = re.compile(r"serving \d+ models on (http://127\.0\.0\.1:\d+)")


class Server:
    """`python -m ftvs serve ARGS --port 0` (a free port) on 127.0.0.1; `url` once it listens."""

    def __init__(self, *args: str, timeout: float = 180, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftvs", "serve", *args, "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or child_env(),
        )
        self.lines: list[str] = []
        found = threading.Event()

        def read():  # keeps draining the output, so the server never blocks on a full pipe
            for line in self.proc.stdout:
                self.lines.append(line)
                if URL.search(line):
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("ftvs serve did not start:\n" + "".join(self.lines))
        self.url = next(m.group(1) for line in self.lines if (m := URL.search(line)))

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (user + system, all its threads; Linux)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


async def _post(reader, writer, host: str, body: bytes) -> tuple[int, bytes]:
    """One POST /predict on a kept-alive HTTP/1.1 connection: (status, body)."""
    writer.write(
        b"POST /predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (host.encode(), len(body))
        + body
    )
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _load(url: str, texts: list[str], requests: int, clients: int, model: str, deadline: float) -> dict:
    """The load generator: raw HTTP/1.1 on one kept-alive connection per client, so that on a small machine
    the clients take little of the CPU the server is measured on (an httpx client costs more per request
    than the server does)."""
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps({"texts": [t], "model": model, "top_k": 3}).encode() for t in texts]
    latencies, errors, sent = [], [], 0

    async def client():
        nonlocal sent
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while sent < requests and time.monotonic() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                start = time.perf_counter()
                try:
                    status, answer = await _post(reader, writer, f"{host}:{port}", body)
                    if status != 200 or len(json.loads(answer)["results"]) != 1:
                        errors.append(f"{status} {answer[:200]!r}")
                except (OSError, ValueError, KeyError, asyncio.IncompleteReadError) as e:
                    errors.append(repr(e))
                    return  # the connection is gone
                finally:
                    latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "clients": clients,
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": seconds,
        "throughput_rps": len(latencies) / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
    }


def load_test(
    url: str, texts, requests: int = 2000, clients: int = 32, model: str = "all", limit_s: float = 600
):
    """`requests` POST /predict of one text each from `clients` concurrent clients; stops by itself after
    `limit_s` seconds at the latest. Latency percentiles are over the answered requests."""
    return asyncio.run(_load(url, list(texts), requests, clients, model, time.monotonic() + limit_s))
