"""Multi-process training and evaluation through `accelerate launch` (CPU, gloo, 2 processes).

The slow tests start real `accelerate launch` jobs built by `ftvs.launch.launch_command` on a small
synthetic 6-class data set (288 train / 72 val / 101 test: odd, so the sharded evaluation has a padded
tail). They check that a 2-process run converges and early-stops on both processes alike, records
world size / effective batch size / steps per epoch, that evaluating one checkpoint with 1 and 2
processes gives identical predictions and metrics, that a 2-process run killed with SIGKILL mid-epoch
and resumed with `--resume` ends exactly like the uninterrupted one, that resuming on another number of
processes is refused, and that the fine-tuning arm (tiny Llama, freeze-then-unfreeze) trains under DDP.
Together about 2 minutes on an idle 2-core machine (under 4 with other jobs on it).
"""

import csv
import json
import math
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from builders import REPRODUCIBLE_HISTORY_KEYS
from safetensors.torch import load_file
from tiny_runs import TINY_SCRATCH, child_env, flags

from ftvs.launch import launch_command

ROOT = Path(__file__).resolve().parents[1]
TOPICS = {
    "atm": ["atm kept my cash", "cash machine error", "withdrawal at the atm"],
    "card_lost": ["lost my card", "card was stolen", "cannot find my card"],
    "pin": ["forgot my pin", "pin is blocked", "change the pin code"],
    "refund": ["want a refund", "return my money", "refund not received"],
    "top_up": ["top up failed", "add money by top up", "top up with apple pay"],
    "transfer": ["send money abroad", "bank transfer pending", "wire the funds"],
}
FILLER = "please help me today why is it that my account the app i can not you do we now".split()
# 288 / 20 -> 15 batches: a short one, and an odd count that 2 processes pad with a whole batch
TRAIN_BATCH, EVAL_BATCH, EPOCHS = 20, 16, 30
TRAIN_FLAGS = [
    *flags(
        {
            **TINY_SCRATCH,
            "learning_rate": 3e-3,
            "num_train_epochs": EPOCHS,
            "early_stopping_patience": 3,
            "per_device_train_batch_size": TRAIN_BATCH,
            "per_device_eval_batch_size": EVAL_BATCH,
            "seed": 3,
            "save_steps": 1,
        }
    ),
    "--disable_tqdm",
]


def _launch(args, n, timeout=180):
    proc = subprocess.run(
        launch_command([str(a) for a in args], n),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


# --- fast checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_examples,batch,procs", [(290, 16, 2), (300, 16, 2), (300, 16, 3), (301, 7, 4), (20, 16, 4)]
)
def test_sharded_training_batches_cover_every_example_each_epoch(num_examples, batch, procs):
    """accelerate deals the length-grouped batches to processes; no example may be dropped in any epoch
    (with a `batch_size` attribute on the sampler, a whole round was dropped whenever the shuffled short
    batch ended a round)."""
    from accelerate.data_loader import BatchSamplerShard

    from ftvs.batching import LengthGroupedBatchSampler

    lengths = np.random.default_rng(0).integers(3, 30, num_examples)
    sampler = LengthGroupedBatchSampler(lengths, batch, seed=0)
    for epoch in range(6):
        sampler.set_epoch(epoch)
        shards = [
            list(BatchSamplerShard(sampler, num_processes=procs, process_index=p)) for p in range(procs)
        ]
        assert {len(s) for s in shards} == {len(BatchSamplerShard(sampler, procs, 0))}  # equal, as len() says
        assert {i for s in shards for b in s for i in b} == set(range(num_examples))


# --- real 2-process jobs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    """6 separable classes: 288 train, 72 val, 101 test (odd, and not a multiple of the eval batch)."""
    from ftvs.data import prepare

    root = tmp_path_factory.mktemp("synth")
    rng = random.Random(0)
    names = sorted(TOPICS)
    seen = set()  # unique texts: `prepare` drops duplicates and test texts that also occur in train
    for split, n in (("train", 360), ("test", 101)):
        rows = []
        while len(rows) < n:
            label = names[len(rows) % len(names)]
            words = rng.sample(FILLER, 4)
            pos = rng.randrange(5)
            text = " ".join(words[:pos] + [rng.choice(TOPICS[label])] + words[pos:])
            if text not in seen:
                seen.add(text)
                rows.append((text, label))
        rng.shuffle(rows)
        with open(root / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *rows])
    meta = prepare(str(root), root / "data", validation_split=0.2, tokenizer="none")
    assert [meta["splits"][s]["count"] for s in ("train", "val", "test")] == [288, 72, 101]
    return root / "data"


@pytest.fixture(scope="module")
def run2(synth_data, tmp_path_factory):
    """An uninterrupted 2-process training run (evaluated by 2 processes at the end)."""
    run = tmp_path_factory.mktemp("mp") / "ref"
    proc = _launch(["train", "scratch", "--data", synth_data, "--output_dir", run, *TRAIN_FLAGS], 2)
    assert proc.stdout.count("trained ") == 1, proc.stdout  # the main process alone prints
    return run


def _history(run):
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_two_process_training_converges_and_records_its_scale(run2):
    resolved = yaml.safe_load((run2 / "config.yaml").read_text())["resolved"]
    steps = math.ceil(math.ceil(288 / TRAIN_BATCH) / 2)
    assert resolved["world_size"] == 2
    assert resolved["effective_batch_size"] == 2 * TRAIN_BATCH
    assert resolved["steps_per_epoch"] == steps and resolved["total_steps"] == steps * EPOCHS
    history = _history(run2)  # one row per epoch: the main process alone writes
    epochs = len(history)
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    assert [r["step"] for r in history] == [steps * e for e in range(1, epochs + 1)]
    metrics = json.loads((run2 / "metrics.json").read_text())
    assert metrics["inference"]["num_processes"] == 2 and metrics["num_test_examples"] == 101
    assert metrics["test"]["accuracy"] > 0.9, metrics["test"]["accuracy"]  # chance: 1/6
    summary = json.loads((run2 / "train_summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    # both processes took the same early-stopping decision from the gathered val predictions (a split
    # decision would leave one process waiting in a collective: the launch would hang, not return 0)
    assert summary["stop_reason"] == "early_stopping" and epochs < EPOCHS


@pytest.mark.slow
def test_evaluating_one_checkpoint_with_one_and_two_processes_is_identical(run2, tmp_path):
    import shutil

    outputs = {}
    for n in (1, 2):
        run = shutil.copytree(run2, tmp_path / f"eval{n}")
        _launch(["evaluate", run, "--batch-size", EVAL_BATCH], n)
        outputs[n] = (
            json.loads((run / "predictions.json").read_text()),
            json.loads((run / "metrics.json").read_text()),
        )
    (p1, m1), (p2, m2) = outputs[1], outputs[2]
    assert m1["inference"]["num_processes"] == 1 and m2["inference"]["num_processes"] == 2
    assert len(p1["y_pred"]) == 101 and p1["y_true"] == p2["y_true"]
    assert p1 == p2  # predictions and confidences, in test-file order, nothing dropped or doubled
    assert m1["test"] == m2["test"]  # every metric and the loss, bit for bit (timings differ)
    assert m1["num_test_examples"] == m2["num_test_examples"] == 101


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_matches_the_uninterrupted_run(run2, synth_data, tmp_path):
    run = tmp_path / "run"
    total = _history(run2)[-1]["step"]
    target = random.Random(5).randrange(total // 3, 2 * total // 3)
    cmd = launch_command(
        ["train", "scratch", "--data", str(synth_data), "--output_dir", str(run), *TRAIN_FLAGS], 2
    )
    proc = subprocess.Popen(
        cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    try:
        while _checkpoint_step(run) < target:
            assert proc.poll() is None, f"finished or failed before the kill: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.005)
    finally:
        _kill_tree(proc)
        proc.stderr.close()
    stopped_at = _checkpoint_step(run)
    time.sleep(1.0)
    assert _checkpoint_step(run) == stopped_at, "a worker survived the kill"
    assert 0 < stopped_at < total
    out = _launch(["train", "scratch", "--resume", run, "--no-evaluate"], 2).stdout
    assert f"step {stopped_at}" in out, out  # "resumed RUN at epoch E, batch B, step S"
    h_ref, h_run = _history(run2), _history(run)
    assert [r["epoch"] for r in h_run] == [r["epoch"] for r in h_ref]
    for a, b in zip(h_ref, h_run):
        for key in REPRODUCIBLE_HISTORY_KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-6, rel=0), (
                a["epoch"],
                key,
                a[key],
                b[key],
                stopped_at,
            )
    w_ref, w_run = (
        load_file(run2 / "model" / "model.safetensors"),
        load_file(run / "model" / "model.safetensors"),
    )
    assert w_ref.keys() == w_run.keys()
    for k in w_ref:
        assert torch.allclose(w_ref[k], w_run[k], atol=1e-6, rtol=0), k
    assert json.loads((run / "train_summary.json").read_text())["status"] == "completed"


def _kill_tree(proc):
    """SIGKILL the launcher and its workers: torchrun starts each worker in its own session, so killing the
    launcher's process group would leave them training on as orphans."""
    import psutil

    workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in [*workers, proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)
    _, alive = psutil.wait_procs([p for p in map(_process, workers) if p], timeout=30)
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive), alive


def _process(pid):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _checkpoint_step(run):
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.slow
def test_resuming_with_another_number_of_processes_is_a_one_line_error(run2, tmp_path, capsys):
    import shutil

    from ftvs.cli import main

    run = tmp_path / "copy"
    shutil.copytree(run2, run)
    assert main(["train", "scratch", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "trained on 2 process(es), this is 1" in err and "--num_processes 2" in err


@pytest.mark.slow
def test_two_process_fine_tuning_with_freeze_then_unfreeze(synth_data, tiny_llama_dir, tmp_path):
    """The fine-tuning arm under DDP, in its hardest mode: the base has no gradients in epoch 1 and joins
    the optimisation in epoch 2 (DDP must be told to expect unused parameters)."""
    run = tmp_path / "ft"
    _launch(
        [
            "train",
            "finetune",
            "--data",
            synth_data,
            "--output_dir",
            run,
            "--model",
            tiny_llama_dir,
            "--method",
            "unfreeze",
            "--unfreeze_after_epochs",
            "1",
            "--num_train_epochs",
            "2",
            "--per_device_train_batch_size",
            TRAIN_BATCH,
            "--learning_rate",
            "3e-3",
            "--max_seq_length",
            "24",
            "--disable_tqdm",
            "--mixed_precision",
            "no",
            "--no-evaluate",
        ],
        2,
    )
    history = _history(run)
    assert [r["epoch"] for r in history] == [1, 2] and all(math.isfinite(r["train_loss"]) for r in history)
    resolved = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
    assert resolved["world_size"] == 2 and resolved["effective_batch_size"] == 2 * TRAIN_BATCH
    assert (run / "model" / "ftvs.json").is_file()


@pytest.mark.slow
def test_two_processes_of_batch_16_train_like_one_process_of_batch_32(synth_data, tmp_path):
    """Same effective batch, same steps: without dropout and length grouping the 2 processes' batches are
    exactly the halves of the single process's (288 = 9 x 32), so DDP's averaged gradient is the same and
    the runs match step for step — what makes a 1-GPU and an N-GPU run of the study comparable."""
    from ftvs.cli import main

    flags = [
        *TRAIN_FLAGS[: TRAIN_FLAGS.index("--num_train_epochs")],
        "--num_train_epochs",
        "3",
        "--dropout",
        "0",
        "--no-length_grouping",
        "--seed",
        "3",
        "--disable_tqdm",
        "--mixed_precision",
        "no",
        "--no-evaluate",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(
        [
            "train",
            "scratch",
            "--data",
            synth_data,
            "--output_dir",
            two,
            "--per_device_train_batch_size",
            16,
            *flags,
        ],
        2,
    )
    assert (
        main(
            [
                "train",
                "scratch",
                "--data",
                str(synth_data),
                "--output_dir",
                str(one),
                "--per_device_train_batch_size",
                "32",
                *flags,
            ]
        )
        == 0
    )
    r1, r2 = (yaml.safe_load((d / "config.yaml").read_text())["resolved"] for d in (one, two))
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    for key in ("effective_batch_size", "steps_per_epoch", "total_steps", "warmup_steps"):
        assert r1[key] == r2[key], key
    for a, b in zip(_history(one), _history(two), strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["epoch"], key)
    w1, w2 = (
        load_file(d / "checkpoint" / "model.safetensors") for d in (one, two)
    )  # the last step's weights
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-4), k
