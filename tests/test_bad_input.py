"""Bad input through the real CLI: every problem is one line naming the problem and the fix, exit code 2,
no traceback, and nothing already written is damaged. Also numerical faults (NaN/Inf) in real training.

Commands run in-process through `ftvs.cli.main` (same code path as the console script, no interpreter
start-up per case); stderr is captured and checked.
"""

import codecs
import csv
import errno
import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import TINY_SCRATCH as TINY
from tiny_runs import flags

from ftvs import checkpoint as ckpt
from ftvs import fileio
from ftvs.cli import main
from ftvs.errors import FtvsError

TINY_SCRATCH = [
    *flags({**TINY, "max_seq_length": 16, "per_device_train_batch_size": 8, "seed": 3}),
    "--disable_tqdm",
]
WORDS = {
    "card": "card lost stolen pin blocked atm",
    "transfer": "transfer pending bank account arrive sent",
    "refund": "refund money back return purchase merchant",
}


def _write_csv(path: Path, rows, header=("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _toy_rows(n=30, classes=WORDS):
    rows = []
    for c, words in classes.items():
        ws = words.split()
        for i in range(n):
            rows.append((f"{ws[i % len(ws)]} {ws[(i * 7 + 1) % len(ws)]} question number {i} about {c}", c))
    return rows


def _snapshot(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _fails(capsys, argv, *needles) -> str:
    """Run `ftvs argv`; assert exit 2 and a single `ftvs: error:` line containing every needle."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    err = out.err.strip()
    assert rc == 2, (rc, out.err[-2000:])
    assert err.startswith("ftvs: error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    REPORT.append((argv[0], err))
    return err


REPORT: list = []


@pytest.fixture(autouse=True, scope="module")
def _print_report():
    yield
    if REPORT:
        print("\n" + "\n".join(f"[{cmd}] {err}" for cmd, err in REPORT))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A prepared 3-class toy set whose source holds one 1 MB text (truncated by prepare)."""
    root = tmp_path_factory.mktemp("toy")
    rows = _toy_rows() + [(("card pin " * 125_000).strip(), "card")]
    _write_csv(root / "src.csv", rows)
    data = root / "data"
    assert main(["prepare", str(root / "src.csv"), "--output_dir", str(data), "--tokenizer", "none"]) == 0
    meta = json.loads((data / "metadata.json").read_text())
    assert meta["cleaning"]["truncated"] == 1
    return data


@pytest.fixture(scope="module")
def toy_run(toy, tmp_path_factory):
    run = tmp_path_factory.mktemp("toyrun") / "run"
    assert (
        main(
            [
                "train",
                "scratch",
                "--data",
                str(toy),
                "--output_dir",
                str(run),
                *TINY_SCRATCH,
                "--num_train_epochs",
                "1",
                "--no-evaluate",
            ]
        )
        == 0
    )
    assert main(["evaluate", str(run)]) == 0
    return run


# --------------------------------------------------------------------------------------------------
# ftvs prepare
# --------------------------------------------------------------------------------------------------


def test_prepare_bad_sources(tmp_path, toy, capsys, monkeypatch):
    t = tmp_path
    out = t / "prepared"  # an existing good data folder: no failure may touch it
    shutil.copytree(toy, out)
    before = _snapshot(out)
    (t / "nodata").mkdir()
    (t / "nodata" / "notes.txt").write_text("hello")
    (t / "empty.csv").write_bytes(b"")
    _write_csv(t / "cols.csv", _toy_rows(), header=("foo", "bar"))
    _write_csv(t / "named.csv", _toy_rows())
    _write_csv(
        t / "nolabels.csv", [(text, ["", "NaN", "None"][i % 3]) for i, (text, _) in enumerate(_toy_rows())]
    )
    _write_csv(t / "unseen" / "train.csv", _toy_rows())
    _write_csv(t / "unseen" / "test.csv", [*_toy_rows(3), ("a brand new kind of question", "zebra")])
    _write_csv(t / "oneclass.csv", _toy_rows(classes={"card": WORDS["card"]}))
    _write_csv(
        t / "rare.csv", _toy_rows() + [("one rare question", "rare"), ("another rare question", "rare")]
    )
    cases = [
        (["prepare", t / "nope" / "train.csv"], "data path not found", "check the path"),
        (["prepare", t / "nodata"], "has no train data", "add a train file"),
        (["prepare", t / "empty.csv"], "is empty", "point to a file"),
        (["prepare", t / "cols.csv"], "could not find a text column", "--text-column"),
        (
            ["prepare", t / "named.csv", "--text-column", "txt"],
            "has no column 'txt'",
            "(did you mean 'text'?)",
        ),
        (
            ["prepare", t / "named.csv", "--label-column", "labl"],
            "has no column 'labl'",
            "(did you mean 'label'?)",
        ),
        (["prepare", t / "nolabels.csv"], "are empty/NaN/None", "--label-column"),
        (["prepare", t / "unseen"], "unseen in train: 'zebra'", "drop those rows"),
        (["prepare", t / "oneclass.csv"], "one class only", "at least 2"),
        (["prepare", t / "rare.csv"], "'rare' has only 2", "drop or merge that class"),
    ]
    for argv, *needles in cases:
        _fails(capsys, [*argv, "--output_dir", out, "--tokenizer", "none"], *needles)
        assert _snapshot(out) == before, argv

    # Hugging Face name while offline and not cached: fails fast, names offline alternatives
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    _fails(
        capsys,
        ["prepare", "hf:some-user/surely-not-a-cached-dataset", "--output_dir", out, "--tokenizer", "none"],
        "could not download or load Hugging Face dataset",
        "20newsgroups",
    )
    assert time.monotonic() - start < 60
    assert _snapshot(out) == before


def test_prepare_repairs_invalid_utf8_and_missing_labels(tmp_path, capsys):
    rows = _toy_rows()
    lines = ["text,label"] + [f"{t},{c}" for t, c in rows]
    body = "\n".join(lines).encode()
    bad = body.replace(b"question number 1 about card", b"question \xff\xfe number 1 about card").replace(
        b"question number 2 about refund", b"question \xc3 number 2 about refund"
    )
    bad += b"\nan unlabelled question,\nanother one,NaN\n"
    (tmp_path / "bad.csv").write_bytes(bad)
    assert (
        main(
            [
                "prepare",
                str(tmp_path / "bad.csv"),
                "--output_dir",
                str(tmp_path / "d"),
                "--tokenizer",
                "none",
                "--encoding",
                "utf-8",
            ]
        )
        == 0
    )  # UTF-8 as the fallback: invalid bytes are repaired and counted
    printed = capsys.readouterr().out
    meta = json.loads((tmp_path / "d" / "metadata.json").read_text())
    assert meta["cleaning"]["invalid_utf8_repaired"] == 2 and meta["cleaning"]["missing_label_dropped"] == 2
    assert "invalid_utf8_repaired=2" in printed and "missing_label_dropped=2" in printed
    texts = [
        json.loads(x)["text"]
        for s in ("train", "val", "test")
        for x in (tmp_path / "d" / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    for repaired in ("question \ufffd number 1 about card", "question \ufffd number 2 about refund"):
        assert any(t.endswith(repaired) for t in texts), repaired


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["prepare", str(tmp_path / "nope.csv"), "--output_dir", str(tmp_path / "o"), "--tokenizer", "none"]
    _fails(capsys, argv, "data path not found")
    with pytest.raises(FtvsError, match="data path not found"):  # uncaught: Python prints the traceback
        main(["--debug", *argv])


# --------------------------------------------------------------------------------------------------
# ftvs train / evaluate / predict
# --------------------------------------------------------------------------------------------------


def test_huge_text_trains_and_predicts(toy_run, tmp_path, capsys):
    big = tmp_path / "big.txt"
    big.write_text(("transfer pending " * 60_000) + "\n" + "my card was stolen\n")
    capsys.readouterr()
    assert main(["predict", str(toy_run), "--file", str(big)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].endswith("my card was stolen")
    assert lines[0].split("\t")[0] in WORDS


def test_train_config_errors(toy, toy_run, tmp_path, capsys):
    run_before = _snapshot(toy_run)
    new = tmp_path / "new"
    base = ["train", "scratch", "--data", toy, "--output_dir", new, *TINY_SCRATCH]
    (tmp_path / "cfg.yaml").write_text("learning_rat: 0.001\nnum_train_epochs: 1\n")
    cases = [
        ([*base, "--learning_rate", "-0.001"], "invalid learning_rate=-0.001: must be > 0", "use e.g. 1e-3"),
        ([*base, "--max_seq_length", "0"], "invalid max_seq_length=0: must be >= 1", "positive integer"),
        ([*base, "--preset", "smal"], "invalid preset='smal': unknown preset", "(did you mean 'small'?)"),
        (
            [*base, "--config", tmp_path / "cfg.yaml"],
            "unknown config file key 'learning_rat'",
            "(did you mean 'learning_rate'?)",
        ),
        ([*base, "--pooling", "maximum"], "invalid pooling='maximum'", "(did you mean 'max'?)"),
        (
            ["train", "scratch", "--data", tmp_path / "nodata", "--output_dir", new],
            "not a prepared data folder",
            "ftvs prepare",
        ),
        # resuming with a different config
        (
            ["train", "scratch", "--resume", toy_run, "--learning_rate", "0.5"],
            "--resume with a different config",
            "learning_rate",
            "rerun with the original settings",
        ),
        # a second training into a finished run without --resume
        (
            ["train", "scratch", "--data", toy, "--output_dir", toy_run, *TINY_SCRATCH],
            "holds a finished scratch run",
            "--overwrite_output_dir",
        ),
        # evaluate on data with another label set
        (
            ["evaluate", toy_run, "--data", tmp_path / "other"],
            "label set of",
            "differs from the model's",
            "evaluate on the data it was trained on",
        ),
    ]
    _write_csv(tmp_path / "other.csv", _toy_rows(classes={"a": "x y z", "b": "u v w"}))
    assert (
        main(
            [
                "prepare",
                str(tmp_path / "other.csv"),
                "--output_dir",
                str(tmp_path / "other"),
                "--tokenizer",
                "none",
            ]
        )
        == 0
    )
    for argv, *needles in cases:
        _fails(capsys, argv, *needles)
        assert _snapshot(toy_run) == run_before, argv
    assert not (new / "config.yaml").exists()


def test_encoder_only_model_is_refused(toy, tmp_path, capsys):
    from builders import build_tiny_tokenizer
    from transformers import BertConfig, BertModel

    folder = tmp_path / "tiny-bert"
    tok = build_tiny_tokenizer()
    BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(folder)
    tok.save_pretrained(folder)
    run = tmp_path / "run"
    _fails(
        capsys,
        ["train", "finetune", "--data", toy, "--output_dir", run, "--model_name_or_path", folder],
        "is not a decoder-only language model",
        "model_type 'bert'",
        "use e.g.",
    )
    assert not (run / "config.yaml").exists() and not (run / "checkpoint").exists()


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(toy, tmp_path, capsys, monkeypatch):
    """The disk fills up in the middle of the second checkpoint: fsync of checkpoint.tmp/optimizer.safetensors
    fails with ENOSPC (as it does on a full disk with delayed allocation)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to map a file descriptor to its path")
    run = tmp_path / "run"
    argv = [
        "train",
        "scratch",
        "--data",
        toy,
        "--output_dir",
        run,
        *TINY_SCRATCH,
        "--num_train_epochs",
        "1",
        "--save_steps",
        "2",
        "--no-evaluate",
    ]
    real_fsync = fileio.os.fsync
    optimizer_saves = []

    def fsync(fd):
        path = Path(fileio.os.readlink(f"/proc/self/fd/{fd}"))
        if path.parent.name == "checkpoint.tmp" and path.name.startswith(".optimizer.safetensors."):
            optimizer_saves.append(path)
            if len(optimizer_saves) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    err = _fails(
        capsys,
        argv,
        f"disk full while writing {run / 'checkpoint.tmp' / 'optimizer.safetensors'}; free space",
        "--resume",
    )
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    assert not list((run / "checkpoint.tmp").glob(".*.tmp"))  # the torn temp file was removed
    loaded = ckpt.load_checkpoint(run)  # the previous checkpoint survived and loads
    assert loaded["state"]["global_step"] == 2 and loaded["state"]["batches_done"] == 2, err
    assert main(["train", "scratch", "--resume", str(run)]) == 0
    assert json.loads((run / "train_summary.json").read_text())["status"] == "completed"


def test_kill_between_the_two_renames_of_a_checkpoint_swap_resumes(toy_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    (run / "checkpoint").rename(run / "checkpoint.old")  # replace_dir died after its first os.replace
    shutil.copytree(run / "checkpoint.old", run / "checkpoint.tmp")
    assert main(["train", "scratch", "--resume", str(run), "--no-evaluate"]) == 0
    assert ckpt.has_checkpoint(run) and not (run / "checkpoint.old").exists()


# --------------------------------------------------------------------------------------------------
# Numerical faults (real training, absurd learning rate, no mocks)
# --------------------------------------------------------------------------------------------------


def _finite(tensors) -> bool:
    return all(torch.isfinite(t).all() for t in tensors.values())


def test_nan_loss_stops_with_the_step_and_a_fix(toy, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "scratch",
        "--data",
        toy,
        "--output_dir",
        run,
        *TINY_SCRATCH,
        "--learning_rate",
        "1e6",
        "--warmup_ratio",
        "0",
        "--save_steps",
        "1",
        "--num_train_epochs",
        "2",
    ]
    err = _fails(
        capsys,
        argv,
        "NaN/Inf at optimizer step",
        "lower --learning_rate (now 1e+06)",
        "--skip_nan_steps N",
        "no epoch finished, so no model was saved",
    )
    step = int(re.search(r"optimizer step (\d+)", err).group(1))
    assert 1 <= step < 5  # the first bad step, not the next logging/check point (logging_steps=20)
    summary = json.loads((run / "train_summary.json").read_text())
    assert (
        summary["status"] == "failed"
        and summary["stop_reason"] == "nonfinite"
        and summary["failed_step"] == step
    )
    loaded = ckpt.load_checkpoint(run)  # the last checkpoint predates the fault: finite weights
    assert loaded["state"]["global_step"] < step and _finite(loaded["model"])


def test_skip_nan_steps_tolerates_a_few_then_keeps_the_best_model(toy, tmp_path, capsys):
    n_train = json.loads((toy / "metadata.json").read_text())["splits"]["train"]["count"]
    steps_per_epoch = math.ceil(n_train / 8)
    run = tmp_path / "run"
    argv = [
        "train",
        "scratch",
        "--data",
        toy,
        "--output_dir",
        run,
        *TINY_SCRATCH,
        "--learning_rate",
        "1e6",
        "--warmup_ratio",
        "0",
        "--num_train_epochs",
        "3",
        "--skip_nan_steps",
        str(steps_per_epoch),
    ]
    _fails(
        capsys, argv, "NaN/Inf at optimizer step", "(epoch 2)", "the best model so far (epoch 1) is kept in"
    )
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["status"] == "failed" and summary["best_epoch"] == 1
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1]
    assert main(["evaluate", str(run)]) == 0  # the kept model loads and scores; metrics say the run failed
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["status"] == "failed"


# --------------------------------------------------------------------------------------------------
# --output_dir: nothing of the user's is ever replaced (issue #13, items 2, 3, 7)
# --------------------------------------------------------------------------------------------------


def test_user_files_in_output_dir_are_never_replaced(toy, toy_run, tmp_path, capsys):
    user = tmp_path / "u"
    (user / "model").mkdir(parents=True)
    (user / "model" / "p.txt").write_text("x")
    (user / "notes.txt").write_text("mine")
    before = _snapshot(user)
    scratch = ["train", "scratch", "--data", toy, *TINY_SCRATCH, "--num_train_epochs", "1", "--no-evaluate"]
    _fails(capsys, [*scratch, "--output_dir", user], "not an ftvs run's", "model/", "notes.txt")
    _fails(capsys, [*scratch, "--output_dir", user, "--overwrite_output_dir"], "not an ftvs run's")
    _fails(capsys, ["baseline", "--data", toy, "--output_dir", user], "not an ftvs run's", "model/")
    assert _snapshot(user) == before
    # a file beside a run's files is just as much in the way
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    (run / "mine.csv").write_text("a,b\n")
    _fails(capsys, [*scratch, "--output_dir", run, "--overwrite_output_dir"], "mine.csv")
    # another kind of run
    _fails(capsys, ["baseline", "--data", toy, "--output_dir", toy_run], "holds a 'scratch' run")
    # --output_dir that is a file
    _fails(capsys, [*scratch, "--output_dir", run / "mine.csv"], "is a file")
    _fails(capsys, ["baseline", "--data", toy, "--output_dir", run / "mine.csv"], "is a file")


def test_finished_runs_are_replaced_only_with_overwrite_output_dir(toy, tmp_path, capsys):
    out = tmp_path / "bl"
    assert main(["baseline", "--data", str(toy), "--output_dir", str(out)]) == 0
    before = _snapshot(out)
    _fails(
        capsys,
        ["baseline", "--data", toy, "--output_dir", out],
        "finished baseline run",
        "--overwrite_output_dir",
    )
    assert _snapshot(out) == before
    (out / "metrics.json").write_text("{}")  # replaced, not kept, by the new run
    assert main(["baseline", "--data", str(toy), "--output_dir", str(out), "--overwrite_output_dir"]) == 0
    assert json.loads((out / "metrics.json").read_text())["test"]


def test_output_dir_inside_the_data_folder_is_refused(toy, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(toy, data)
    scratch = ["train", "scratch", "--data", data, *TINY_SCRATCH]
    _fails(capsys, [*scratch, "--output_dir", data / "run"], "inside the data folder")
    _fails(capsys, [*scratch, "--output_dir", data], "inside the data folder")
    _fails(capsys, ["baseline", "--data", data, "--output_dir", data / "bl"], "inside the data folder")
    # and `prepare` never replaces a data folder that holds anything else (a run put there earlier)
    (data / "run").mkdir()
    (data / "run" / "metrics.json").write_text("{}")
    src = tmp_path / "src.csv"
    _write_csv(src, _toy_rows())
    _fails(capsys, ["prepare", src, "--output_dir", data, "--tokenizer", "none"], "run/")
    assert (data / "run" / "metrics.json").is_file()


# --------------------------------------------------------------------------------------------------
# Types of config values (issue #13, item 4)
# --------------------------------------------------------------------------------------------------


def test_config_values_of_the_wrong_type_are_one_line_errors(toy, tmp_path, capsys):
    base = ["train", "scratch", "--data", toy, "--output_dir", tmp_path / "run", *TINY_SCRATCH]
    for text, needles in (
        ('num_train_epochs: "one"\n', ("invalid num_train_epochs='one': must be an integer", "use e.g. 10")),
        ("dropout: true\n", ("invalid dropout=True: must be a number",)),
        ("compile: yes please\n", ("invalid compile='yes please': must be one of auto, yes, no",)),
        ("lora_target_modules: {a: 1}\n", ("invalid lora_target_modules",)),
        ("max_seq_length: 1.5\n", ("invalid max_seq_length=1.5: must be an integer",)),
    ):
        (tmp_path / "cfg.yaml").write_text(text)
        _fails(capsys, [*base, "--config", tmp_path / "cfg.yaml"], *needles)
    # numbers YAML reads as text are taken as numbers
    (tmp_path / "cfg.yaml").write_text("learning_rate: 1e-3\nnum_train_epochs: '1'\n")
    assert main([*map(str, base), "--config", str(tmp_path / "cfg.yaml"), "--no-evaluate"]) == 0
    cfg = __import__("yaml").safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["learning_rate"] == 0.001 and cfg["num_train_epochs"] == 1
    _fails(
        capsys,
        [
            "study",
            "--preset",
            "quick",
            "--set",
            "train.max_seq_length=abc",
            "--output_dir",
            tmp_path / "study",
            "--dry_run",
        ],
        "invalid max_seq_length='abc': must be an integer",
    )
    assert not (tmp_path / "study").exists()


# --------------------------------------------------------------------------------------------------
# Data changed under a run; split-named evaluation files (issue #13, items 5, 8)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    """A small prepared folder and a finished, evaluated scratch run on it (both owned by these tests)."""
    root = tmp_path_factory.mktemp("datarun")
    _write_csv(root / "src.csv", _toy_rows(20))
    data = root / "data"
    assert main(["prepare", str(root / "src.csv"), "--output_dir", str(data), "--tokenizer", "none"]) == 0
    run = root / "run"
    assert (
        main(
            [
                "train",
                "scratch",
                "--data",
                str(data),
                "--output_dir",
                str(run),
                *TINY_SCRATCH,
                "--num_train_epochs",
                "1",
            ]
        )
        == 0
    )
    return root, data, run


def test_other_data_needs_an_explicit_data_flag(data_run, tmp_path, capsys):
    root, data, run = data_run
    trained_hash = json.loads((data / "metadata.json").read_text())["content_hash"]
    assert yaml_load(run / "config.yaml")["resolved"]["data_content_hash"] == trained_hash
    assert json.loads((run / "train_summary.json").read_text())["data_content_hash"] == trained_hash
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    metrics_before = (moved / "metrics.json").read_bytes()
    # `prepare` rewrites the data folder with another split
    assert (
        main(
            [
                "prepare",
                str(root / "src.csv"),
                "--output_dir",
                str(data),
                "--tokenizer",
                "none",
                "--seed",
                "7",
            ]
        )
        == 0
    )
    _fails(capsys, ["evaluate", moved], "changed since", "--data")
    _fails(capsys, ["train", "scratch", "--resume", moved], "changed since", "to resume on this other data")
    assert (moved / "metrics.json").read_bytes() == metrics_before
    capsys.readouterr()
    assert main(["evaluate", str(moved), "--data", str(data)]) == 0
    err = capsys.readouterr().err
    assert "is other data than" in err and len(err.strip().splitlines()) == 1, err
    # back to the original data: nothing to refuse
    assert main(["prepare", str(root / "src.csv"), "--output_dir", str(data), "--tokenizer", "none"]) == 0
    assert main(["evaluate", str(run)]) == 0


def test_compare_refuses_runs_scored_on_other_test_texts(data_run, tmp_path, capsys):
    root, data, run = data_run
    other = tmp_path / "other"  # the same labels in the same order, other texts
    shutil.copytree(data, other)
    rows = [json.loads(line) for line in (other / "test.jsonl").read_text().splitlines()]
    (other / "test.jsonl").write_text(
        "".join(json.dumps({**r, "text": r["text"] + " extra"}) + "\n" for r in rows)
    )
    run2 = tmp_path / "run2"
    shutil.copytree(run, run2)
    assert main(["evaluate", str(run2), "--data", str(other)]) == 0
    _fails(capsys, ["compare", run, run2, "--out", tmp_path / "cmp", "--no-report"], "different test texts")


def test_evaluate_other_split_keeps_the_test_scores(data_run, tmp_path, capsys):
    root, data, run = data_run
    run = shutil.copytree(run, tmp_path / "run")
    test_metrics = (run / "metrics.json").read_bytes()
    test_predictions = (run / "predictions.json").read_bytes()
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    assert (run / "metrics.json").read_bytes() == test_metrics
    assert (run / "predictions.json").read_bytes() == test_predictions
    val = json.loads((run / "metrics_val.json").read_text())
    assert val["split"] == "val" and json.loads((run / "predictions_val.json").read_text())["split"] == "val"
    assert (run / "confusion_matrix_val.png").is_file()
    # a run with split-named results is still a run to retrain into (with --overwrite_output_dir)
    assert (
        main(
            [
                "train",
                "scratch",
                "--data",
                str(data),
                "--output_dir",
                str(run),
                *TINY_SCRATCH,
                "--num_train_epochs",
                "1",
                "--no-evaluate",
                "--overwrite_output_dir",
            ]
        )
        == 0
    )
    assert not (run / "metrics_val.json").exists()


def test_bad_sizes_are_one_line_errors(data_run, tmp_path, capsys):
    root, data, run = data_run
    _fails(capsys, ["evaluate", run, "--batch-size", "0"], "--batch-size 0 must be at least 1")
    _fails(
        capsys,
        [
            "train",
            "scratch",
            "--data",
            data,
            "--output_dir",
            tmp_path / "r",
            *TINY_SCRATCH,
            "--max_seq_length",
            "100000000",
        ],
        "invalid max_seq_length=100000000",
        "from-scratch model's 8192 positions",
    )
    (tmp_path / "file").write_text("x")
    _fails(capsys, ["compare", run, "--out", tmp_path / "file"], "--out", "is a file")
    _fails(capsys, ["report", run, "--out", tmp_path / "file"], "--out", "is a file")
    _fails(
        capsys,
        ["prepare", root / "src.csv", "--output_dir", tmp_path / "file", "--tokenizer", "none"],
        "is a file",
    )


def test_finetune_max_seq_length_is_capped_at_the_model_positions(data_run, tiny_llama_dir, tmp_path, capsys):
    root, data, run = data_run
    _fails(
        capsys,
        [
            "train",
            "finetune",
            "--data",
            data,
            "--output_dir",
            tmp_path / "r",
            "--model",
            tiny_llama_dir,
            "--max_seq_length",
            "100000000",
            "--disable_tqdm",
        ],
        "invalid max_seq_length=100000000: more than the model's 256 positions",
        "use at most 256",
    )


def yaml_load(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())


# --------------------------------------------------------------------------------------------------
# Columns and encodings of data files (issue #13, items 6, 9)
# --------------------------------------------------------------------------------------------------


def test_duplicate_column_names_are_refused(tmp_path, capsys):
    rows = _toy_rows(10)
    _write_csv(tmp_path / "dup.csv", [(t, c, c) for t, c in rows], header=("text", "label", "label"))
    (tmp_path / "dup.tsv").write_text("text\ttext\tlabel\n" + "".join(f"{t}\t{t}\t{c}\n" for t, c in rows))
    (tmp_path / "dup.jsonl").write_text(
        "".join(f'{{"text": "{t}", "label": "{c}", "label": "x"}}\n' for t, c in rows)
    )
    for name, column in (("dup.csv", "'label'"), ("dup.tsv", "'text'"), ("dup.jsonl", "'label'")):
        _fails(
            capsys,
            ["prepare", tmp_path / name, "--output_dir", tmp_path / "out", "--tokenizer", "none"],
            "duplicate column names",
            column,
        )
    assert not (tmp_path / "out").exists()


def _prepared_texts(folder: Path) -> list[str]:
    return [
        json.loads(x)["text"]
        for s in ("train", "val", "test")
        for x in (folder / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def test_encodings_are_detected_and_recorded(tmp_path, capsys):
    rows = [(f"{t} café número {i}", c) for i, (t, c) in enumerate(_toy_rows(10))]
    text = "text,label\n" + "".join(f"{t},{c}\n" for t, c in rows)
    cases = {  # file bytes -> (encoding recorded, notice expected)
        "utf16.csv": (text.encode("utf-16"), "utf-16", False),
        "utf16be.csv": (codecs.BOM_UTF16_BE + text.encode("utf-16-be"), "utf-16", False),
        "utf32.csv": (text.encode("utf-32"), "utf-32", False),
        "bom.csv": (text.encode("utf-8-sig"), "utf-8-sig", False),
        "plain.csv": (text.encode("utf-8"), "utf-8", False),
        "latin1.csv": (text.encode("latin-1"), "iso8859-1", True),
    }
    for name, (data, recorded, notice) in cases.items():
        (tmp_path / name).write_bytes(data)
        out = tmp_path / name.replace(".csv", "")
        capsys.readouterr()
        assert (
            main(["prepare", str(tmp_path / name), "--output_dir", str(out), "--tokenizer", "none"]) == 0
        ), name
        err = capsys.readouterr().err
        meta = json.loads((out / "metadata.json").read_text())
        assert meta["encoding"] == recorded and meta["text_column"] == "text", (name, meta["encoding"])
        assert meta["cleaning"]["invalid_utf8_repaired"] == 0
        assert sorted(_prepared_texts(out)) == sorted(t for t, _ in rows), name
        assert ("is not UTF-8; read it as iso8859-1" in err) == notice, (name, err)
    # another fallback chosen by the user
    (tmp_path / "cp.csv").write_bytes(text.replace("café", "café – ok").encode("cp1252"))
    capsys.readouterr()
    assert (
        main(
            [
                "prepare",
                str(tmp_path / "cp.csv"),
                "--output_dir",
                str(tmp_path / "cp"),
                "--tokenizer",
                "none",
                "--encoding",
                "cp1252",
            ]
        )
        == 0
    )
    assert "read it as cp1252" in capsys.readouterr().err
    assert any("café – ok" in t for t in _prepared_texts(tmp_path / "cp"))
    _fails(
        capsys,
        [
            "prepare",
            tmp_path / "cp.csv",
            "--output_dir",
            tmp_path / "x",
            "--tokenizer",
            "none",
            "--encoding",
            "klingon",
        ],
        "unknown --encoding 'klingon'",
    )


# --------------------------------------------------------------------------------------------------
# Issue 23 (second hostile pass), part B: tracebacks and unclear errors
# --------------------------------------------------------------------------------------------------


def test_a_scratch_config_with_keys_it_does_not_take_is_one_line(toy_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    path = run / "model" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "auto_map": {"AutoConfig": "evil.Config"}}))
    for argv in (["evaluate", run], ["predict", run, "card lost"], ["export", run, "--no-check"]):
        _fails(capsys, argv, "config.json", "auto_map", "valid keys: vocab_size")
    del config["vocab_size"]
    path.write_text(json.dumps(config))
    _fails(capsys, ["evaluate", run], "required keys missing: vocab_size")
    assert not (run / "export").exists()


def test_run_folders_that_do_not_exist_are_named(tmp_path, capsys):
    gone = tmp_path / "runs" / "doesnotexist"
    for argv in (
        ["evaluate", gone],
        ["predict", gone, "x"],
        ["predict", gone, "x", "--onnx"],
        ["export", gone],
    ):
        _fails(capsys, argv, f"{gone} does not exist")
    _fails(capsys, ["train", "scratch", "--resume", gone], f"--resume {gone} does not exist")
    assert not gone.exists()


def test_report_to_none_or_all_beside_tracker_names_is_explained(toy, tmp_path, capsys):
    train = ["train", "scratch", "--data", toy, "--output_dir", tmp_path / "r", *TINY_SCRATCH]
    err = _fails(capsys, [*train, "--report_to", "none,tensorboard"], "'none' stands alone")
    assert "did you mean" not in err
    _fails(capsys, [*train, "--report_to", "tensorboard,all"], "'all' stands alone")
    assert not (tmp_path / "r").exists()


def test_an_infinite_class_weight_is_refused_before_training(toy, tmp_path, capsys):
    weights = tmp_path / "w.json"
    weights.write_text('{"card": Infinity}')
    run = tmp_path / "r"
    train = ["train", "scratch", "--data", toy, "--output_dir", run, *TINY_SCRATCH, "--num_train_epochs", "1"]
    err = _fails(capsys, [*train, "--class_weights", weights], "'card'", "finite number > 0", "inf")
    assert "learning_rate" not in err
    assert not (run / "history.jsonl").exists()


def test_prepare_says_how_many_duplicates_it_dropped(tmp_path, capsys):
    rows = [(f"{c} {c}", c) for _ in range(100) for c in "abc"]  # 300 rows, 3 distinct texts
    src = _write_csv(tmp_path / "dups.csv", rows)
    _fails(
        capsys,
        ["prepare", src, "--output_dir", tmp_path / "out", "--tokenizer", "none"],
        "class 'a' has only 1 training example",
        "297 duplicate text(s) were dropped",
        "3 distinct left",
    )


def test_python_api_names_unknown_keywords_and_missing_runs(toy, tmp_path):
    import ftvs

    with pytest.raises(FtvsError, match=r"ftvs.baseline\(\) got an unknown keyword 'bogus'.*valid.*C_grid"):
        ftvs.baseline(toy, tmp_path / "b", bogus=1)
    with pytest.raises(FtvsError, match=r"unknown keyword 'max_train'.*did you mean 'max_train_examples'"):
        ftvs.prepare("sms_spam", tmp_path / "p", max_train=3)
    with pytest.raises(FtvsError, match=r"ftvs.evaluate\(\) got an unknown keyword 'bogus'.*run_dir, split"):
        ftvs.evaluate(tmp_path, bogus=1)
    with pytest.raises(FtvsError, match=r"unknown keyword 'outdir' \(did you mean 'output_dir'\?\)"):
        ftvs.study(preset="quick", outdir=tmp_path / "s")
    with pytest.raises(FtvsError, match=r"ftvs.compare\(\) needs run_dirs.*got None"):
        ftvs.compare(None, out=tmp_path / "c")
    with pytest.raises(FtvsError, match=r"ftvs.compare\(\) needs out"):
        ftvs.compare([str(tmp_path)], out=None)
    assert not any((tmp_path / d).exists() for d in ("b", "p", "c", "s"))


@pytest.fixture(scope="module")
def exported(toy_run, tmp_path_factory):
    """A copy of the toy run, exported to ONNX."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(toy_run, run)
    assert main(["export", str(run), "--no-check"]) == 0
    return run


def test_an_onnx_graph_is_checked_before_it_runs(exported, toy, tmp_path, capsys):
    graph = exported / "export" / "model.onnx"
    capsys.readouterr()
    assert main(["predict", str(exported), "--onnx", "card lost", "refund please"]) == 0  # texts after --onnx
    assert len(capsys.readouterr().out.splitlines()) == 2
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(graph.read_bytes()[:5000])  # truncated
    text = tmp_path / "notes.txt"
    text.write_text("not a graph\n")
    for f in (broken, text):
        _fails(capsys, ["predict", exported, "x", "--onnx_file", f], f"{f} is not a readable ONNX graph")
    # the graph of another run (another vocabulary) is refused, not run with out-of-range ids
    other = tmp_path / "other"
    train = [
        "train",
        "scratch",
        "--data",
        toy,
        "--output_dir",
        other,
        *TINY_SCRATCH,
        "--num_train_epochs",
        "1",
    ]
    assert main([str(a) for a in [*train, "--bpe_vocab_size", "200", "--no-evaluate"]]) == 0
    _fails(capsys, ["predict", other, "card", "--onnx_file", graph], "exported from another model", "other")
    # a negative tolerance is a bad flag, refused before anything is exported
    before = _snapshot(exported / "export")
    _fails(capsys, ["export", exported, "--tolerance", "-1"], "--tolerance -1 must be a number >= 0")
    assert _snapshot(exported / "export") == before


def test_a_baseline_has_no_onnx_graph_and_is_told_what_to_do(toy, tmp_path, capsys):
    run = tmp_path / "bl"
    assert main(["baseline", "--data", str(toy), "--output_dir", str(run)]) == 0
    err = _fails(capsys, ["predict", run, "x", "--onnx"], "is a TF-IDF baseline", "predict without --onnx")
    assert "ftvs export" not in err
    _fails(capsys, ["export", run], "is a TF-IDF baseline")


def _registry(**runs) -> dict:
    return {"format": "ftvs-study", "version": 1, "runs": runs, "data": {}, "stages": {}}


def test_a_broken_study_json_names_the_wrong_key(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: broken\ndata: {source: sms_spam, tokenizer: none}\narms: [{name: tfidf, arm: baseline}]\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        ([], "the file must be a JSON object, not a list"),
        ({**_registry(), "runs": "oops"}, "key 'runs' must be an object, not a string"),
        (_registry(a={"attempts": 3}), "runs['a']['attempts'] must be a list, not an integer"),
        (_registry(a={"state": "weird"}), "runs['a']['state'] is 'weird'"),
    ]
    for doc, needle in cases:
        (out / "study.json").write_text(json.dumps(doc))
        _fails(
            capsys, ["study", study, "--output_dir", out], "study.json is not a valid study registry", needle
        )
        if isinstance(doc, dict):
            _fails(capsys, ["compare", out / "study.json", "--out", tmp_path / "c"], needle)
    (out / "study.json").write_text('{"runs": "oops"}')  # not a registry: compare says what it needs
    _fails(capsys, ["compare", out / "study.json", "--out", tmp_path / "c"], "lists no runs", "'runs'")
    assert json.loads((out / "study.json").read_text()) == {"runs": "oops"}  # nothing rewritten
