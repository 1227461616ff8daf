"""Training checkpoints (ftvs.checkpoint): the whole training state round-trips, nothing is pickled, and a
truncated or tampered checkpoint file is a one-line error with exit code 2.
(Exact resume after SIGKILL, end to end: test_resume.py.)"""

import ast
import itertools
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import TINY_SCRATCH, TINY_SCRATCH_FLAGS, assert_one_line_error, prepare_tiny_dataset

from ftvs.checkpoint import has_checkpoint, load_training_state, save_training_state
from ftvs.cli import main
from ftvs.config import build_config
from ftvs.launch import make_accelerator
from ftvs.train import set_up

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return prepare_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def test_training_state_round_trips_weights_optimizer_schedule_rngs_and_epoch_statistics(tiny_data, tmp_path):
    run = tmp_path / "run"
    cfg = build_config(
        {},
        {**TINY_SCRATCH, "data": str(tiny_data), "output_dir": str(run), "per_device_train_batch_size": 16},
    )
    accelerator = make_accelerator(cfg)
    trained = set_up(cfg, accelerator)
    step = trained.step
    step.model.train()
    for batch in itertools.islice(step.loader, 3):
        step(batch)
    preds, labels = [torch.tensor([1, 2]), torch.tensor([3])], [torch.tensor([0, 2]), torch.tensor([3])]
    save_training_state(
        run,
        accelerator,
        trained.arm,
        step.optimizer,
        step.scheduler,
        {"epoch": 0, "batches_done": 3, "global_step": step.global_step},
        preds=preds,
        labels=labels,
        loss_sum=torch.tensor(2.5, dtype=torch.float64),
    )
    assert has_checkpoint(run)
    after_save = (torch.rand(4), np.random.rand(2), random.random())

    fresh = set_up(cfg, accelerator)  # initial weights, new optimizer and schedule, RNGs re-seeded
    state, running = load_training_state(
        run, accelerator, fresh.arm, fresh.step.optimizer, fresh.step.scheduler
    )
    assert (state["epoch"], state["batches_done"], state["global_step"], state["world_size"]) == (0, 3, 3, 1)
    assert torch.equal(running["preds"], torch.tensor([1, 2, 3]))
    assert torch.equal(running["labels"], torch.tensor([0, 2, 3]))
    assert running["loss_sum"].item() == 2.5
    saved_weights, loaded_weights = trained.arm.trainable_state_dict(), fresh.arm.trainable_state_dict()
    assert saved_weights.keys() == loaded_weights.keys()
    assert all(torch.equal(saved_weights[k], loaded_weights[k]) for k in saved_weights)
    saved_opt, loaded_opt = step.optimizer.state_dict()["state"], fresh.step.optimizer.state_dict()["state"]
    assert saved_opt.keys() == loaded_opt.keys() and len(saved_opt) > 0
    assert all(torch.equal(saved_opt[i]["exp_avg_sq"], loaded_opt[i]["exp_avg_sq"]) for i in saved_opt)
    assert fresh.step.scheduler.last_epoch == step.scheduler.last_epoch == 3
    assert torch.equal(torch.rand(4), after_save[0])  # every RNG continues where the saved run left it
    assert np.array_equal(np.random.rand(2), after_save[1]) and random.random() == after_save[2]


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _pickle_uses(tree) -> list[tuple[int, str]]:
    """Imports of pickle-like modules, `torch.load`, `weights_only=False`, `allow_pickle=True`."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hits += [
                (node.lineno, f"import {a.name}")
                for a in node.names
                if a.name.split(".")[0] in PICKLE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in PICKLE_MODULES or (mod == "torch" and any(a.name == "load" for a in node.names)):
                hits.append((node.lineno, f"from {node.module} import ..."))
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "load"
            and isinstance(node.value, ast.Name)
            and node.value.id == "torch"
        ):
            hits.append((node.lineno, "torch.load"))
        elif (
            isinstance(node, ast.keyword)
            and isinstance(node.value, ast.Constant)
            and (
                (node.arg == "weights_only" and node.value.value is False)
                or (node.arg == "allow_pickle" and node.value.value is True)
            )
        ):
            hits.append((node.value.lineno, f"{node.arg}={node.value.value}"))
    return hits


def test_no_pickle_in_source():
    files = sorted((ROOT / "src" / "ftvs").rglob("*.py"))
    assert len(files) > 10
    hits = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in files
        for line, what in _pickle_uses(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not hits, "pickle-based (de)serialisation found:\n" + "\n".join(hits)


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    """A finished 1-epoch scratch run (checkpoint + best model), trained in-process."""
    run = tmp_path_factory.mktemp("tinyrun") / "run"
    argv = [
        "train",
        "scratch",
        "--data",
        str(tiny_data),
        "--output_dir",
        str(run),
        *TINY_SCRATCH_FLAGS,
        "--num_train_epochs",
        "1",
        "--no-evaluate",
    ]
    assert main(argv) == 0
    return run, argv


@pytest.mark.parametrize(
    "damage",
    ["truncate_checkpoint_weights", "garbage_state_json", "tampered_state_types", "truncate_best_model"],
)
def test_corrupt_checkpoint_is_aassert_one_line_error(tiny_run, tmp_path, capsys, damage):
    src, argv = tiny_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    ckpt = run / "checkpoint"
    if damage == "truncate_checkpoint_weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "garbage_state_json":
        (ckpt / "state.json").write_bytes(b"\x00\xffnot json{{")
    elif damage == "tampered_state_types":
        state = json.loads((ckpt / "state.json").read_text())
        state["epoch"], state["scheduler"] = "one", [1, 2]
        (ckpt / "state.json").write_text(json.dumps(state))
    else:
        data = (run / "model" / "model.safetensors").read_bytes()
        (run / "model" / "model.safetensors").write_bytes(data[: len(data) // 2])
    resume = ["train", "scratch", "--resume", str(run), "--num_train_epochs", "1", "--no-evaluate"]
    if damage == "truncate_best_model":
        assert_one_line_error(capsys, ["evaluate", str(run)], "truncated or corrupt")
    else:
        needle = {
            "truncate_checkpoint_weights": "truncated or corrupt",
            "garbage_state_json": "corrupt",
            "tampered_state_types": "checkpoint",
        }[damage]
        assert_one_line_error(capsys, resume, needle)
        assert main(["evaluate", str(run)]) == 0  # the best model is untouched by a bad checkpoint
    capsys.readouterr()
