"""Distillation (ftvs.distill, `ftvs train scratch --teacher RUN_DIR`): the teacher's logits are computed
once and reused from the student's run folder, a changed teacher is refused, A = 1 reproduces plain
training exactly, unlabeled texts train the student, and a study runs a distill arm after its teacher
under `--parallel 2` and resumes a study killed between them without retraining the teacher.

Real tiny runs on the 4-intent data of tests/tiny_runs.py; the teacher is a one-block from-scratch model
(or TF-IDF) trained here."""

import subprocess
from pathlib import Path

import pytest
import torch
from builders import REPRODUCIBLE_HISTORY_KEYS
from safetensors.torch import load_file
from study_tiny import tiny_study_yaml
from test_executors import env, kill_study_when, registry, study_cmd
from tiny_runs import TINY_SCRATCH_FLAGS, assert_one_line_error, prepare_tiny_dataset

from ftvs import distill
from ftvs.cli import main
from ftvs.data import prepare
from ftvs.fileio import read_json, read_jsonl

STUDENT = [
    *TINY_SCRATCH_FLAGS,
    "--num_train_epochs",
    "2",
    "--per_device_train_batch_size",
    "16",
    "--seed",
    "1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The 4-intent data: 80 labelled training texts, 60 of the rest kept unlabeled."""
    root = tmp_path_factory.mktemp("distill")
    prepare_tiny_dataset(root)
    prepare(str(root), root / "data_u", validation_split=0.2, max_train_examples=80, unlabeled_from_rest=60,
            tokenizer="none")  # fmt: skip
    return root / "data_u"


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    argv = ["train", "scratch", "--data", str(data), "--output_dir", str(run), *TINY_SCRATCH_FLAGS]
    assert main([*argv, "--num_train_epochs", "3", "--per_device_train_batch_size", "16"]) == 0
    return run


def train_student(data: Path, run: Path, *extra: str, resume: bool = False) -> int:
    where = ["--resume", str(run)] if resume else ["--output_dir", str(run)]
    return main(["train", "scratch", "--data", str(data), *where, *STUDENT, *extra])


def test_prepare_keeps_the_rest_unlabeled_and_never_a_labelled_text(data, tmp_path):
    meta = read_json(data / "metadata.json")
    texts = [r["text"] for r in read_jsonl(data / "unlabeled.jsonl")]
    labelled = {r["text"] for s in ("train", "val", "test") for r in read_jsonl(data / f"{s}.jsonl")}
    assert meta["unlabeled"]["count"] == len(texts) == 60 == meta["unlabeled"]["from_rest"]
    assert not set(texts) & labelled and len(set(texts)) == len(texts)
    assert all(set(r) == {"text"} for r in read_jsonl(data / "unlabeled.jsonl"))
    # a text file: cleaned (whitespace), de-duplicated, a val text dropped
    val_text = read_jsonl(data / "val.jsonl")[0]["text"]
    (tmp_path / "more.txt").write_text(f"  a   new text\n\na new text\n{val_text}\nanother one\n")
    src = data.parent
    meta2 = prepare(str(src), tmp_path / "d", validation_split=0.2, unlabeled=tmp_path / "more.txt",
                    tokenizer="none")  # fmt: skip
    assert [r["text"] for r in read_jsonl(tmp_path / "d" / "unlabeled.jsonl")] == [
        "a new text",
        "another one",
    ]
    dropped = meta2["unlabeled"]["cleaning"]
    assert (dropped["empty_dropped"], dropped["duplicates_dropped"], dropped["labelled_dropped"]) == (1, 1, 1)
    assert meta2["content_hash"] != meta["content_hash"]  # (other train split: no cap here)


def test_bad_unlabeled_settings_are_one_line_errors(data, tmp_path, capsys):
    src = str(data.parent)
    assert_one_line_error(capsys, ["prepare", src, "--output_dir", str(tmp_path / "a"), "--tokenizer", "none",
                                   "--unlabeled_from_rest", "10"], "--max-train-examples")  # fmt: skip
    assert_one_line_error(capsys, ["prepare", src, "--output_dir", str(tmp_path / "b"), "--tokenizer", "none",
                                   "--unlabeled", str(tmp_path / "missing.txt")], "no such file")  # fmt: skip


def test_cached_teacher_logits_are_reused_and_a_changed_teacher_is_refused_on_resume(
    data, teacher, tmp_path, monkeypatch, capsys
):
    computed = []
    real = distill.compute_teacher_logits

    def counting(*args, **kwargs):  # the real computation, counted: it is where the teacher is loaded
        computed.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "compute_teacher_logits", counting)
    run = tmp_path / "student"
    assert train_student(data, run, "--teacher", str(teacher)) == 0
    info = read_json(run / "teacher.json")
    logits = load_file(run / "teacher_logits.safetensors")["logits"]
    assert len(computed) == 1 and logits.shape == (80 + 60, 4) and info["num_texts"] == 140
    assert info["teacher_identity"] == distill.teacher_identity(teacher)
    # the teacher's logits on the training texts are the teacher's own predictions
    config = read_json(run / "train_summary.json")["distill"]
    assert (config["num_labelled"], config["num_unlabeled"]) == (80, 60)
    assert logits.argmax(-1).unique().numel() > 1

    assert train_student(data, run, "--teacher", str(teacher), resume=True) == 0  # resumed: from the cache
    assert len(computed) == 1

    # a retrained teacher in the same folder is another teacher: the student's cache refuses it
    argv = ["train", "scratch", "--data", str(data), "--output_dir", str(teacher), *TINY_SCRATCH_FLAGS]
    assert main([*argv, "--num_train_epochs", "1", "--seed", "5", "--overwrite_output_dir"]) == 0
    err = assert_one_line_error(
        capsys,
        ["train", "scratch", "--data", str(data), "--resume", str(run), *STUDENT, "--teacher", str(teacher)],
        "changed since",
    )
    assert "--overwrite_output_dir" in err and len(computed) == 1
    # started afresh in the same folder, the student computes the new teacher's logits once, and a
    # second fresh start with another alpha reuses them
    assert train_student(data, run, "--teacher", str(teacher), "--overwrite_output_dir") == 0
    assert len(computed) == 2
    assert read_json(run / "teacher.json")["teacher_identity"] == distill.teacher_identity(teacher)
    argv = ["--teacher", str(teacher), "--distill_alpha", "0.2", "--overwrite_output_dir"]
    assert train_student(data, run, *argv) == 0
    assert len(computed) == 2 and read_json(run / "train_summary.json")["distill"]["alpha"] == 0.2


def test_alpha_one_reproduces_plain_training_exactly(data, tmp_path):
    plain, student = tmp_path / "plain", tmp_path / "student"
    tfidf = tmp_path / "tfidf"
    assert main(["baseline", "--data", str(data), "--output_dir", str(tfidf)]) == 0  # any run can teach
    assert train_student(data, plain, "--no-evaluate") == 0
    assert train_student(data, student, "--no-evaluate", "--teacher", str(tfidf), "--distill_alpha", "1",
                         "--distill_max_unlabeled", "0") == 0  # fmt: skip
    a, b = read_jsonl(plain / "history.jsonl"), read_jsonl(student / "history.jsonl")
    assert [{k: r[k] for k in REPRODUCIBLE_HISTORY_KEYS} for r in a] == [
        {k: r[k] for k in REPRODUCIBLE_HISTORY_KEYS} for r in b
    ]
    wa, wb = (load_file(r / "model" / "model.safetensors") for r in (plain, student))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_teacher_moves_the_student_and_unlabeled_texts_count(data, teacher, tmp_path):
    plain, student = tmp_path / "plain", tmp_path / "student"
    assert train_student(data, plain, "--no-evaluate") == 0
    assert train_student(data, student, "--no-evaluate", "--teacher", str(teacher), "--distill_alpha", "0",
                         "--distill_max_unlabeled", "20") == 0  # fmt: skip
    summary = read_json(student / "train_summary.json")
    assert summary["num_train_examples"] == 80 and summary["num_unlabeled_examples"] == 20
    assert summary["steps_per_epoch"] == 100 // 16 + 1  # 80 labelled + 20 unlabeled texts, batches of 16
    a, b = read_jsonl(plain / "history.jsonl"), read_jsonl(student / "history.jsonl")
    assert a[-1]["train_loss"] != b[-1]["train_loss"]


@pytest.mark.slow  # two study processes with their child processes: minutes on a loaded two-core machine
def test_a_study_runs_the_student_after_its_teacher_and_resumes_a_kill_between_them(tmp_path):
    cfg = tiny_study_yaml(tmp_path, epochs=2, seeds=(0,), distill=True)
    out, log = tmp_path / "study", tmp_path / "driver.log"
    cmd = study_cmd(cfg, out, "--parallel", "2")
    teacher, student = "scratch-f1-s0", "student-f1-s0"

    def teacher_done_student_running() -> bool:
        if not (out / "study.json").is_file():
            return False
        runs = registry(out)["runs"]
        attempts = runs[student].get("attempts") or []  # the entry says "running" before it spawns
        return (
            runs[teacher]["state"] == "completed" and bool(attempts) and attempts[-1]["outcome"] == "running"
        )

    kill_study_when(cmd, log, "the teacher done and its student started", teacher_done_student_running)
    before = registry(out)["runs"][teacher]
    teacher_dir = out / before["run_dir"]
    metrics_mtime = (teacher_dir / "metrics.json").stat().st_mtime_ns

    res = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    after = registry(out)["runs"]
    assert all(e["state"] == "completed" for e in after.values())
    assert (
        len(after[teacher]["attempts"]) == len(before["attempts"])
        and f"{teacher}: done earlier" in res.stdout
    )
    assert (teacher_dir / "metrics.json").stat().st_mtime_ns == metrics_mtime  # not retrained
    s = after[student]
    assert (
        s["teacher"] == teacher
        and s["attempts"][0]["outcome"] == "killed"
        and s["attempts"][-1]["outcome"] == "ok"
    )
    assert s["attempts"][0]["started_at"] >= before["finished_at"]  # it waited for its teacher
    student_dir = out / s["run_dir"]
    info = read_json(student_dir / "teacher.json")
    assert Path(info["teacher_dir"]) == teacher_dir.resolve()
    assert info["teacher_identity"] == distill.teacher_identity(teacher_dir)


def test_compare_puts_the_student_beside_its_teacher_and_plain_scratch(data, tmp_path):
    import ftvs

    tfidf, plain, student = tmp_path / "tfidf", tmp_path / "plain", tmp_path / "student"
    assert main(["baseline", "--data", str(data), "--output_dir", str(tfidf)]) == 0
    assert train_student(data, plain) == 0
    assert train_student(data, student, "--teacher", str(tfidf), "--distill_alpha", "0.2") == 0
    c = ftvs.compare([str(tfidf), str(plain), str(student)], out=str(tmp_path / "cmp"), formats="md")
    (d,) = c["distillation"]
    assert (d["teacher"]["runs"], d["student"]["runs"], d["scratch"]["runs"]) == (
        ["tfidf"],
        ["student"],
        ["plain"],
    )
    assert "distilled" in d["student"]["label"] and (d["num_labelled"], d["num_unlabeled"]) == (80, 60)
    t, s, p = (d[r]["macro_f1"] for r in ("teacher", "student", "scratch"))
    assert d["gap_closed_macro_f1"] == (pytest.approx((s - p) / (t - p)) if t > p else None)
    assert (
        d["vs_scratch"]["b"] == "plain"
        and d["vs_teacher"]["b"] == "tfidf"
        and d["arrows"] == [["tfidf", "student"]]
    )
    assert c["focus"]["by_arm"]["scratch"]["run"] == "plain"  # a student never stands for "from scratch"
    report = Path(c["report"]["md"]).read_text()
    assert "### Distillation" in report and "distilled student" in report and "cost_vs_quality.png" in report
