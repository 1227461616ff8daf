"""`--report_to` (ftvs/tracking.py): a real tiny run logs to TensorBoard and a local MLflow store, read
back."""

import importlib.util
import json

import pytest
from tiny_runs import TINY_SCRATCH_FLAGS

from ftvs.cli import main
from ftvs.data import prepare
from ftvs.errors import FtvsError
from ftvs.tracking import check_installed, parse_report_to

EPOCHS = 6


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    data, run = root / "sms", root / "runs" / "sms-tiny"
    prepare("sms_spam", data, max_train_examples=240, tokenizer="none", seed=0)
    # the 1-block model with balanced class weights: 6 short epochs learn spam (macro-F1 ~0.69)
    code = main(["train", "scratch", "--data", str(data), "--output_dir", str(run), *TINY_SCRATCH_FLAGS,
                 "--max_seq_length", "32", "--num_train_epochs", str(EPOCHS), "--pooling", "mean",
                 "--learning_rate", "1e-2", "--class_weights", "balanced", "--logging_steps", "2",
                 "--report_to", "tensorboard,mlflow"])  # fmt: skip
    assert code == 0
    return run


def test_tensorboard_events_hold_the_step_loss_and_the_val_metrics_per_epoch(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "logs" / "tensorboard" / "sms-tiny")).Reload()
    scalars = events.Tags()["scalars"]
    losses = events.Scalars("train/loss")
    assert len(losses) >= 4 and all(
        e.value > 0 for e in losses
    )  # 30 batches/epoch (batch 8 on small data), logged every 2
    assert [e.step for e in losses] == sorted(e.step for e in losses)
    assert "train/learning_rate" in scalars
    val = events.Scalars("val_macro_f1")
    assert len(val) == EPOCHS and all(0 <= e.value <= 1 for e in val)  # one per epoch
    assert "test_accuracy" in scalars  # evaluation after training logs the test scores too


def test_mlflow_run_has_the_config_the_val_metrics_and_the_test_scores(tracked_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracked_run / 'logs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sms-tiny")  # no study: the run's name
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "sms-tiny" and run.info.status == "FINISHED"
    assert float(run.data.params["learning_rate"]) == pytest.approx(1e-2)
    assert run.data.params["arm"] == "scratch"
    assert len(client.get_metric_history(run.info.run_id, "val_macro_f1")) == EPOCHS
    # SMS Spam is 87% ham: always answering ham scores accuracy 0.87 but macro-F1 about 0.47, so the
    # logged test macro-F1 (the run's own, from metrics.json) is what shows a model that learned spam
    test = json.loads((tracked_run / "metrics.json").read_text())["test"]
    assert run.data.metrics["test_macro_f1"] == pytest.approx(test["macro_f1"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(test["accuracy"])
    assert test["macro_f1"] > 0.6


def test_report_to_parsing_and_missing_packages():
    assert parse_report_to("none") == [] and parse_report_to("") == []
    assert parse_report_to("tensorboard, mlflow,tensorboard") == ["tensorboard", "mlflow"]
    assert set(parse_report_to("all")) >= {"tensorboard", "mlflow"}
    with pytest.raises(FtvsError, match="did you mean .tensorboard."):
        parse_report_to("tensorbord")
    for name in ("wandb", "trackio"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(FtvsError, match=f"pip install {name}"):
                check_installed([name])
