"""`ftvs.rundir`: the run-folder layout, and the one writer/reader of results and per-run figures."""

import json

import pytest

from ftvs import rundir
from ftvs.errors import FtvsError
from ftvs.fileio import append_jsonl


def test_results_are_written_once_and_read_back(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert not rundir.is_evaluated(run)
    metrics = {"run_name": "run", "test": {"accuracy": 0.5}}
    rundir.write_results(run, metrics, ["a", "b"], [0, 1], [0, 0], [0.91234567, 0.6])
    assert rundir.is_evaluated(run)
    assert rundir.read_metrics(run) == metrics
    pred = rundir.read_predictions(run)
    assert pred == {
        "label_names": ["a", "b"],
        "split": "test",
        "split_hash": None,
        "y_true": [0, 1],
        "y_pred": [0, 0],
        "confidence": [0.912346, 0.6],
    }
    assert json.loads((run / rundir.PREDICTIONS).read_text()) == pred
    rundir.clear_results(run)
    assert not (run / rundir.METRICS).exists() and not (run / rundir.PREDICTIONS).exists()
    with pytest.raises(FtvsError, match="ftvs evaluate"):
        rundir.read_predictions(run)


def test_missing_files_read_as_empty_and_bad_yaml_is_named(tmp_path):
    assert (
        rundir.read_config(tmp_path),
        rundir.read_history(tmp_path),
        rundir.read_summary(tmp_path),
        rundir.read_marker(tmp_path),
    ) == ({}, [], {}, {})
    (tmp_path / rundir.CONFIG).write_text("arm: [unclosed\n")
    with pytest.raises(FtvsError, match=rundir.CONFIG):
        rundir.read_config(tmp_path)
    (tmp_path / rundir.CONFIG).write_text("arm: scratch\nseed: 3\n")
    assert rundir.read_config(tmp_path) == {"arm": "scratch", "seed": 3}
    rundir.model_dir(tmp_path).mkdir()
    (rundir.model_dir(tmp_path) / rundir.MODEL_MARKER).write_text('{"arm": "baseline"}')
    assert rundir.read_marker(tmp_path) == {"arm": "baseline"}


def test_figures_are_png_and_curves_need_a_history(tmp_path):
    rundir.write_figures(tmp_path, ["a", "b"], [[3, 1], [0, 4]], run_name="r")
    assert (tmp_path / rundir.CONFUSION_MATRIX).read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / rundir.TRAINING_CURVES).exists()
    for epoch in (1, 2):
        append_jsonl(
            tmp_path / rundir.HISTORY,
            {
                "epoch": epoch,
                "lr": 1e-3,
                **{f"{s}_{k}": 0.5 for s in ("train", "val") for k in ("loss", "accuracy", "macro_f1")},
            },
        )
    rundir.write_figures(tmp_path, ["a", "b"], [[3, 1], [0, 4]], run_name="r")
    assert (tmp_path / rundir.TRAINING_CURVES).read_bytes()[:4] == b"\x89PNG"
