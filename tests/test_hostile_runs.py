"""A hostile user against run folders (issue 23, data loss and runs that never ended): nothing is removed
before the run's lock is taken, `ftvs export --output` replaces only what ftvs wrote, and evaluate, export
and compare refuse a run whose training is still going or was killed. Real tiny runs through the CLI."""

import contextlib
import json
import shutil
from pathlib import Path

import pytest
from tiny_runs import SCRATCH_FLAGS, assert_one_line_error, baseline_run, prepare_tiny_dataset, scratch_run

import ftvs
from ftvs.cli import main
from ftvs.errors import FtvsError
from ftvs.fileio import RunLock

pytest.importorskip("onnxruntime")


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (but the lock file) with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RunLock.NAME
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile_runs")
    data = prepare_tiny_dataset(root)
    return {
        "root": root,
        "data": data,
        "scratch": scratch_run(data, root / "scratch"),
        "baseline": baseline_run(data, root / "baseline"),
    }


def copy_run(runs: dict, name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(runs[name], run)
    return run


def test_a_run_in_use_loses_nothing_to_overwrite_output_dir(runs, capsys):
    """Item 1: a second `train --overwrite_output_dir` on a run another process holds is refused before it
    removes anything (it used to delete config.yaml, model/ and the history first)."""
    data = str(runs["data"])
    for kind, argv in (
        ("scratch", ["train", "scratch", "--data", data, *SCRATCH_FLAGS]),
        ("baseline", ["baseline", "--data", data]),
    ):
        run = runs[kind]
        before = snapshot(run)
        with RunLock(run):  # another ftvs process training there
            assert_one_line_error(
                capsys, [*argv, "--output_dir", str(run), "--overwrite_output_dir"], "in use by another ftvs"
            )
        assert snapshot(run) == before, kind


def test_resume_needs_a_run_to_continue(runs, tmp_path):
    """Item 8: resume=True on a new folder used to train a fresh run without a word."""
    new = tmp_path / "new"
    with pytest.raises(FtvsError, match="cannot resume .*does not exist"):
        ftvs.train("scratch", runs["data"], new, resume=True, num_train_epochs=1, disable_tqdm=True)
    assert not new.exists()
    new.mkdir()
    (new / "notes.txt").write_text("mine")
    with pytest.raises(FtvsError, match="holds no run to continue"):
        ftvs.train("scratch", runs["data"], new, resume=True, num_train_epochs=1, disable_tqdm=True)
    assert [p.name for p in new.iterdir()] == ["notes.txt"]


def test_export_output_replaces_only_what_ftvs_wrote(runs, tmp_path, capsys):
    """Item 2: `--output notes.txt` replaced the user's file (and deleted notes.txt.data); a folder as
    --output was an IsADirectoryError."""
    run = str(runs["scratch"])
    notes, data = tmp_path / "notes.txt", tmp_path / "notes.txt.data"
    notes.write_text("precious")
    data.write_text("also mine")
    export = ["export", run, "--no-check", "--output"]
    assert_one_line_error(capsys, [*export, str(notes)], "not an ONNX graph ftvs exported")
    assert_one_line_error(capsys, [*export, str(tmp_path)], "is a folder")
    assert notes.read_text() == "precious" and data.read_text() == "also mine"
    # a new file beside somebody's .data: exported, and the .data (not the graph's) left alone
    graph, user_data = tmp_path / "model.onnx", tmp_path / "model.onnx.data"
    user_data.write_text("mine too")
    assert main([*export, str(graph)]) == 0
    assert graph.stat().st_size > 10_000 and user_data.read_text() == "mine too"
    # a graph ftvs exported is its own: --overwrite is needed only for the user's file
    from ftvs.export import check_output

    assert check_output(graph, overwrite=False) == [graph]
    assert check_output(notes, overwrite=True) == [notes]


def test_export_to_an_opset_it_cannot_make_is_an_error(runs, tmp_path, capsys):
    """Item 5: `--opset 1` printed the converter's traceback, then "exported (opset 1)" with exit 0 while
    the graph was opset 18."""
    out = tmp_path / "o1.onnx"
    export = ["export", str(runs["scratch"]), "--no-check", "--output", str(out)]
    err = assert_one_line_error(capsys, [*export, "--opset", "1"], "to opset 1 failed")
    assert "Traceback" not in capsys.readouterr().err and not out.exists(), err
    assert_one_line_error(capsys, [*export, "--opset", "999"], "--opset 999")


@pytest.mark.parametrize("still_training", [True, False], ids=["running", "killed"])
def test_a_run_whose_training_never_ended_is_not_scored(runs, tmp_path, capsys, still_training):
    """Item 9: evaluate, export and compare accepted a run still training, or killed (status running)."""
    run = copy_run(runs, "scratch", tmp_path)
    summary = json.loads((run / "train_summary.json").read_text())
    (run / "train_summary.json").write_text(json.dumps({**summary, "status": "running"}))
    needle = "is still training" if still_training else "never ended"
    commands = (
        ["evaluate", str(run)],
        ["export", str(run), "--no-check", "--output", str(tmp_path / "m.onnx")],
        ["compare", str(runs["baseline"]), str(run), "--out", str(tmp_path / "cmp"), "--formats", "md"],
    )
    before = snapshot(run)
    with RunLock(run) if still_training else contextlib.nullcontext():
        for argv in commands:
            err = assert_one_line_error(capsys, argv, needle)
            assert still_training or f"ftvs train --resume {run}" in err, err
    assert snapshot(run) == before and not (tmp_path / "m.onnx").exists()


def test_scores_taken_while_training_are_not_compared(runs, tmp_path, capsys):
    """Item 9: metrics.json written mid-training (`training.status: running`) was compared as final."""
    run = copy_run(runs, "scratch", tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["training"]["status"] = "running"
    (run / "metrics.json").write_text(json.dumps(metrics))
    cmp = ["compare", str(runs["baseline"]), str(run), "--out", str(tmp_path / "cmp"), "--formats", "md"]
    err = assert_one_line_error(capsys, cmp, "was scored while it was still training")
    assert f"ftvs evaluate {run}" in err
