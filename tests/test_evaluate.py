"""Evaluating a trained run: metrics and predictions, here in bf16."""

import json

from ftvs.cli import main


def test_bf16_inference_is_recorded_and_agrees_with_fp32(trained_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    assert main(["evaluate", str(run), "--mixed_precision", "bf16"]) == 0
    bf16 = json.loads((run / "metrics.json").read_text())
    fp32 = json.loads((trained_run / "metrics.json").read_text())
    assert bf16["inference"]["precision"] == "bf16" and fp32["inference"]["precision"] == "no"
    # what the run trained in, and why, whatever it was scored in
    for metrics in (bf16, fp32):
        assert metrics["training"]["mixed_precision"] == "no"
        assert metrics["training"]["mixed_precision_reason"] == "requested"
    a = json.loads((run / "predictions.json").read_text())["y_pred"]
    b = json.loads((trained_run / "predictions.json").read_text())["y_pred"]
    assert sum(x == y for x, y in zip(a, b)) / len(a) > 0.95
    assert abs(bf16["test"]["accuracy"] - fp32["test"]["accuracy"]) < 0.02
