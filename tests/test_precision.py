"""Precision: native-bf16 detection, what `auto` resolves to, and bf16 vs fp32 on real tiny models.

bf16 autocast runs on any CPU (emulated where the CPU lacks bf16 instructions, so slowly): the models and
test sets here are tiny.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from builders import finetune_arm, tiny_model_dir
from tiny_runs import TINY_SCRATCH, TINY_SCRATCH_FLAGS, prepare_tiny_dataset

from ftvs.arms import build_arm
from ftvs.cli import main
from ftvs.config import build_config
from ftvs.data import load_metadata, load_split
from ftvs.fileio import load_tensors
from ftvs.precision import (
    CPU_BF16_STEP_SPEEDUP,
    MIN_BF16_SPEEDUP,
    cpu_has_native_bf16,
    native_bf16_flags,
    resolve_precision,
)

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9354P
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 clzero
processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 clzero
"""
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8\n"
AVX2_ONLY = """model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx avx2 fma bmi2
bugs\t\t: avx512_bf16_is_not_a_flag_here
"""


def test_native_bf16_is_read_from_the_cpuinfo_flags_lines():
    assert native_bf16_flags(ZEN4) == ["avx512_bf16"]
    assert native_bf16_flags(SAPPHIRE_RAPIDS) == ["avx512_bf16", "amx_bf16"]
    assert native_bf16_flags(AVX2_ONLY) == []  # only `flags` lines count, whole words only
    assert native_bf16_flags("") == []


def test_auto_is_bf16_only_where_the_cpu_has_native_bf16_and_the_arm_gains():
    fp32 = resolve_precision("auto", "cpu", "finetune", cpu_flags=())
    assert (fp32.name, fp32.reason) == ("no", "cpu without native bf16")
    auto = resolve_precision("auto", "cpu", "finetune", cpu_flags=("avx512_bf16",))
    assert auto.name == "bf16" and auto.reason.startswith("cpu avx512_bf16: finetune step")
    # the scratch presets gain too little from bf16 on a CPU (CPU_BF16_STEP_SPEEDUP): fp32, with the reason
    scratch = resolve_precision("auto", "cpu", "scratch", cpu_flags=("amx_bf16",))
    assert scratch.name == "no" and "scratch step only" in scratch.reason
    assert CPU_BF16_STEP_SPEEDUP["scratch"] < MIN_BF16_SPEEDUP <= CPU_BF16_STEP_SPEEDUP["finetune"]
    assert resolve_precision("bf16", "cpu", "scratch", cpu_flags=()).name == "bf16"  # asked for: kept
    assert resolve_precision("no", "cpu", "finetune", cpu_flags=("amx_bf16",)).name == "no"
    with pytest.raises(ValueError, match="arm"):
        resolve_precision("auto", "cpu", "baseline")
    # this machine: the answer follows its own /proc/cpuinfo
    here = resolve_precision("auto", "cpu", "finetune")
    assert here.name == ("bf16" if cpu_has_native_bf16() else "no")
    if sys.platform.startswith("linux"):
        flags = native_bf16_flags(Path("/proc/cpuinfo").read_text())
        assert cpu_has_native_bf16() == bool(flags)


def run_recording_dtypes(cfg, arm, texts, labels, steps: int = 2):
    """`steps` real training steps of `arm` as `ftvs train` builds them (`cfg.mixed_precision`), with the
    output dtype of every Linear the forward passes called and the dtype of every loss."""
    from ftvs.launch import make_accelerator
    from ftvs.train import build_train_step, resolve_config

    cfg = resolve_config(cfg, arm)
    step = build_train_step(cfg, arm, arm.encode(texts), labels, make_accelerator(cfg))
    seen = {}

    def record(name):
        def hook(module, inputs, out):
            seen.setdefault(name, set()).add(out.dtype)

        return hook

    for name, module in arm.model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(record(name))
    losses = [step(batch)[1].dtype for batch, _ in zip(step.loader, range(steps))]
    return step, seen, losses


def test_a_bf16_scratch_step_runs_its_blocks_in_bf16_and_its_head_and_loss_in_fp32(tiny_data):
    texts, labels = load_split(tiny_data, "train")
    cfg = build_config(
        {}, {**TINY_SCRATCH, "data": str(tiny_data), "output_dir": "unused", "mixed_precision": "bf16"}
    )
    arm = build_arm(cfg, texts, load_metadata(tiny_data)["label_names"])
    step, seen, losses = run_recording_dtypes(cfg, arm, texts, labels)
    assert seen["blocks.0.attn.qkv"] == seen["blocks.0.mlp.proj"] == {torch.bfloat16}
    assert seen["head.0"] == seen["head.3"] == {torch.float32}
    assert losses == [torch.float32, torch.float32]
    assert {p.dtype for p in arm.model.parameters()} == {torch.float32}
    moments = [t for state in step.optimizer.state.values() for t in state.values() if t.ndim > 0]
    assert moments and {t.dtype for t in moments} == {torch.float32}


def test_a_bf16_lora_step_keeps_the_frozen_base_in_bf16_and_what_trains_in_fp32(tiny_data, tiny_llama_dir):
    texts, labels = load_split(tiny_data, "train")
    settings = {"method": "lora", "lora_r": 4, "max_seq_length": 24, "per_device_train_batch_size": 8}
    cfg = build_config(
        {},
        {
            **settings,
            "arm": "finetune",
            "model_name_or_path": str(tiny_llama_dir),
            "data": str(tiny_data),
            "output_dir": "unused",
            "mixed_precision": "bf16",
            "learning_rate": 1e-2,
        },
    )
    arm = finetune_arm(tiny_llama_dir, load_metadata(tiny_data)["label_names"], **settings)
    trainable = {n: p.detach().clone() for n, p in arm.net.named_parameters() if p.requires_grad}
    step, seen, losses = run_recording_dtypes(cfg, arm, texts, labels)
    q = [n for n in seen if n.endswith("layers.0.self_attn.q_proj.base_layer")]
    assert q and seen[q[0]] == {torch.bfloat16}  # the frozen base computed in bf16 ...
    base = dict(arm.net.named_parameters())
    assert base[q[0][len("net.") :] + ".weight"].dtype == torch.bfloat16  # ... from weights stored in bf16
    assert losses == [torch.float32, torch.float32]
    # embeddings and norms stay fp32; adapters and head (and their optimizer state) are fp32 and trained
    assert {p.dtype for n, p in base.items() if "norm" in n or "embed" in n} == {torch.float32}
    assert {base[n].dtype for n in trainable} == {torch.float32}
    assert any(not torch.equal(base[n], before) for n, before in trainable.items())
    moments = [t for state in step.optimizer.state.values() for t in state.values() if t.ndim > 0]
    assert moments and {t.dtype for t in moments} == {torch.float32}


def agreement(run_a: Path, run_b: Path) -> float:
    a = json.loads((run_a / "predictions.json").read_text())["y_pred"]
    b = json.loads((run_b / "predictions.json").read_text())["y_pred"]
    assert len(a) == len(b) > 0
    return sum(x == y for x, y in zip(a, b)) / len(a)


def evaluate_in(run: Path, precision: str, tmp_path: Path) -> Path:
    copy = tmp_path / f"{run.name}-{precision}"
    shutil.copytree(run, copy)
    assert main(["evaluate", str(copy), "--mixed_precision", precision]) == 0
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["inference"]["precision"] == precision
    assert metrics["inference"]["precision_reason"] == "requested"
    return copy


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return prepare_tiny_dataset(tmp_path_factory.mktemp("prec"), num_train=160, num_test=200)


def test_bf16_and_fp32_predictions_of_a_trained_scratch_model_agree(tiny_data, tmp_path):
    run = tmp_path / "scratch"
    flags = [*TINY_SCRATCH_FLAGS, "--num_train_epochs", "4"]
    assert main(["train", "scratch", "--data", str(tiny_data), "--output_dir", str(run), *flags]) == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
    assert (resolved["mixed_precision"], resolved["mixed_precision_reason"]) == ("no", "requested")
    fp32, bf16 = evaluate_in(run, "no", tmp_path), evaluate_in(run, "bf16", tmp_path)
    assert json.loads((fp32 / "metrics.json").read_text())["test"]["accuracy"] > 0.5  # it learned
    assert agreement(fp32, bf16) >= 0.99


def test_bf16_training_of_lora_keeps_weights_and_optimizer_state_fp32(tiny_data, tmp_path):
    """A LoRA run trained under bf16 autocast (a fresh process: Accelerate fixes the precision once per
    process), then scored in bf16 and in fp32."""
    model = tiny_model_dir(tmp_path / "tiny-llama")
    run = tmp_path / "lora"
    cmd = [
        sys.executable,
        "-m",
        "ftvs",
        "train",
        "finetune",
        "--data",
        str(tiny_data),
        "--output_dir",
        str(run),
        "--model_name_or_path",
        str(model),
        "--method",
        "lora",
        "--lora_r",
        "4",
        "--max_seq_length",
        "24",
        "--num_train_epochs",
        "3",
        "--learning_rate",
        "1e-2",
        "--mixed_precision",
        "bf16",
        "--disable_tqdm",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
    assert resolved["mixed_precision"] == "bf16"
    weights = load_tensors(run / "checkpoint" / "model.safetensors")
    moments = load_tensors(run / "checkpoint" / "optimizer.safetensors")
    assert any("lora" in name for name in weights)
    assert {str(t.dtype) for t in weights.values()} == {"torch.float32"}
    assert {str(t.dtype) for k, t in moments.items() if k.endswith(("exp_avg", "exp_avg_sq"))} == {
        "torch.float32"
    }
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert all(row["train_loss"] == row["train_loss"] for row in history)  # finite, not NaN
    fp32, bf16 = evaluate_in(run, "no", tmp_path), evaluate_in(run, "bf16", tmp_path)
    assert agreement(fp32, bf16) >= 0.99


def test_one_process_trains_in_fp32_then_bf16_then_auto(tiny_data, tmp_path):
    """Accelerate keeps one precision per process and refuses another; ftvs starts every single-process
    run from a clean Accelerate state, so the Python API and a notebook can train several runs in a row
    (`auto` follows bf16 here: fp32 for the scratch arm on any CPU, for its own reason)."""
    auto = resolve_precision("auto", "cpu", "scratch")
    for i, precision in enumerate(("no", "bf16", "auto")):
        run = tmp_path / f"run{i}"
        argv = ["train", "scratch", "--data", str(tiny_data), "--output_dir", str(run), *TINY_SCRATCH_FLAGS]
        assert main([*argv, "--mixed_precision", precision, "--num_train_epochs", "1", "--no-evaluate"]) == 0
        resolved = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
        expected = auto if precision == "auto" else resolve_precision(precision, "cpu", "scratch")
        assert (resolved["mixed_precision"], resolved["mixed_precision_reason"]) == (
            expected.name,
            expected.reason,
        )
    assert auto.name == "no"
