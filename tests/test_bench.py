"""Smoke test of `ftvs bench --quick` (scratch arm, a few steps, a tiny synthetic dataset).

Benchmarks are not unit tests: nothing here asserts a timing or a ratio, only that the command runs end
to end and writes the documented JSON keys.
"""

import csv
import json

from ftvs.cli import main
from ftvs.data import prepare

TOPICS = {
    "card": "my card {} was declined at the shop {}",
    "transfer": "the transfer {} to my friend has not arrived {}",
    "refund": "I want a refund for order {} please {}",
    "pin": "how do I change the pin of card {} today {}",
}


def test_bench_quick_scratch_writes_the_documented_json(tmp_path, capsys):
    source = tmp_path / "tiny.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for label, template in TOPICS.items():
            for i in range(40):
                w.writerow([template.format(i, "now" * (i % 5)), label])
    data = tmp_path / "data"
    prepare(str(source), data, tokenizer="none", seed=0)
    out = tmp_path / "bench.json"

    code = main(["bench", "--data", str(data), "--arm", "scratch", "--quick", "--tokenizer", "bpe",
                 "--max_seq_length", "32", "--batch_size", "8", "--warmup_steps", "1", "--rounds", "1",
                 "--steps_per_round", "2", "--latency_examples", "4", "--throughput_examples", "16",
                 "--throughput_batch_size", "8", "--probe_size", "256", "--output", str(out)])
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
    a = report["comparisons"]["a_scratch_vs_padded_reference"]
    assert {"examples_per_second_ratio", "per_round", "target", "meets_target"} <= set(a)
    assert "a_scratch_vs_padded_reference" in capsys.readouterr().out
