"""How fast ftvs trains and predicts, measured against the obvious alternatives:
`python benchmarks/bench.py --data PREPARED_DATA [--arm scratch|finetune|both] [--output results.json]`.

For one prepared dataset and one model (`--arm scratch --preset tiny`, `--arm finetune --model smollm2-135m
--method lora`, or `--arm both`) it measures, in one process:

- training throughput of the ftvs training step (examples/s, real and padded tokens/s, after warm-up): the
  step `ftvs.train.build_train_step` builds for `ftvs train`, not a copy of it (bench_step.py);
- inference latency at batch 1 (p50/p95) and throughput at a large batch;
- peak memory per phase (CUDA `max_memory_allocated`; on CPU the peak RSS, `VmHWM`, reset per phase);
- matmul probes of the machine (GFLOP/s of a square `torch.mm` in fp32 and in bf16, with the thread count and
  the load average at probe time) and the model FLOPs utilisation (MFU) of the training step against the
  peak of the dtype it runs in and against the machine's best dtype (bench_machine.py, bench_flops.py);
- the training step and inference in each dtype of `--dtypes` side by side (default: fp32 and bf16 where
  bf16 is native, fp32 alone on a CPU that only emulates bf16);

and runs side by side, on the same data, model and batch size:

- (a) scratch: the ftvs step vs `PaddedReferenceClassifier` trained the way the seed repository did it
  (every batch padded to max length, hand-written attention with an explicit causal mask, shuffled batches;
  bench_reference.py);
- (b) finetune: the ftvs step vs `transformers.Trainer` with its defaults (dynamic padding, random order;
  bench_trainer.py);
- (c) finetune: the MFU of the fine-tuning step.

Shared machines are noisy: the two sides of a comparison alternate in rounds (each round times a few
steps of each), so slow phases of the machine hit both; per-round ratios and their median are reported,
and the matmul probe is re-run between rounds so MFU is measured against the machine as it was.
Timings cover whole steps, data loading included, synchronising the device only at window boundaries.
"""

import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_cli import BATCH_ORDER, build_parser
from bench_flops import FlopModel, counted_flops, linear_flop_profile, model_shape
from bench_inference import inference_bench
from bench_machine import MatmulProbe, PeakMemory, choose_threads, machine_info, summary
from bench_reference import ReferenceStepRunner, reference_equivalence
from bench_report import (
    TARGETS,
    best_dtype,
    comparisons_of,
    format_table,
    ratio_block,
    summarise_windows,
    with_dtypes_side_by_side,
)
from bench_step import FtvsStepTimer
from bench_trainer import trainer_round

from ftvs.errors import FtvsError
from ftvs.precision import autocast_dtype, cpu_has_native_bf16, resolve_precision

# per arm: (batch size, warm-up steps, rounds, steps per round, latency examples, throughput examples)
DEFAULTS = {
    "scratch": dict(
        batch_size=32,
        warmup_steps=5,
        rounds=5,
        steps_per_round=10,
        latency_examples=200,
        throughput_examples=2048,
        throughput_batch_size=256,
    ),
    "finetune": dict(
        batch_size=16,
        warmup_steps=2,
        rounds=3,
        steps_per_round=3,
        latency_examples=30,
        throughput_examples=256,
        throughput_batch_size=64,
    ),
}
QUICK = {
    "scratch": dict(
        warmup_steps=2, rounds=2, steps_per_round=3, latency_examples=20, throughput_examples=256
    ),
    "finetune": dict(warmup_steps=1, rounds=1, steps_per_round=2, latency_examples=5, throughput_examples=32),
}


# --------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# One arm
# --------------------------------------------------------------------------------------------------


def token_ids(arm, texts, encoded=None) -> list:
    """Token id lists of a fine-tuned arm's `texts` (what `encoded` already is, unless the arm encodes into
    cached features): the arm's own tokenisation, as `encode` does it before the feature pass."""
    if encoded is not None and not getattr(arm, "feature_cache", False):
        return encoded
    return arm.token_ids(texts)


def make_train_config(args, kind: str, batch_size: int, total_steps: int, precision: str):
    """The training config of the benchmarked step; its LR schedule spans the benchmark's steps."""
    from ftvs.config import build_config

    values = {
        "arm": kind,
        "data": str(args.data),
        "output_dir": "bench",
        "seed": args.seed,
        "max_seq_length": args.max_seq_length,
        "per_device_train_batch_size": batch_size,
        "mixed_precision": precision,
        "compile": "yes" if args.compile else "no",  # a benchmark times one kind of step, never `auto`
        "disable_tqdm": True,
        "max_train_steps": total_steps,
    }
    if kind == "scratch":
        values.update(preset=args.preset, tokenizer=args.tokenizer)
    else:
        values.update(model_name_or_path=args.model, method=args.method)
    return build_config({}, values)


def arm_settings(kind: str, args) -> dict:
    settings = {**DEFAULTS[kind], **(QUICK[kind] if args.quick else {})}
    for key in settings:
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    return settings


def flop_model_of(timer, arm, accelerator, cross_check: bool) -> tuple:
    """The FLOP model from hooks on one real batch (train mode, gradients on: who needs which gradient),
    and, unless `cross_check` is off, torch's FlopCounterMode count of the same batch next to it."""
    sample = timer.sample_batch()
    sample_labels = sample.pop("labels")
    # counted eagerly: under torch.compile the hooks and FlopCounterMode would see no modules or ops
    with torch.compiler.set_stance("force_eager"):
        return _flop_model_of(timer, arm, accelerator, cross_check, sample, sample_labels)


def _flop_model_of(timer, arm, accelerator, cross_check, sample, sample_labels) -> tuple:
    model = timer.model
    model.train()
    with accelerator.autocast():
        profile = linear_flop_profile(model, sample, grad=True)
    n_layer, d_attn = model_shape(arm)
    trains_below_head = profile["tok_w"] > 0
    flop_model = FlopModel(
        profile, n_layer, d_attn, attention_backward=trains_below_head, uses_attention="input_ids" in sample
    )
    B, T = sample["input_ids"].shape if "input_ids" in sample else (len(sample_labels), 1)
    if not cross_check:
        return flop_model, None
    with accelerator.autocast():
        counted = counted_flops(model, sample, sample_labels)
    if not counted:
        return flop_model, None
    linear_only = FlopModel(profile, n_layer, d_attn, trains_below_head, uses_attention=False)
    return flop_model, {
        "batch_shape": [B, T],
        "flop_counter_mode": counted,
        "analytic_linear_part": linear_only.train_step(B, T),
        "analytic_with_attention": flop_model.train_step(B, T),
        "six_n_t": 6 * profile["weights_called"] * B * T,
        "note": "FlopCounterMode counts matmuls (and CUDA SDPA, not CPU fused attention)",
    }


def timed_rounds(kind, args, settings, timer, baseline_step, probe, memory, log) -> dict:
    """Warm-up, then rounds that alternate the ftvs step and the baseline (`baseline_step(steps)` -> a timing
    window, or None), with the matmul probe after each round."""
    warmup, rounds, per_round = settings["warmup_steps"], settings["rounds"], settings["steps_per_round"]
    # the warm-up's memory peak counts: the first steps allocate gradients and optimizer state
    warm = [measured(memory, timer.run, warmup)]
    if kind == "scratch" and baseline_step is not None:
        warm.append(measured(memory, baseline_step, max(1, warmup)))
    ours, theirs, probes = [], [], []
    for r in range(rounds):
        ours.append(measured(memory, timer.run, per_round))
        if baseline_step is not None:
            theirs.append(measured(memory, baseline_step, per_round))
            timer.model.train()
        probes.extend(probe.measure(args.probe_repeats))
        log(
            f"  round {r + 1}/{rounds}: ftvs {ours[-1]['examples'] / ours[-1]['seconds']:.1f} ex/s"
            + (f", baseline {theirs[-1]['examples'] / theirs[-1]['seconds']:.1f} ex/s" if theirs else "")
            + f", matmul {probes[-1]:.1f} GFLOP/s"
        )
    return {"warm": warm, "ours": ours, "theirs": theirs, "probes": probes}


def arm_inference(arm, timer, accelerator, data, settings, memory) -> dict:
    """Inference on the test split, of the whole network (with a feature cache the trained head alone is not
    the model)."""
    n_needed = max(settings["latency_examples"] + 3, settings["throughput_examples"])
    infer_texts, infer_labels = data["test_texts"][:n_needed], data["test_labels"][:n_needed]
    if getattr(arm, "feature_cache", False):
        from ftvs.batching import pad_token_batch

        infer_model = accelerator.prepare_model(arm.wrapper, evaluation_mode=True)
        infer_examples = token_ids(arm, infer_texts)

        def collate(examples):
            return pad_token_batch(examples, arm.pad_id)
    else:
        infer_model, infer_examples, collate = timer.model, arm.encode(infer_texts), arm.collate
    with timer.step.compiler.eager():  # ftvs scores the saved model eagerly (ftvs.compiling)
        return _inference(infer_model, collate, infer_examples, infer_labels, accelerator, settings, memory)


def _inference(infer_model, collate, infer_examples, infer_labels, accelerator, settings, memory) -> dict:
    return inference_bench(
        infer_model,
        collate,
        infer_examples,
        infer_labels,
        accelerator.device,
        settings["latency_examples"],
        settings["throughput_examples"],
        settings["throughput_batch_size"],
        memory,
    )


def baseline_step_of(kind, arm, cfg, data, train_examples, initial_state, accelerator):
    """`steps -> timing window` of the baseline: the padded reference (scratch) or Trainer (finetune)."""
    device, precision, labels = accelerator.device, accelerator.mixed_precision, data["train_labels"]
    if kind == "scratch":
        reference = ReferenceStepRunner(
            initial_state,
            arm.model.config,
            train_examples,
            labels,
            cfg,
            device,
            precision,
            cfg.max_train_steps,
        )
        return reference.run
    # Trainer needs token ids, also where ftvs trains on cached features
    trainer_examples = token_ids(arm, data["train_texts"], train_examples)

    def trainer_steps(steps):
        return trainer_round(arm, trainer_examples, labels, cfg, precision, 1, steps, device)

    return trainer_steps


def baseline_results(kind, arm, cfg, timed, flop_model, peak, equivalence) -> dict:
    ours, theirs = timed["ours"], timed["theirs"]
    if kind == "scratch":
        return {
            "reference": {
                "name": "PaddedReferenceClassifier (seed approach): same sizes and parameters, every batch "
                "padded "
                f"to {cfg.max_seq_length}, unfused attention with an explicit causal mask, shuffled batches",
                "logit_max_abs_diff_vs_ftvs": equivalence,
                "train": summarise_windows(theirs, None, peak, timed["warm"][1]),
                "ratio": ratio_block(ours, theirs, TARGETS["a_scratch_vs_padded_reference"]),
            }
        }
    cached = "; ftvs trains the head on cached base features, Trainer runs the frozen base every step"
    return {
        "trainer": {
            "name": "transformers.Trainer defaults (DataCollatorWithPadding, random order, "
            f"{theirs[0].get('optimizer')}), same model object, data, batch size and learning rate"
            + (cached if getattr(arm, "feature_cache", False) else ""),
            "train": summarise_windows(theirs, flop_model, peak),
            "trainer_reported_train_samples_per_second": [
                w.get("trainer_train_samples_per_second") for w in theirs
            ],
            "ratio": ratio_block(ours, theirs, TARGETS["b_finetune_vs_trainer"]),
        }
    }


def train_summary(timer, timed, flop_model, peak: float, settings: dict, args, log) -> dict:
    """The ftvs side's timed training windows, with how they were timed and whether any step went NaN."""
    host_syncs = timer.count_host_syncs(args.sync_check_steps) if timer.device.type == "cuda" else None
    nonfinite = bool(timer.step.nonfinite.item())
    if nonfinite:
        log("  warning: a NaN/Inf loss or gradient occurred during the timed steps")
    train = summarise_windows(timed["ours"], flop_model, peak, timed["warm"][0])
    train.update(
        nonfinite=nonfinite,
        fused_adamw=timer.fused_adamw,
        rounds=settings["rounds"],
        steps_per_round=settings["steps_per_round"],
        warmup_steps=settings["warmup_steps"],
        host_syncs=host_syncs,
        batch_order=BATCH_ORDER[args.batch_order],
    )
    return train


def bench_arm(kind: str, args, data: dict, probe: MatmulProbe, log, precision: str, compare: bool) -> dict:
    """One arm in one precision ("no" = fp32, "bf16", "fp16"); `compare`: with its baseline side by side."""
    from accelerate.state import AcceleratorState

    from ftvs.arms import build_arm
    from ftvs.launch import make_accelerator
    from ftvs.train import resolve_config

    settings = arm_settings(kind, args)
    bs, rounds, per_round = settings["batch_size"], settings["rounds"], settings["steps_per_round"]
    total_steps = settings["warmup_steps"] + rounds * per_round + 10
    cfg = make_train_config(args, kind, bs, total_steps, precision)
    # Accelerate fixes the precision once per process; each dtype of the benchmark needs its own
    AcceleratorState._reset_state()
    accelerator = make_accelerator(cfg)
    device, memory = accelerator.device, PeakMemory(accelerator.device)

    t0 = time.perf_counter()
    arm = build_arm(cfg, data["train_texts"], data["label_names"])
    cfg = resolve_config(cfg, arm)
    build_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_examples, train_labels = arm.encode(data["train_texts"]), data["train_labels"]
    encode_seconds = time.perf_counter() - t0
    desc = arm.describe()
    name = f"scratch-{cfg.preset}" if kind == "scratch" else f"{cfg.model_name_or_path} ({cfg.method})"
    log(
        f"[{kind}] {name}: {desc['params_total']:,} params ({desc['params_trainable']:,} trainable), batch "
        f"{bs}, "
        f"{len(train_examples):,} train examples, device {device}, precision {accelerator.mixed_precision}"
    )

    initial_state = copy.deepcopy(arm.model.state_dict()) if kind == "scratch" else None
    equivalence = reference_equivalence(arm, train_examples, initial_state) if kind == "scratch" else None
    timer = FtvsStepTimer(
        arm, cfg, train_examples, train_labels, accelerator, spread=args.batch_order == "spread"
    )
    flop_model, check = flop_model_of(timer, arm, accelerator, cross_check=not args.quick)

    baseline_step = None
    if compare:
        baseline_step = baseline_step_of(kind, arm, cfg, data, train_examples, initial_state, accelerator)
    timed = timed_rounds(kind, args, settings, timer, baseline_step, probe, memory, log)
    peak = statistics.median(timed["probes"])  # the probes between this arm's rounds, in its dtype
    train = train_summary(timer, timed, flop_model, peak, settings, args, log)
    result = {
        "arm": kind,
        "model": name,
        "method": cfg.method if kind == "finetune" else None,
        "params_total": desc["params_total"],
        "params_trainable": desc["params_trainable"],
        "batch_size": bs,
        "max_seq_length": cfg.max_seq_length,
        "learning_rate": cfg.learning_rate,
        "device": str(device),
        "mixed_precision": accelerator.mixed_precision,
        "dtype": DTYPE_OF[accelerator.mixed_precision],
        "compile": cfg.compile,
        "build_seconds": build_seconds,
        "encode_seconds": encode_seconds,
        "train": train,
        "flops": {**flop_model.describe(), "cross_check": check},
        "matmul_probe_interleaved_gflops": summary(timed["probes"]),
        "inference": arm_inference(arm, timer, accelerator, data, settings, memory),
    }
    if timed["theirs"]:
        result.update(baseline_results(kind, arm, cfg, timed, flop_model, peak, equivalence))
    accelerator.free_memory()
    return result


def measured(memory: PeakMemory, fn, *args) -> dict:
    """fn(*args) -> a timing window, with the peak memory of that window added."""
    memory.reset()
    result = fn(*args)
    result["peak_memory"] = memory.read()
    return result


# --------------------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------------------


def load_data(data_dir, max_train: int | None, seed: int) -> dict:
    from ftvs.data import load_metadata, load_split

    meta = load_metadata(data_dir)
    train_texts, train_labels = load_split(data_dir, "train")
    test_texts, test_labels = load_split(data_dir, "test")
    if max_train and len(train_texts) > max_train:
        train_texts, train_labels = train_texts[:max_train], train_labels[:max_train]
    return {
        "label_names": meta["label_names"],
        "train_texts": list(train_texts),
        "train_labels": list(train_labels),
        "test_texts": list(test_texts),
        "test_labels": list(test_labels),
        "source": meta.get("source"),
    }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


DTYPES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # --dtypes name -> mixed_precision value
DTYPE_OF = {v: k for k, v in DTYPES.items()}


def bf16_is_native(device) -> bool:
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()


def choose_dtypes(spec: str, device, in_use: str) -> tuple[list[str], str | None]:
    """The precisions to time (mixed_precision values; the one in use first: it alone runs the baselines)
    and, for `auto`, a note on what was left out."""
    note = None
    if spec == "auto":
        wanted = ["no", "bf16"] if bf16_is_native(device) else ["no"]
        if len(wanted) == 1:
            note = (
                "bf16 not timed: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag) and torch "
                "emulates it, many times slower than fp32; --dtypes fp32,bf16 times it anyway"
                if device.type == "cpu"
                else "bf16 not timed: this GPU does not support it"
            )
    else:
        wanted = []
        for name in (n.strip() for n in spec.split(",")):
            if name not in DTYPES:
                raise FtvsError(f"--dtypes: unknown dtype {name!r}; use fp32, bf16 or fp16, comma-separated")
            wanted.append(DTYPES[name])
    primary = in_use if in_use in wanted or spec == "auto" else wanted[0]
    return [primary, *(p for p in dict.fromkeys(wanted) if p != primary)], note


def make_probes(device, size: int, dtypes: list[str]) -> dict:
    """Matmul probes by dtype name: fp32 and bf16 always (the machine's best dtype is the faster), plus
    any other dtype that is timed."""
    probes = {}
    for name in dict.fromkeys(["fp32", "bf16", *(DTYPE_OF[p] for p in dtypes)]):
        dtype, n, note = autocast_dtype(DTYPES[name]) or torch.float32, size, None
        if name != "fp32" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        if name != "fp32" and device.type == "cpu" and not cpu_has_native_bf16():
            n = min(size, 512)  # emulated: a full-size probe would take tens of seconds per matmul
            note = f"emulated on this CPU (no native bf16 instructions): probed at {n}^2"
        if name == "fp32" and device.type == "cuda":
            note = "TF32 matmuls allowed, as in training"
        probes[name] = MatmulProbe(device, dtype, n, note)
    return probes


def run(args) -> dict:
    """The whole benchmark: machine, matmul probes, each arm in each dtype; returns the report (written
    with --output)."""
    if not Path(args.data, "metadata.json").is_file():
        raise FtvsError(
            f"{args.data} is not a prepared data folder (no metadata.json); run `ftvs prepare` first"
        )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    threads = choose_threads(args.threads)
    machine = machine_info()
    machine["threads_choice"] = threads
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    arms = ["scratch", "finetune"] if args.arm == "both" else [args.arm]
    # the precision in use per arm (`auto` is decided per arm), timed first; then the other --dtypes
    in_use = {kind: resolve_precision(args.mixed_precision, device.type, kind) for kind in arms}
    dtypes = {kind: choose_dtypes(args.dtypes, device, in_use[kind].name) for kind in arms}
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    timed = list(dict.fromkeys(p for kind in arms for p in dtypes[kind][0]))
    probes = make_probes(device, args.probe_size or (8192 if cuda else 2048), timed)
    for probe in probes.values():
        probe.measure(max(3, args.probe_repeats))
    log(
        f"machine: {machine['cpu_model']}, {machine['cpu_count']} cpus, torch {machine['torch']} "
        f"({threads['threads']} threads, {threads['mode']}), load {machine['loadavg_1min']}, "
        f"{machine.get('gpu', 'no GPU')}; matmul "
        + ", ".join(f"{p.size}^2 {name} {p.peak():.1f}" for name, p in probes.items())
        + " GFLOP/s; "
        + "; ".join(
            f"{kind} in {in_use[kind].name} ({in_use[kind].reason}), timing "
            f"{', '.join(DTYPE_OF[p] for p in dtypes[kind][0])}"
            + (f" ({dtypes[kind][1]})" if dtypes[kind][1] else "")
            for kind in arms
        )
    )

    data = load_data(args.data, args.max_train_examples, args.seed)
    runs = {
        kind: {
            DTYPE_OF[p]: bench_arm(kind, args, data, probes[DTYPE_OF[p]], log, p, args.compare and i == 0)
            for i, p in enumerate(dtypes[kind][0])
        }
        for kind in arms
    }
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # leave the process free to build an Accelerator in any precision
    best = best_dtype(probes)
    results = {
        kind: with_dtypes_side_by_side(by_dtype, DTYPE_OF[dtypes[kind][0][0]], best)
        for kind, by_dtype in runs.items()
    }
    machine["loadavg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    first = probes[DTYPE_OF[dtypes[arms[0]][0][0]]]
    report = {
        "command": "python benchmarks/bench.py " + " ".join(args.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds_total": time.perf_counter() - started,
        "quick": args.quick,
        "data": str(args.data),
        "dataset": data["source"],
        "num_train_examples": len(data["train_texts"]),
        "machine": machine,
        "precision": {  # per arm: what it ran in (first), why, and what `auto` picks for it here
            kind: {
                "in_use": DTYPE_OF[dtypes[kind][0][0]],
                "auto_resolves_to": DTYPE_OF[resolve_precision("auto", device.type, kind).name],
                "reason": in_use[kind].reason,
                "timed": [DTYPE_OF[p] for p in dtypes[kind][0]],
                "note": dtypes[kind][1],
            }
            for kind in arms
        },
        "matmul_probes": {name: p.describe() for name, p in probes.items()},
        "best_dtype": best,
        "matmul_probe": {
            **first.describe(),
            "gflops_at_start": summary(first.history[: max(3, args.probe_repeats)]),
        },
        "results": results,
        "comparisons": comparisons_of(results, cuda),
    }
    if args.output:
        from ftvs.fileio import write_json

        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, report)
    return report


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        report = run(args)
    except FtvsError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.output:
        print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
