"""`ftvs serve` as a real process on loopback, and a bounded load generator: shared by tests/test_serve.py and
benchmarks/serve_load.py."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time

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


async def _load(url: str, texts: list[str], requests: int, clients: int, model: str, deadline: float) -> dict:
    import httpx

    latencies, errors, sent = [], [], 0

    async def client(http):
        nonlocal sent
        while sent < requests and time.monotonic() < deadline:
            text = texts[sent % len(texts)]
            sent += 1
            start = time.perf_counter()
            try:
                r = await http.post("/predict", json={"texts": [text], "model": model, "top_k": 3})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(repr(e))
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
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
    """`requests` POST /predict of one text each from `clients` concurrent clients on one connection each;
    stops by itself after `limit_s` seconds at the latest. Latency percentiles are over requests."""
    return asyncio.run(_load(url, list(texts), requests, clients, model, time.monotonic() + limit_s))
