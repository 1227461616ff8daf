"""The training loop end to end: a real from-scratch run on Banking77 learns and writes the documented outputs."""

import json

import pytest
import yaml
from builders import needs_banking77

METRIC_KEYS = {"run_name", "arm", "method", "model_name", "dataset", "data_dir", "seed", "test", "num_test_examples",
               "inference", "params", "size_on_disk_bytes", "training", "best_val", "train_val_gap", "model"}
HISTORY_KEYS = {"epoch", "step", "train_loss", "train_accuracy", "train_macro_f1", "val_loss", "val_accuracy",
                "val_macro_f1", "lr", "epoch_seconds", "elapsed_seconds", "examples_per_second"}


@needs_banking77
def test_training_learns_far_above_chance_and_writes_documented_outputs(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["arm"] == "scratch" and metrics["num_test_examples"] > 2500
    # 77 classes: chance is 1.3%; five epochs on 3,000 examples must be far above it
    assert metrics["test"]["accuracy"] > 0.25, metrics["test"]["accuracy"]
    assert metrics["test"]["macro_f1"] > 0.15
    assert len(metrics["test"]["per_class"]) == 77
    assert len(metrics["test"]["confusion_matrix"]) == 77
    assert metrics["inference"]["seconds_per_1000"] > 0
    assert 500_000 <= metrics["params"]["total"] <= 10_000_000
    assert metrics["params"]["total"] == metrics["params"]["trainable"]
    assert metrics["size_on_disk_bytes"] > 4 * metrics["params"]["total"]
    assert metrics["training"]["epochs_run"] == 5 and 1 <= metrics["training"]["best_epoch"] <= 5

    history = [json.loads(line) for line in (trained_run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert all(HISTORY_KEYS <= set(r) for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_macro_f1"] > history[0]["val_macro_f1"]

    for name in ("config.yaml", "train_summary.json", "predictions.json", "training_curves.png",
                 "confusion_matrix.png", "model/model.safetensors", "model/config.json", "model/ftvs.json",
                 "model/vocab_map.json", "checkpoint/state.json", "checkpoint/optimizer.safetensors"):
        assert (trained_run / name).is_file(), name
    resolved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert resolved["learning_rate"] == 2e-3 and resolved["resolved"]["effective_batch_size"] == 32
    preds = json.loads((trained_run / "predictions.json").read_text())
    assert len(preds["y_pred"]) == metrics["num_test_examples"]
    acc = sum(p == t for p, t in zip(preds["y_pred"], preds["y_true"])) / len(preds["y_true"])
    assert acc == pytest.approx(metrics["test"]["accuracy"])
