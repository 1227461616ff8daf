"""The command line of benchmarks/bench.py: what to benchmark, how long to time it, on which machine
set-up."""

import argparse

BATCH_ORDER = {
    "spread": "the length-grouped sampler's batches, visited in van der Corput order over their padded sizes "
    "(the timed steps sample the epoch's batch sizes evenly; see SpreadBatches)",
    "epoch": "the length-grouped sampler's batches in its own shuffled order",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/bench.py",
        description="Benchmark ftvs on a prepared dataset: training throughput, inference latency (batch 1) "
        "and "
        "throughput, peak memory, a matmul probe and the MFU of the training step; side by side with "
        "(a) a padded-to-max-length reference loop (scratch) and (b) transformers.Trainer (finetune), "
        "in one process on the same data, model and batch size. Writes JSON with --output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_what_args(p)
    _add_timing_args(p)
    _add_machine_args(p)
    return p


def _add_what_args(p: argparse.ArgumentParser) -> None:
    """The data, the arm and its model."""
    p.add_argument("--data", required=True, help="prepared data folder (from `ftvs prepare`)")
    p.add_argument(
        "--arm", choices=("scratch", "finetune", "both"), default="scratch", help="what to benchmark"
    )
    p.add_argument("--preset", default="tiny", help="scratch: size preset")
    p.add_argument("--tokenizer", default="smollm2-135m", help="scratch: tokenizer (name/path, or 'bpe')")
    p.add_argument(
        "--model",
        "--model_name_or_path",
        dest="model",
        default="smollm2-135m",
        help="finetune: pre-trained model",
    )
    p.add_argument(
        "--method", default="lora", choices=("lora", "full", "frozen", "unfreeze"), help="finetune: method"
    )
    p.add_argument(
        "--batch_size",
        "--batch-size",
        type=int,
        default=None,
        help="training batch size (default: scratch 32, finetune 16)",
    )


def _add_timing_args(p: argparse.ArgumentParser) -> None:
    """How many steps and examples are timed."""
    p.add_argument("--max_seq_length", "--max-seq-length", type=int, default=128, help="truncation length")
    p.add_argument("--warmup_steps", "--warmup-steps", type=int, default=None, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (ftvs and baseline alternate)")
    p.add_argument(
        "--steps_per_round", "--steps-per-round", type=int, default=None, help="timed steps per round"
    )
    p.add_argument("--latency_examples", type=int, default=None, help="examples timed one by one")
    p.add_argument(
        "--throughput_examples", type=int, default=None, help="examples for the inference throughput"
    )
    p.add_argument("--throughput_batch_size", type=int, default=None, help="inference batch size")
    p.add_argument("--max_train_examples", type=int, default=None, help="use only the first N training texts")


def _add_machine_args(p: argparse.ArgumentParser) -> None:
    """Precision, threads, probes, baselines and output."""
    p.add_argument(
        "--mixed_precision",
        default="auto",
        choices=("auto", "no", "bf16", "fp16"),
        help="the precision in use, which also runs the baselines (auto: as for training, bf16 on CUDA and "
        "on "
        "CPUs with native bf16, else fp32)",
    )
    p.add_argument(
        "--dtypes",
        default="auto",
        help="dtypes to time the training step and inference in, side by side: e.g. fp32,bf16 (auto: fp32 "
        "and "
        "bf16 where bf16 is native, else fp32 alone)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="time the step with its transformer blocks compiled (ftvs train --compile yes)",
    )
    p.add_argument(
        "--threads", default="auto", help="CPU threads: a number or auto (probe 1 vs torch's default)"
    )
    p.add_argument(
        "--probe_size", type=int, default=None, help="matmul probe size (default 2048 CPU, 8192 GPU)"
    )
    p.add_argument("--probe_repeats", type=int, default=3, help="probe matmuls after each round")
    p.add_argument(
        "--batch_order",
        choices=tuple(BATCH_ORDER),
        default="spread",
        help="ftvs batches: spread (a representative sample of the epoch's batch sizes in every "
        "window) or epoch (the sampler's own order: a few steps may be a biased sample)",
    )
    p.add_argument(
        "--sync_check_steps",
        type=int,
        default=10,
        help="CUDA: extra steps run under torch.cuda.set_sync_debug_mode to count host syncs",
    )
    p.add_argument(
        "--compare", action=argparse.BooleanOptionalAction, default=True, help="run the baseline side by side"
    )
    p.add_argument("--quick", action="store_true", help="a short run (smoke test): few steps, few examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o", help="write the results as JSON to this file")
