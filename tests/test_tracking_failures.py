"""A tracker never hangs or kills a run (issue 23, items 11 and 14): an MLflow store that does not answer
or that MLflow cannot use is one line before training; an MLflow run that fails in the middle of training
(here: deleted by another client, as from the MLflow UI) is dropped with one warning, the training goes on
to the end, and metrics.json says so."""

import json
import threading
import time

import pytest
from tiny_runs import TINY_SCRATCH_FLAGS, assert_one_line_error, prepare_tiny_dataset

from ftvs.cli import main

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_tiny_dataset(tmp_path_factory.mktemp("tracking-failures"), num_train=120, num_test=20)


def _train(data, run, *extra) -> list[str]:
    return ["train", "scratch", "--data", str(data), "--output_dir", str(run), *TINY_SCRATCH_FLAGS, *extra]


@pytest.mark.parametrize(
    ("uri", "needle"),
    [("http://127.0.0.1:9", "Connection refused"), ("junk://x", "unsupported URI 'junk://x'")],
)
def test_an_mlflow_store_that_does_not_answer_is_one_line_before_training(
    data, tmp_path, capsys, monkeypatch, uri, needle
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = tmp_path / "run"
    start = time.monotonic()
    err = assert_one_line_error(
        capsys, _train(data, run, "--report_to", "mlflow"), f"MLFLOW_TRACKING_URI={uri}"
    )
    assert needle in err and "drop mlflow from --report_to" in err
    assert time.monotonic() - start < 60  # MLflow's own client retries for minutes
    assert not run.exists()  # refused before the run folder was made


def test_an_mlflow_run_failing_mid_training_never_stops_it(data, tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run, epochs = tmp_path / "run", 12
    state = run / "logs" / "tracking.json"
    deleted, failures = [], []

    def delete_the_mlflow_run():  # as soon as training has started its MLflow run
        end = time.monotonic() + 300
        while not state.is_file() and time.monotonic() < end:
            time.sleep(0.02)
        while state.is_file() and not deleted and time.monotonic() < end:
            try:  # the run can reach the database a moment after tracking.json names it
                MlflowClient(tracking_uri=uri).delete_run(json.loads(state.read_text())["mlflow_run_id"])
                deleted.append(True)
            except Exception as e:  # MlflowException, or sqlalchemy's "database is locked" while training
                failures.append(repr(e)[:300])  # writes (uncaught, it ended the thread: a CI failure)
                time.sleep(0.02)

    watcher = threading.Thread(target=delete_the_mlflow_run, daemon=True)
    watcher.start()
    capsys.readouterr()
    code = main(
        _train(data, run, "--report_to", "mlflow", "--num_train_epochs", str(epochs), "--logging_steps", "1")
        + ["--early_stopping_patience", "0"]
    )
    err = capsys.readouterr().err
    watcher.join(5)
    assert deleted and code == 0, (failures[-3:], err[-2000:])
    warnings = [
        line for line in err.splitlines() if line.startswith("ftvs: warning: the mlflow tracker failed")
    ]
    assert len(warnings) == 1 and "training goes on without it" in warnings[0], err[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["status"] == "completed" and metrics["training"]["epochs_run"] == epochs
    assert "mlflow" in metrics["training"]["tracker_failures"]
    assert "mlflow" in json.loads(state.read_text())["failures"]
