"""Smoke test of `python benchmarks/bench.py --quick` (scratch arm, a few steps, a tiny synthetic dataset).

Benchmarks are not unit tests: nothing here asserts a timing or a ratio, only that the command runs end
to end and writes the documented JSON keys.
"""

import csv
import json
import sys
from pathlib import Path

import pytest

from ftvs.data import prepare

# the harness lives beside the package, not in it: benchmarks/ is not installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench  # noqa: E402

TOPICS = {
    "card": "my card {} was declined at the shop {}",
    "transfer": "the transfer {} to my friend has not arrived {}",
    "refund": "I want a refund for order {} please {}",
    "pin": "how do I change the pin of card {} today {}",
}


def tiny_topics(tmp_path, filler=lambda i: "now" * (i % 5)) -> Path:
    """A prepared folder of 160 texts of the 4 topics, each ending in `filler(i)`."""
    source = tmp_path / "tiny.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for label, template in TOPICS.items():
            for i in range(40):
                w.writerow([template.format(i, filler(i)), label])
    data = tmp_path / "data"
    prepare(str(source), data, tokenizer="none", seed=0)
    return data


def test_bench_quick_scratch_writes_the_documented_json(tmp_path, capsys):
    data = tiny_topics(tmp_path)
    out = tmp_path / "bench.json"

    code = bench.main(
        [
            "--data",
            str(data),
            "--arm",
            "scratch",
            "--quick",
            "--tokenizer",
            "bpe",
            "--max_seq_length",
            "32",
            "--batch_size",
            "8",
            "--warmup_steps",
            "1",
            "--rounds",
            "1",
            "--steps_per_round",
            "2",
            "--latency_examples",
            "4",
            "--throughput_examples",
            "16",
            "--throughput_batch_size",
            "8",
            "--probe_size",
            "256",
            "--dtypes",
            "fp32,bf16",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert {"command", "machine", "matmul_probe", "results", "comparisons"} <= set(report)
    assert {"cpu_model", "cpu_count", "torch", "threads_choice"} <= set(report["machine"])
    r = report["results"]["scratch"]
    assert {"examples_per_second", "tokens_per_second", "mfu", "mfu_useful", "peak_memory"} <= set(r["train"])
    assert {"p50", "p95"} <= set(r["inference"]["latency_batch1_ms"])
    assert "examples_per_second" in r["inference"]["throughput"]
    assert "formula" in r["flops"]
    assert r["reference"]["logit_max_abs_diff_vs_ftvs"] < 1e-4  # the baseline computes the same function
    # both dtypes side by side; MFU against each dtype's own peak and against the machine's best dtype
    assert set(report["matmul_probes"]) >= {"fp32", "bf16"}
    probe = report["matmul_probes"]["fp32"]
    assert {"torch_threads", "cores", "loadavg_1min_at_probes"} <= set(probe["conditions"])
    assert report["best_dtype"]["dtype"] in ("fp32", "bf16")
    assert r["dtype"] == report["precision"]["scratch"]["in_use"] and set(r["by_dtype"]) == {"fp32", "bf16"}
    best = report["best_dtype"]["peak_gflops"]
    for row in r["by_dtype"].values():
        peak = max(best, row["peak_gflops_own_dtype"])
        assert row["mfu_vs_best_dtype"] == pytest.approx(row["achieved_gflops"] / peak)
        assert row["mfu_vs_best_dtype"] <= row["mfu_own_dtype"] * (1 + 1e-9)
    assert r["by_dtype"]["bf16"]["train_speedup_vs_fp32"] > 0
    assert "d_scratch_bf16_vs_fp32" in report["comparisons"]
    a = report["comparisons"]["a_scratch_vs_padded_reference"]
    assert {"examples_per_second_ratio", "per_round", "target", "meets_target"} <= set(a)
    assert "a_scratch_vs_padded_reference" in capsys.readouterr().out


def test_bench_times_the_training_step_that_train_builds():
    """The timed step is ftvs.train's TrainStep, fed the sampler's batches, with their shapes recorded."""
    from bench_step import FtvsStepTimer

    from ftvs.arms import build_arm
    from ftvs.config import build_config
    from ftvs.launch import make_accelerator
    from ftvs.train import TrainStep, resolve_config

    texts = [template.format(i, "now " * (i % 7)) for template in TOPICS.values() for i in range(12)]
    labels = [n for n in range(len(TOPICS)) for _ in range(12)]
    cfg = build_config(
        {},
        {
            "data": "unused",
            "output_dir": "unused",
            "tokenizer": "bpe",
            "bpe_vocab_size": 200,
            "n_layer": 1,
            "n_embd": 16,
            "n_head": 2,
            "d_ff": 32,
            "max_seq_length": 16,
            "per_device_train_batch_size": 8,
            "mixed_precision": "no",
            "max_train_steps": 20,
        },
    )
    arm = build_arm(cfg, texts, list(TOPICS))
    cfg = resolve_config(cfg, arm)
    examples = arm.encode(texts)
    timer = FtvsStepTimer(arm, cfg, examples, labels, make_accelerator(cfg), spread=True)
    assert isinstance(timer.step, TrainStep)
    window = timer.run(8)  # 48 examples / 8: one epoch is 6 steps, so this crosses into the next epoch
    assert timer.step.global_step == 8 and timer.epoch == 1
    assert window["steps"] == 8 and window["examples"] == 64
    lengths = sorted(len(e) for e in examples)
    assert all(1 <= t <= lengths[-1] for _, t in window["shapes"])
    assert lengths[-1] in [t for _, t in window["shapes"]]  # the longest batch of the epoch was among them


def test_bench_shapes_times_each_length_and_dtype_and_its_flops_agree_with_flop_counter_mode(tmp_path):
    """benchmarks/bench_shapes.py: every timed batch has exactly the asked length, each dtype is timed in
    every round, and the analytic FLOP count of the step is the one torch's FlopCounterMode counts."""
    import bench_shapes

    data = tiny_topics(tmp_path, filler=lambda i: " ".join(f"w{i}x{j}" for j in range(12)))
    out = tmp_path / "shapes.json"
    argv = ["--data", str(data), "--arm", "scratch", "--lengths", "8,16", "--rounds", "2", "--steps", "1"]
    argv += ["--tokenizer", "bpe", "--probe_size", "128", "--threads", "1", "--output", str(out)]
    assert bench_shapes.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["length"], r["dtype"]) for r in rows] == [(8, "fp32"), (8, "bf16"), (16, "fp32"), (16, "bf16")]
    for r in rows:
        assert {t for _, t in r["shapes"]} == {r["length"]} and len(r["speedup_per_round"]) == 2
        assert r["flop_counter_over_analytic"] == pytest.approx(1.0, abs=0.1)
        assert 0 < r["mfu_vs_best_dtype"] <= r["mfu_own_dtype"] * (1 + 1e-9) or r["dtype"] == "bf16"
    assert rows[0]["speedup_vs_fp32"] == 1.0
