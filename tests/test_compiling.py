"""`--compile`: the transformer blocks of the training step compiled with torch.compile (ftvs.compiling).

On the tiny Llama: the compiled LoRA step runs inductor's code, computes what the eager step computes, and
compiles two graphs for batches of every length; validation stays eager; `auto` compiles only when the rest of
a run would repay it and keeps it only where it measured faster, and a compile that fails leaves the run
training eagerly.
"""

import json

import pytest
import torch
from builders import finetune_arm
from tiny_runs import prepare_tiny_dataset

from ftvs import compiling
from ftvs.cli import main
from ftvs.config import build_config, check_type
from ftvs.data import load_metadata, load_split
from ftvs.errors import FtvsError
from ftvs.launch import make_accelerator
from ftvs.train import build_train_step, resolve_config

SETTINGS = {"method": "lora", "lora_r": 4, "max_seq_length": 24, "per_device_train_batch_size": 8}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return prepare_tiny_dataset(tmp_path_factory.mktemp("compile"), num_train=160, num_test=100)


def lora_step(tiny_data, tiny_llama_dir, compile_setting: str):
    """A fresh LoRA arm (same seed, so the same adapters) and its `ftvs train` step, in fp32."""
    texts, labels = load_split(tiny_data, "train")
    cfg = build_config(
        {},
        {
            **SETTINGS,
            "arm": "finetune",
            "model_name_or_path": str(tiny_llama_dir),
            "data": str(tiny_data),
            "output_dir": "unused",
            "mixed_precision": "no",
            "learning_rate": 1e-2,
            "compile": compile_setting,
        },
    )
    torch.manual_seed(0)
    arm = finetune_arm(tiny_llama_dir, load_metadata(tiny_data)["label_names"], **SETTINGS)
    cfg = resolve_config(cfg, arm)
    return arm, build_train_step(cfg, arm, arm.encode(texts), labels, make_accelerator(cfg))


def test_the_compiled_lora_step_runs_inductor_code_once_for_every_length_and_matches_eager(
    tiny_data, tiny_llama_dir
):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager_arm, eager = lora_step(tiny_data, tiny_llama_dir, "no")
    arm, compiled = lora_step(tiny_data, tiny_llama_dir, "yes")
    assert compiled.compiler.compiled and not eager.compiler.compiled
    batches = [b for b, _ in zip(compiled.loader, range(4))]
    lengths = {b["input_ids"].shape[1] for b in batches}
    assert len(lengths) > 1  # batches of several lengths ...
    counters.clear()
    losses = {"eager": [], "compiled": []}
    for batch in batches:
        losses["eager"].append(eager({k: v.clone() for k, v in batch.items()})[1].item())
        losses["compiled"].append(compiled({k: v.clone() for k, v in batch.items()})[1].item())
    # ... and two graphs of a block for all of them (dynamic shapes, the boolean mask always there): the
    # first block, whose input needs no gradient (the embeddings are frozen), and every other block
    assert counters["stats"]["unique_graphs"] == 2
    assert counters["inductor"]["fxgraph_cache_miss"] + counters["inductor"]["fxgraph_cache_hit"] >= 2
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    trained = {n: p for n, p in arm.net.named_parameters() if p.requires_grad}
    reference = dict(eager_arm.net.named_parameters())
    assert trained and all(torch.allclose(p, reference[n], atol=1e-4) for n, p in trained.items())
    record = compiled.compiler.record()
    assert record["compiled"] and record["reason"] == "requested" and record["compile_seconds"] > 0
    # validation runs the blocks eagerly: no graph for the no-grad forward
    with compiled.compiler.eager(), torch.no_grad():
        arm.model.eval()(**{k: v for k, v in batches[0].items() if k not in ("index", "labels")})
    assert counters["stats"]["unique_graphs"] == 2


def test_auto_plans_from_every_batch_of_the_epoch_not_just_the_first_ones(tiny_data, tiny_llama_dir):
    _, step = lora_step(tiny_data, tiny_llama_dir, "auto")
    planned = compiling.planned_shapes(step.compiler.sampler)
    assert planned == [tuple(b["input_ids"].shape) for b in step.loader]  # what the epoch will run
    assert len({t for _, t in planned}) > 1


def test_auto_compiles_only_where_the_expected_saving_repays_the_compile():
    amx = compiling.cpu_kind(("avx512_bf16", "amx_bf16"))
    assert amx == "amx" and compiling.cpu_kind(("avx512_bf16",)) == compiling.cpu_kind(()) == "no amx"
    for kind in ("amx", "no amx"):  # short texts: nothing on any CPU
        assert compiling.expected_saving(16, kind) == 0 and compiling.expected_saving(8, kind) == 0
    assert compiling.expected_saving(40, amx) == pytest.approx(0.1)  # halfway between 16 and 64 tokens
    assert compiling.expected_saving(96, amx) == pytest.approx(0.225)
    assert compiling.expected_saving(512, amx) == compiling.expected_saving(128, amx) == pytest.approx(0.25)
    # without AMX (a Zen 4 EPYC) the eager step is nearer the matmul peak: less than half the saving
    assert compiling.expected_saving(128, "no amx") < compiling.expected_saving(128, amx) / 2
    go, why = compiling.pays_off(10 * 3600, 0.0, 16)  # ten hours of 16-token texts: still not worth it
    assert not go and "~0%" in why
    go, why = compiling.pays_off(481, 0.25, 128)  # 25% of 481 s repays 80 s of compiling 1.5 times
    assert go and "~8.0 min of eager training left at 128 tokens a text" in why
    assert not compiling.pays_off(479, 0.25, 128)[0]


def test_a_short_run_stays_eager_and_a_failed_compile_leaves_the_run_training(
    tiny_data, tiny_llama_dir, tmp_path, monkeypatch
):
    flags = ["--model_name_or_path", str(tiny_llama_dir), "--method", "lora", "--lora_r", "4"]
    flags += ["--max_seq_length", "24", "--num_train_epochs", "1", "--learning_rate", "1e-2"]
    flags += ["--mixed_precision", "no", "--disable_tqdm"]

    def run(name, *more):
        out = tmp_path / name
        args = ["train", "finetune", "--data", str(tiny_data), "--output_dir", str(out), *flags, *more]
        assert main(args) == 0
        return json.loads((out / "train_summary.json").read_text())["compile"]

    short = run("short")  # auto, 16 micro-batches of a few ms: nowhere near 10 minutes
    metrics = json.loads((tmp_path / "short" / "metrics.json").read_text())
    assert metrics["training"]["compile"] == short
    assert short["setting"] == "auto" and not short["compiled"]
    assert "that would repay compiling" in short["reason"]
    assert short["eager_ms_per_1k_tokens"] > 0 and short["compiled_ms_per_1k_tokens"] is None
    # a rule that always compiles, and a compiled step that must be 100x faster: measured, then back to eager
    monkeypatch.setattr(compiling, "COMPILE_SECONDS", 0.0)
    monkeypatch.setattr(compiling, "MIN_MEASURED_GAIN", 100.0)
    torch._dynamo.reset()
    slow = run("slow", "--no-evaluate")
    timed = compiling.TIMED_MICRO_BATCHES
    assert slow["at_micro_batch"] == timed + 1 and slow["compile_seconds"] > 0
    assert not slow["compiled"] and "x the eager one here; trained eagerly" in slow["reason"]
    assert slow["compiled_ms_per_1k_tokens"] > 0 and slow["eager_ms_per_1k_tokens"] > 0
    # and a C++ compiler that always fails: the run trains on eagerly
    monkeypatch.setattr(compiling, "MIN_MEASURED_GAIN", 1.0)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # no cached kernels
    torch._dynamo.reset()
    # inductor's own patch (restored on exit): monkeypatch's undo left the setting hidden for later tests
    with torch._inductor.config.patch({"cpp.cxx": (None, "/bin/false"), "fx_graph_cache": False}):
        failed = run("failed", "--no-evaluate")
    assert not failed["compiled"] and failed["reason"].startswith("compiling failed")
    assert failed["at_micro_batch"] == compiling.TIMED_MICRO_BATCHES + 1
    history = (tmp_path / "failed" / "history.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["train_loss"] > 0


def test_compile_settings_read_from_flags_yaml_and_older_runs():
    assert check_type("compile", False) == "no" and check_type("compile", True) == "yes"  # YAML no/yes
    with pytest.raises(FtvsError, match="invalid compile='maybe': must be one of auto, yes, no"):
        build_config({}, {"compile": "maybe"})
    from ftvs.cli import build_parser

    parsed = build_parser().parse_args(["train", "finetune", "--compile"])
    assert parsed.compile == "yes"
    assert build_parser().parse_args(["train", "finetune"]).compile is None  # the config's auto
