"""Exact resume after SIGKILL, and the safety of what a run writes.

A real `python -m ftvs train ...` subprocess is killed with SIGKILL at three seeded-random points (one
after the other, each time continued with `--resume RUN_DIR`); the finished run must match an
uninterrupted one: every history.jsonl train/val number, the best model's weights and its test
predictions (`ftvs evaluate`). Also: a locked run dir is a one-line error with exit code 2 (the checkpoint
files themselves: test_checkpoint.py).
"""

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from builders import REPRODUCIBLE_HISTORY_KEYS, intents_csv_dir
from safetensors.torch import load_file
from tiny_runs import TINY_SCRATCH, assert_one_line_error, child_env, flags

from ftvs.cli import main

ROOT = Path(__file__).resolve().parents[1]

# small enough that a run is a few seconds of compute on a shared 2-core machine
SCRATCH_FLAGS = flags({**TINY_SCRATCH, "bpe_vocab_size": 400, "learning_rate": 1e-2})
COMMON_FLAGS = [
    "--num_train_epochs",
    "3",
    "--per_device_train_batch_size",
    "32",
    "--per_device_eval_batch_size",
    "256",
    "--seed",
    "7",
    "--save_steps",
    "1",
    "--disable_tqdm",
    "--no-evaluate",
    "--mixed_precision",
    "no",
]


def _cmd(arm_args, run_dir, resume=False):
    out = ["--resume", str(run_dir)] if resume else ["--output_dir", str(run_dir)]
    return [sys.executable, "-m", "ftvs", "train", *arm_args, *out]


@pytest.fixture(scope="module")
def small_b77(tmp_path_factory):
    """A small prepared Banking77-format set (real newsgroup posts, 20 classes): 600 train (stratified),
    ~150 val, 200 test."""
    import csv

    from ftvs.data import prepare

    root = tmp_path_factory.mktemp("b77small")
    rng = random.Random(0)
    for name, n in (("train", 1500), ("test", 200)):
        with open(intents_csv_dir() / f"{name}.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        body = rows[1:]
        rng.shuffle(body)
        with open(root / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([rows[0], *body[:n]])
    prepare(str(root), root / "data", max_train_examples=600, tokenizer="none")
    return root / "data"


def _checkpoint_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "checkpoint" / "state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return -1


def _kill_at(cmd, run_dir: Path, target_step: int, delay: float, timeout=240) -> str:
    """Start `cmd`, wait until a checkpoint at >= target_step exists, wait `delay` more, SIGKILL."""
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    try:
        while _checkpoint_step(run_dir) < target_step:
            if proc.poll() is not None:
                out = proc.stdout.read()
                assert proc.returncode == 0, out[-3000:]
                return "finished before the kill"
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return "killed" if proc.returncode == -signal.SIGKILL else f"exited {proc.returncode}"


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]


def _assert_same_run(ref: Path, run: Path, tmp_path: Path):
    h_ref, h_run = _history(ref), _history(run)
    assert [r["epoch"] for r in h_run] == [r["epoch"] for r in h_ref]
    for a, b in zip(h_ref, h_run):
        for key in REPRODUCIBLE_HISTORY_KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-6, rel=0), (a["epoch"], key, a[key], b[key])
    w_ref = load_file(next((ref / "model").glob("*.safetensors")))
    w_run = load_file(next((run / "model").glob("*.safetensors")))
    assert w_ref.keys() == w_run.keys()
    for k in w_ref:
        assert torch.allclose(w_ref[k], w_run[k], atol=1e-6, rtol=0), k
    for d in (ref, run):
        assert main(["evaluate", str(d), "--batch-size", "256"]) == 0
    p_ref = json.loads((ref / "predictions.json").read_text())
    p_run = json.loads((run / "predictions.json").read_text())
    assert p_run["y_pred"] == p_ref["y_pred"]
    assert p_run["confidence"] == pytest.approx(p_ref["confidence"], abs=1e-6)
    s = json.loads((run / "train_summary.json").read_text())
    assert s["status"] == "completed" and s["epochs_run"] == 3


def _train_in_process(argv):
    """`ftvs train ...` in this process (saves an interpreter start), single-threaded like the
    subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)


def _kill_resume_matches(arm_args, tmp_path, seed, capsys):
    ref, run = tmp_path / "ref", tmp_path / "run"
    _train_in_process(_cmd(arm_args, ref)[3:])
    total = _history(ref)[-1]["step"]
    rng = random.Random(seed)
    targets = sorted(rng.sample(range(1, total - 1), 3))
    log = []
    for n, target in enumerate(targets):
        delay = rng.uniform(0.0, 0.3)
        outcome = _kill_at(_cmd(arm_args, run, resume=n > 0), run, target, delay)
        log.append(f"step>={target}+{delay:.2f}s: {outcome} (checkpoint at step {_checkpoint_step(run)})")
    _train_in_process(_cmd(arm_args, run, resume=True)[3:])
    with capsys.disabled():
        print(f"\n[{arm_args[0]}] total {total} steps; kills: " + "; ".join(log))
    assert sum("killed" in x for x in log) >= 2, log
    _assert_same_run(ref, run, tmp_path)


def test_scratch_sigkill_resume_is_exact(small_b77, tmp_path, capsys):
    args = ["scratch", "--data", str(small_b77), *SCRATCH_FLAGS, *COMMON_FLAGS]
    _kill_resume_matches(args, tmp_path, seed=1234, capsys=capsys)


def test_finetune_lora_sigkill_resume_is_exact(small_b77, tiny_llama_dir, tmp_path, capsys):
    pytest.importorskip("ftvs.arms.finetune")
    args = [
        "finetune",
        "--data",
        str(small_b77),
        "--model_name_or_path",
        str(tiny_llama_dir),
        "--method",
        "lora",
        "--max_seq_length",
        "24",
        *COMMON_FLAGS,
    ]
    _kill_resume_matches(args, tmp_path, seed=12, capsys=capsys)
    # a truncated fine-tuned export: `ftvs evaluate` is a one-line error, not a SafetensorError traceback
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "run", broken)
    adapter = broken / "model" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    assert_one_line_error(capsys, ["evaluate", str(broken)], "truncated or corrupt", progress_bars=True)


# --------------------------------------------------------------------------------------------------
# The run lock
# --------------------------------------------------------------------------------------------------


def test_run_dir_is_locked_while_training(small_b77, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["scratch", "--data", str(small_b77), *SCRATCH_FLAGS, *COMMON_FLAGS, "--num_train_epochs", "50"]
    first = subprocess.Popen(
        _cmd(args, run), env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while _checkpoint_step(run) < 1:
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        before = (run / "config.yaml").read_bytes()
        assert_one_line_error(capsys, _cmd(args, run)[3:], "in use by another ftvs process")
        assert_one_line_error(capsys, _cmd(args, run, resume=True)[3:], "in use by another ftvs process")
        assert first.poll() is None  # the first run is unharmed
        assert (run / "config.yaml").read_bytes() == before
    finally:
        first.kill()
        first.wait()
        first.stderr.close()
