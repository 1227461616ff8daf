"""Defaults on small data (ftvs.small_data): the rule, and a real run whose config.yaml shows it."""

import pytest
import yaml
from tiny_runs import TINY_SCRATCH_FLAGS, prepare_tiny_dataset

from ftvs.cli import main
from ftvs.config import build_config
from ftvs.small_data import MIN_STEPS, small_data_defaults, steps_per_epoch


def values(changes: dict) -> dict:
    return {k: v["value"] for k, v in changes.items()}


def test_enough_steps_at_the_defaults_changes_nothing():
    assert steps_per_epoch(10_000, 32) * 10 >= MIN_STEPS
    assert small_data_defaults("finetune", 10_000, 32, 10, set()) == {}


def test_a_smaller_batch_comes_first_and_stops_at_the_first_size_that_is_enough():
    # 600 texts: 19 steps/epoch x 10 = 190 at batch 32; 38 x 10 = 380 at batch 16
    changes = small_data_defaults("finetune", 600, 32, 10, set())
    assert values(changes) == {"per_device_train_batch_size": 16}
    assert "190 optimizer steps at batch 32" in changes["per_device_train_batch_size"]["reason"]


def test_then_more_epochs_capped_per_arm():
    # 100 texts at batch 8: 13 steps/epoch; 200 steps need 16 epochs
    assert values(small_data_defaults("scratch", 100, 32, 10, set())) == {
        "per_device_train_batch_size": 8,
        "num_train_epochs": 16,
    }
    # 20 texts: 3 steps/epoch would need 67 epochs; the caps hold
    assert values(small_data_defaults("scratch", 20, 32, 10, set()))["num_train_epochs"] == 30
    assert values(small_data_defaults("finetune", 20, 32, 10, set()))["num_train_epochs"] == 20


def test_settings_the_user_gave_are_kept():
    given_epochs = small_data_defaults("finetune", 600, 32, 2, {"num_train_epochs"})
    assert values(given_epochs) == {"per_device_train_batch_size": 8}  # 150 steps: the best it can do
    assert values(small_data_defaults("scratch", 100, 32, 10, {"per_device_train_batch_size"})) == {
        "num_train_epochs": 30  # 4 steps/epoch at the given batch 32: 50 epochs, capped
    }
    both = {"per_device_train_batch_size", "num_train_epochs"}
    assert small_data_defaults("scratch", 100, 32, 10, both) == {}


def test_accumulation_and_processes_count_in_the_steps():
    assert (
        steps_per_epoch(1000, 16, accumulation=2, world_size=2) == 16
    )  # 63 batches, 32 per process, 2 per step
    assert values(small_data_defaults("finetune", 1000, 32, 10, set(), world_size=4)) == {
        "per_device_train_batch_size": 8
    }


def test_build_config_records_which_keys_were_given():
    cfg = build_config({"num_train_epochs": 3}, {"arm": "scratch", "learning_rate": 1e-3})
    assert {"num_train_epochs", "arm", "learning_rate"} <= cfg.given
    assert "per_device_train_batch_size" not in cfg.given


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return prepare_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_train=100)


def test_a_small_run_trains_with_the_adjusted_defaults_and_records_why(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    flags = [
        "--data",
        str(tiny_data),
        "--output_dir",
        str(run),
        *TINY_SCRATCH_FLAGS,
        "--early_stopping_patience",
        "1",
    ]
    assert main(["train", "scratch", *flags, "--no-evaluate"]) == 0
    assert "small data: per_device_train_batch_size 8, num_train_epochs 20" in capsys.readouterr().out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # 80 train texts (20% held out for validation): 10 steps/epoch at batch 8, 20 epochs for 200 steps
    assert saved["per_device_train_batch_size"] == 8 and saved["num_train_epochs"] == 20
    resolved = saved["resolved"]
    assert set(resolved["auto_defaults"]) == {"per_device_train_batch_size", "num_train_epochs"}
    assert resolved["steps_per_epoch"] == 10 and resolved["total_steps"] == 200
    assert resolved["warmup_steps"] == int(saved["warmup_ratio"] * 200)  # a ratio of the real steps
    # resuming it (its own config) keeps the same values; a flag the user gives is not touched
    other = tmp_path / "given"
    flags[3] = str(other)
    assert (
        main(
            [
                "train",
                "scratch",
                *flags,
                "--per_device_train_batch_size",
                "32",
                "--num_train_epochs",
                "1",
                "--no-evaluate",
            ]
        )
        == 0
    )
    given = yaml.safe_load((other / "config.yaml").read_text())
    assert given["per_device_train_batch_size"] == 32 and given["resolved"]["auto_defaults"] == {}
