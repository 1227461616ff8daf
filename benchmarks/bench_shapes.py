"""The training step by sequence length and dtype, both dtypes timed in the same process, interleaved:
`python benchmarks/bench_shapes.py --data PREPARED_DATA [--arm scratch|finetune|both] [--lengths 16,64,128]
[--dtypes fp32,bf16] [--compile no|yes|both] [--output shapes.json]`.

For each arm and length T, every timed batch has exactly T tokens a text (the training texts of at least T
tokens, truncated at T: use long texts, e.g. 20 Newsgroups). One `ftvs.train.TrainStep` per dtype
is built as `ftvs train` builds it (bench_step.FtvsStepTimer); the rounds then alternate the dtypes, each
followed by the matmul probe of its dtype, so a loaded machine slows every dtype alike and the per-round
ratios stay comparable. `--compile both` times each dtype's step with its transformer blocks compiled
(ftvs.compiling) and the same step run eagerly (torch.compiler.set_stance), in the same interleaved
rounds. Per cell: median step seconds, the analytic FLOPs of a step (bench_flops) and torch's
FlopCounterMode count of the same step, achieved GFLOP/s, MFU against the dtype's own probe and against
the best probe, and the step's speed-up over the first step timed (fp32, eager where timed), the median
of the per-round ratios.
"""

import argparse
import os
import statistics
import sys
import time

import torch
from bench import DTYPES, flop_model_of, log, make_probes, make_train_config
from bench_machine import choose_threads, load_average, machine_info
from bench_step import FtvsStepTimer

from ftvs.arms import build_arm
from ftvs.data import load_metadata, load_split
from ftvs.errors import FtvsError
from ftvs.launch import make_accelerator
from ftvs.train import resolve_config

BATCH = {"scratch": 32, "finetune": 16}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="prepared data folder with long texts (20 Newsgroups)")
    p.add_argument("--arm", choices=("scratch", "finetune", "both"), default="both")
    p.add_argument("--lengths", default="16,64,128", help="sequence lengths, comma-separated")
    p.add_argument("--dtypes", default="fp32,bf16", help="dtypes, comma-separated; fp32 first is the base")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (each times every dtype once)")
    p.add_argument("--steps", type=int, default=2, help="steps per dtype and round")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tokenizer", default="smollm2-135m")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="lora")
    p.add_argument(
        "--compile",
        choices=("no", "yes", "both"),
        nargs="?",
        const="yes",
        default="no",
        help="time the step with its transformer blocks compiled (ftvs train --compile yes), or both the "
        "eager and the compiled step, interleaved in one process",
    )
    p.add_argument("--probe_size", type=int, default=2048)
    p.add_argument("--max_train_examples", type=int, default=2000, help="texts to pick long ones from")
    p.add_argument("--threads", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o")
    return p.parse_args(argv)


def step_of(kind: str, args, T: int, precision: str, texts, labels, label_names, compiled: bool = False):
    """A timer of the ftvs step of `kind` in `precision` (its blocks compiled or not) over `batch x T`
    batches, and its FLOP check."""
    args = argparse.Namespace(**{**vars(args), "compile": compiled, "max_seq_length": T})
    cfg = make_train_config(args, kind, BATCH[kind], 10_000, precision)
    accelerator = make_accelerator(cfg)  # a fresh Accelerate state per dtype; the prepared model keeps its
    arm = build_arm(cfg, texts, label_names)  # own autocast
    cfg = resolve_config(cfg, arm)
    encoded = arm.encode(texts)
    keep = [i for i, e in enumerate(encoded) if arm.example_length(e) >= T]
    if len(keep) < 2 * BATCH[kind]:
        raise FtvsError(f"only {len(keep)} training texts have {T} tokens; use longer texts")
    examples, kept_labels = [encoded[i] for i in keep], [labels[i] for i in keep]
    timer = FtvsStepTimer(arm, cfg, examples, kept_labels, accelerator, spread=False)
    flop_model, check = flop_model_of(timer, arm, accelerator, cross_check=True)
    return timer, flop_model, check


def cell(timer_windows, flop_model, check, probe, best_peak: float) -> dict:
    """One (arm, length, dtype): its step time and FLOPs over the timed windows (a window's batches all
    have the length; the epoch's last batch may hold fewer texts)."""
    steps = sum(w["steps"] for w in timer_windows)
    seconds = sum(w["seconds"] for w in timer_windows)
    flops = sum(flop_model.train_step(b, t) for w in timer_windows for b, t in w["shapes"])
    achieved = flops / seconds / 1e9
    return {
        "shapes": sorted({tuple(s) for w in timer_windows for s in w["shapes"]}),
        "step_seconds_median": statistics.median(w["seconds"] / w["steps"] for w in timer_windows),
        "step_seconds": [w["seconds"] / w["steps"] for w in timer_windows],
        "tokens_per_second": sum(w["padded_tokens"] for w in timer_windows) / seconds,
        "analytic_gflops_per_step": flops / steps / 1e9,
        # the cross-check: FlopCounterMode and the analytic model on the same (sample) batch
        "flop_check": check,
        "flop_counter_over_analytic": check["flop_counter_mode"] / check["analytic_with_attention"]
        if check
        else None,
        "achieved_gflops": achieved,
        "probe_gflops": probe.peak(),
        "mfu_own_dtype": achieved / probe.peak(),
        "mfu_vs_best_dtype": achieved / best_peak,
    }


def timed(built: dict, variant: tuple, compiles: tuple, steps: int) -> dict:
    """A timing window of `steps` steps of `variant` (dtype, compiled): the dtype's step, run eagerly when
    its blocks are compiled but the variant is the eager one."""
    n, compiled = variant
    with torch.compiler.set_stance("default" if compiled or not compiles[-1] else "force_eager"):
        return built[n][0].run(steps)


def run(args) -> dict:
    torch.manual_seed(args.seed)
    threads = choose_threads(args.threads)
    lengths = [int(t) for t in args.lengths.split(",")]
    names = [d.strip() for d in args.dtypes.split(",")]
    unknown = [n for n in names if n not in DTYPES]
    if unknown:
        raise FtvsError(f"--dtypes: unknown dtype {unknown[0]!r}; use fp32, bf16 or fp16")
    # the timed steps, by name: each dtype eager and/or with its blocks compiled; the first is the base
    compiles = {"no": (False,), "yes": (True,), "both": (False, True)}[args.compile]
    variants = {n + ("+compile" if c else ""): (n, c) for c in compiles for n in names}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probes = make_probes(device, args.probe_size, [DTYPES[n] for n in names])
    for probe in probes.values():
        probe.measure(3)
    texts, labels = load_split(args.data, "train")
    texts, labels = texts[: args.max_train_examples], labels[: args.max_train_examples]
    label_names = load_metadata(args.data)["label_names"]
    arms = ["scratch", "finetune"] if args.arm == "both" else [args.arm]
    table = []
    for kind in arms:
        for T in lengths:
            # one step per dtype; with --compile both, its eager variant runs the compiled blocks eagerly
            # (the same weights and memory, so only the compiling differs)
            built = {
                n: step_of(kind, args, T, DTYPES[n], texts, labels, label_names, compiles[-1]) for n in names
            }
            windows = {v: [] for v in variants}
            loads = []
            for v in variants:
                timed(built, variants[v], compiles, 1)  # warm-up (and, compiled, the compile)
            for _ in range(args.rounds):
                for v, (n, _) in variants.items():
                    windows[v].append(timed(built, variants[v], compiles, args.steps))
                    probes[n].measure(1)
                loads.append(load_average())
            best = max(p.peak() for p in probes.values())
            cells = {
                v: cell(windows[v], built[n][1], built[n][2], probes[n], best)
                for v, (n, _) in variants.items()
            }
            first = next(iter(variants))
            base = [w["seconds"] for w in windows[first]]
            for v, (n, compiled) in variants.items():
                ratios = [b / w["seconds"] for b, w in zip(base, windows[v])]
                cells[v]["speedup_vs_" + first] = statistics.median(ratios)
                cells[v]["speedup_per_round"] = ratios
                row = {"arm": kind, "length": T, "dtype": n, "compiled": compiled, **cells[v]}
                table.append({**row, "loadavg_1min": loads})
                log(row_text(table[-1], first))
            del built
    return {
        "command": "python benchmarks/bench_shapes.py " + " ".join(sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_info(), "threads_choice": threads},
        "probes": {n: p.describe() for n, p in probes.items()},
        "rows": table,
    }


def row_text(r: dict, base: str) -> str:
    ratio = r["flop_counter_over_analytic"]
    name = r["dtype"] + ("+compile" if r.get("compiled") else "")
    return (
        f"{r['arm']:<8} T={r['length']:<4} {name:<13} step {r['step_seconds_median']:7.3f} s "
        f"{r['speedup_vs_' + base]:5.2f}x vs {base} | {r['analytic_gflops_per_step']:8.1f} GFLOP/step "
        f"(FlopCounterMode x{ratio:.3f}) | {r['achieved_gflops']:6.1f} GFLOP/s, MFU {r['mfu_own_dtype']:.0%} "
        f"of the {r['dtype']} probe ({r['probe_gflops']:.0f}), {r['mfu_vs_best_dtype']:.0%} of the best | "
        f"load {max(r['loadavg_1min'] or [float('nan')]):.1f}"
    )


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        report = run(args)
    except FtvsError as e:
        print(f"bench_shapes: error: {e}", file=sys.stderr)
        return 2
    if args.output:
        from ftvs.fileio import write_json

        write_json(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
