"""The progress view (ftvs/study/progress.py): what a run has done, read from history.jsonl and progress.json,
and what is shown when either file is missing."""

import io
import json
import time

from ftvs.study.progress import Progress, fmt_seconds, run_eta, run_progress, training_status


def _history(run_dir, epoch_seconds):
    rows = [
        {"epoch": i + 1, "epoch_seconds": s, "val_macro_f1": 0.5 + i / 10}
        for i, s in enumerate(epoch_seconds)
    ]
    (run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _progress(run_dir, **over):
    doc = {
        "phase": "train",
        "epoch": 3,
        "num_epochs": 5,
        "epochs_done": 2,
        "step_in_epoch": 25,
        "steps_per_epoch": 100,
        "global_step": 225,
        "elapsed_seconds": 45.0,
        "epoch_elapsed_seconds": 5.0,
        "updated_unix": time.time(),
    }
    (run_dir / "progress.json").write_text(json.dumps({**doc, **over}))


def test_without_any_file_the_view_degrades_to_the_epoch_count(tmp_path):
    info = run_progress(tmp_path, 5)
    assert info == {"epochs_done": 0, "num_epochs": 5, "last": None, "epoch_seconds": None, "live": None}
    assert run_eta(info) is None
    assert training_status(info, 5) == ["epoch 1/5"]


def test_history_alone_gives_a_per_epoch_eta(tmp_path):
    _history(tmp_path, [20.0, 22.0])
    info = run_progress(tmp_path, 5)
    assert info["epochs_done"] == 2 and info["epoch_seconds"] == 21.0 and info["live"] is None
    assert run_eta(info) == 3 * 21.0  # the current epoch and two more, at the mean epoch time
    assert training_status(info, 5) == ["epoch 3/5", "val macro-F1 0.600", "21s/epoch", "run ETA 1m03s"]


def test_progress_json_gives_the_step_and_the_time_left_in_the_epoch(tmp_path):
    _history(tmp_path, [20.0, 22.0])
    _progress(tmp_path)
    info = run_progress(tmp_path, None)
    assert info["num_epochs"] == 5  # from progress.json when the registry does not know it
    # 25 of 100 steps in 5 s: 15 s left in this epoch, then two epochs at the mean of 21 s
    assert run_eta(info) == 15.0 + 2 * 21.0
    assert training_status(info, 5)[0] == "epoch 3/5 step 25/100"
    _progress(tmp_path, phase="eval", step_in_epoch=100)
    assert training_status(run_progress(tmp_path, 5), 5)[0] == "epoch 3/5 validating"


def test_progress_json_alone_estimates_the_epoch_time(tmp_path):
    _progress(tmp_path, epoch=1, epochs_done=0, step_in_epoch=10, epoch_elapsed_seconds=2.0)
    info = run_progress(tmp_path, 3)
    assert run_eta(info) == 18.0 + 2 * 20.0  # 0.2 s a step, 100 steps an epoch


def test_stale_or_broken_progress_json_is_ignored(tmp_path):
    _history(tmp_path, [20.0])
    _progress(tmp_path, epoch=1, updated_unix=time.time() - 3600)  # an earlier attempt's, and an old epoch
    assert run_progress(tmp_path, 5)["live"] is not None
    assert run_progress(tmp_path, 5, since_unix=time.time() - 60)["live"] is None
    assert training_status(run_progress(tmp_path, 5), 5)[0] == "epoch 2/5"  # epoch 1 is finished already
    (tmp_path / "progress.json").write_text('{"phase": "tr')  # never happens (atomic writes), must not crash
    assert run_progress(tmp_path, 5)["live"] is None


def test_terminal_output_without_a_tty_prints_a_line_per_epoch():
    out = io.StringIO()
    p = Progress(stream=out)
    p.status("run a | epoch 1/2", 0)
    p.status("run a | epoch 1/2 step 5/10", 0)  # same epoch, within a minute: not repeated
    p.status("run a | epoch 2/2", 1)
    p.say("done a")
    assert out.getvalue().splitlines() == ["  run a | epoch 1/2", "  run a | epoch 2/2", "done a"]
    assert fmt_seconds(None) == "-" and fmt_seconds(59.6) == "1m00s" and fmt_seconds(3700) == "1h01m"
