"""Load test of `ftvs serve` on loopback: micro-batching against one text at a time, same runs, same load.

    python benchmarks/serve_load.py --study STUDY_DIR --model scratch-tiny --output results_serve.json

For each round it starts `ftvs serve` (one torch thread, 127.0.0.1, a free port) with `--max_batch` (default
64) and then with `--max_batch 1`, sends `--requests` POST /predict of one text each (the first run's test
texts of at most 10,000 bytes, cycled) from `--clients` concurrent clients, and stops each server with
SIGTERM. Every phase stops by itself after `--limit_s` seconds. Reports errors, p50/p95 latency per request
and throughput, and the ratio of the two throughputs; the load average is recorded: on a shared machine it
moves the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the server process and load generator the tests use
from serving import Server, load_test  # noqa: E402

from ftvs.data import load_split  # noqa: E402
from ftvs.rundir import read_config  # noqa: E402
from ftvs.serve import MAX_TEXT_BYTES  # noqa: E402
from ftvs.serve.models import named_runs  # noqa: E402


def phase(served: list[str], max_batch: int, args, texts) -> dict:
    with Server(*served, "--max_batch", str(max_batch), "--max_wait_ms", str(args.max_wait_ms)) as server:
        load_before, cpu_before = os.getloadavg()[0], server.cpu_seconds()
        result = load_test(server.url, texts, args.requests, args.clients, args.model, args.limit_s)
        result.update(
            max_batch=max_batch,
            # CPU the server spent per request: what the load average does not move much
            server_cpu_ms_per_request=1000 * (server.cpu_seconds() - cpu_before) / max(1, result["requests"]),
            load_avg_before=load_before,
            load_avg_after=os.getloadavg()[0],
        )
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run folders to serve")
    p.add_argument("--study", help="serve a study's contenders instead")
    p.add_argument("--model", default="all", help='the model each request asks (default "all")')
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max_batch", type=int, default=64)
    p.add_argument("--max_wait_ms", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=1, help="batched then one-at-a-time, this many times")
    p.add_argument("--limit_s", type=float, default=600, help="each phase stops by itself after this")
    p.add_argument("--output", help="write the results as JSON")
    args = p.parse_args()
    served = [*args.runs, *(["--study", args.study] if args.study else [])]
    first = next(iter(named_runs(args.runs, args.study).values()))
    # the test texts within the server's default limit (a longer one is refused with a 413, by design)
    texts = [
        t for t in load_split(read_config(first)["data"], "test")[0] if len(t.encode()) <= MAX_TEXT_BYTES
    ]
    rounds = []
    for r in range(args.rounds):
        batched = phase(served, args.max_batch, args, texts)
        single = phase(served, 1, args, texts)
        ratio = batched["throughput_rps"] / single["throughput_rps"]
        cpu_ratio = single["server_cpu_ms_per_request"] / batched["server_cpu_ms_per_request"]
        rounds.append(
            {"batched": batched, "one_at_a_time": single, "throughput_ratio": ratio, "cpu_ratio": cpu_ratio}
        )
        for name, res in (("batched", batched), ("one at a time", single)):
            print(
                f"round {r + 1} {name:>13} (--max_batch {res['max_batch']}): {res['requests']} requests, "
                f"{res['errors']} errors, {res['throughput_rps']:.1f} req/s, p50 {res['p50_ms']:.1f} ms, "
                f"p95 {res['p95_ms']:.1f} ms, server CPU {res['server_cpu_ms_per_request']:.2f} ms/request, "
                f"load {res['load_avg_before']:.1f}->{res['load_avg_after']:.1f}"
            )
        print(
            f"round {r + 1}: micro-batching gives {ratio:.2f}x the throughput of one text at a time "
            f"({cpu_ratio:.2f}x less server CPU per request)"
        )
    doc = {
        "served": served,
        "model": args.model,
        "requests": args.requests,
        "clients": args.clients,
        "max_wait_ms": args.max_wait_ms,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "torch_threads": 1,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rounds": rounds,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(x[k]["errors"] == 0 for x in rounds for k in ("batched", "one_at_a_time")) else 1


if __name__ == "__main__":
    sys.exit(main())
