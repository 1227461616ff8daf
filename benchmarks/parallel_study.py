"""Wall time of a tiny 4-run study (tests/study_tiny.py: TF-IDF and a one-block from-scratch model, two
seeds) run one at a time and with `--parallel 2`, on CPU:
`python benchmarks/parallel_study.py [--epochs 3] [--workdir DIR]`.

Both are the plain `ftvs study` command, each run a child process: sequential runs see every core,
parallel runs get cores // 2 threads each. It prints both times, their ratio, and whether the two
studies' per-run test predictions are identical.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny study the tests use
from study_tiny import tiny_study_yaml  # noqa: E402


def timed_study(cfg: Path, out: Path, *extra: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, "-m", "ftvs", "study", str(cfg), "--output_dir", str(out), "--quiet", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def predictions(out: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted((out / "runs").glob("*/predictions.json"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the from-scratch runs")
    ap.add_argument("--workdir", help="where the studies go (default: a temporary folder)")
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="parallel_study_"))
    cfg = tiny_study_yaml(root, epochs=args.epochs)
    sequential = timed_study(cfg, root / "sequential")
    parallel = timed_study(cfg, root / "parallel2", "--parallel", "2")
    same = predictions(root / "sequential") == predictions(root / "parallel2")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"4-run tiny study on {cores} cores (load average now {load})")
    print(f"  sequential    {sequential:7.1f} s")
    print(f"  --parallel 2  {parallel:7.1f} s")
    print(f"  speed-up      {sequential / parallel:7.2f}x   identical predictions: {same}")


if __name__ == "__main__":
    main()
