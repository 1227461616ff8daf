"""The training loop (ftvs.train): a real run learns and writes the documented outputs, for others to read
while and after it trains."""

import json

import pytest
import yaml
from builders import HISTORY_KEYS, METRIC_KEYS
from tiny_runs import TINY_SCRATCH_FLAGS, prepare_tiny_dataset

from ftvs.cli import main
from ftvs.progress import PROGRESS_FILE, ProgressFile, read_progress

PROGRESS_KEYS = {
    "phase",
    "epoch",
    "num_epochs",
    "epochs_done",
    "step_in_epoch",
    "steps_per_epoch",
    "global_step",
    "elapsed_seconds",
    "epoch_elapsed_seconds",
    "updated_unix",
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return prepare_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def test_a_finished_run_says_done_in_its_progress_file(tiny_data, tmp_path):
    run = tmp_path / "run"
    argv = [
        "train",
        "scratch",
        "--data",
        str(tiny_data),
        "--output_dir",
        str(run),
        *TINY_SCRATCH_FLAGS,
        "--num_train_epochs",
        "2",
        "--per_device_train_batch_size",
        "16",
        "--early_stopping_patience",
        "0",
        "--no-evaluate",
    ]
    assert main(argv) == 0
    progress = read_progress(run)
    assert set(progress) == PROGRESS_KEYS
    assert progress["phase"] == "done"
    assert progress["epochs_done"] == progress["num_epochs"] == progress["epoch"] == 2
    summary = json.loads((run / "train_summary.json").read_text())
    assert progress["global_step"] == summary["global_step"] == 2 * summary["steps_per_epoch"]
    assert progress["steps_per_epoch"] == progress["step_in_epoch"] == 10  # 160 train texts / 16
    assert 0 < progress["epoch_elapsed_seconds"] <= progress["elapsed_seconds"]
    assert not [p.name for p in run.iterdir() if p.name.startswith(f".{PROGRESS_FILE}")]  # no temporary left


def test_progress_is_written_at_epoch_start_then_at_most_once_a_second_and_only_by_the_main_process(tmp_path):
    path = tmp_path / PROGRESS_FILE
    progress = ProgressFile(path, num_epochs=3, steps_per_epoch=50, enabled=True)
    progress.start_epoch(1, step_in_epoch=0, global_step=50)
    first = json.loads(path.read_text())
    assert (first["phase"], first["epoch"], first["epochs_done"], first["step_in_epoch"]) == (
        "train",
        2,
        1,
        0,
    )
    for i in range(1, 50):  # fast steps: far less than a second apart
        progress.tick(i, 50 + i)
    assert json.loads(path.read_text()) == first
    progress.last_write -= ProgressFile.MIN_INTERVAL_SECONDS  # a second later
    progress.tick(30, 80)
    assert json.loads(path.read_text())["step_in_epoch"] == 30
    progress.write("eval", 50, 100)
    assert json.loads(path.read_text())["phase"] == "eval"

    other = tmp_path / "rank1.json"
    silent = ProgressFile(other, num_epochs=3, steps_per_epoch=50, enabled=False)
    silent.start_epoch(0, 0, 0)
    silent.done(3, 150)
    assert not other.exists() and read_progress(tmp_path / "never") is None


def test_training_learns_far_above_chance_and_writes_documented_outputs(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["arm"] == "scratch" and metrics["num_test_examples"] > 2500
    # 20 classes: chance is 5%; five epochs on 3,000 short posts must be far above it (the official test
    # split is later in time than the training posts, and harder than val)
    assert metrics["test"]["accuracy"] > 0.15, metrics["test"]["accuracy"]
    assert metrics["test"]["macro_f1"] > 0.12
    assert len(metrics["test"]["per_class"]) == 20
    assert len(metrics["test"]["confusion_matrix"]) == 20
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

    for name in (
        "config.yaml",
        "train_summary.json",
        "predictions.json",
        "training_curves.png",
        "confusion_matrix.png",
        "model/model.safetensors",
        "model/config.json",
        "model/ftvs.json",
        "model/vocab_map.json",
        "checkpoint/state.json",
        "checkpoint/optimizer.safetensors",
    ):
        assert (trained_run / name).is_file(), name
    resolved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert resolved["learning_rate"] == 2e-3 and resolved["resolved"]["effective_batch_size"] == 32
    preds = json.loads((trained_run / "predictions.json").read_text())
    assert len(preds["y_pred"]) == metrics["num_test_examples"]
    acc = sum(p == t for p, t in zip(preds["y_pred"], preds["y_true"])) / len(preds["y_true"])
    assert acc == pytest.approx(metrics["test"]["accuracy"])
