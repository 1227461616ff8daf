"""The from-scratch arm end to end on real Banking77: presets, training, evaluation, outputs, CLI."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from ftvs.arms import TrimmedTokenizer, load_arm
from ftvs.cli import main
from ftvs.config import build_config
from ftvs.data import load_split, prepare
from ftvs.errors import FtvsError
from ftvs.model import PRESETS, ScratchClassifier
from ftvs.pretrained import load_tokenizer

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
needs_banking77 = pytest.mark.skipif(not BANKING77.is_dir(), reason=f"Banking77 CSVs not found at {BANKING77}")

METRIC_KEYS = {"run_name", "arm", "method", "model_name", "dataset", "data_dir", "seed", "test", "num_test_examples",
               "inference", "params", "size_on_disk_bytes", "training", "best_val", "train_val_gap", "model"}
HISTORY_KEYS = {"epoch", "step", "train_loss", "train_accuracy", "train_macro_f1", "val_loss", "val_accuracy",
                "val_macro_f1", "lr", "epoch_seconds", "elapsed_seconds", "examples_per_second"}


@pytest.fixture(scope="module")
def banking_small(tmp_path_factory):
    if not BANKING77.is_dir():
        pytest.skip(f"Banking77 CSVs not found at {BANKING77}")
    out = tmp_path_factory.mktemp("b77")
    prepare(str(BANKING77), out, max_train_examples=3000, seed=0)
    return out


@pytest.fixture(scope="module")
def trained_run(banking_small, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(["train", "scratch", "--data", str(banking_small), "--output_dir", str(run), "--preset", "tiny",
                 "--num_train_epochs", "5", "--max_seq_length", "48", "--learning_rate", "2e-3",
                 "--pooling", "mean", "--disable_tqdm"])
    assert code == 0
    return run


@needs_banking77
def test_every_preset_stays_inside_half_to_ten_million_parameters_on_banking77():
    texts, _ = load_split_from_csv()
    tok = TrimmedTokenizer.fit(load_tokenizer("smollm2-135m"), texts, max_length=128, max_vocab=16000,
                               name="smollm2-135m")
    assert 1000 < tok.vocab_size < 16000
    cfg = build_config({}, {"data": "x", "output_dir": "y"})
    from ftvs.arms import scratch_model_config

    counts = {}
    for preset in PRESETS:
        cfg.preset = preset
        counts[preset] = ScratchClassifier(scratch_model_config(cfg, tok.vocab_size, 77)).num_parameters()["total"]
        assert 500_000 <= counts[preset] <= 10_000_000, (preset, counts[preset])
    assert counts["tiny"] < counts["small"] < counts["medium"] < counts["large"]


def load_split_from_csv():
    import csv

    with open(BANKING77 / "train.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["category"] for r in rows]


@needs_banking77
def test_training_learns_far_above_chance_and_writes_documented_outputs(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["arm"] == "scratch" and metrics["num_test_examples"] > 2500
    # 77 classes: chance is 1.3%; five epochs on 3,000 examples must be far above it
    assert metrics["test"]["accuracy"] > 0.25, metrics["test"]["accuracy"]
    assert metrics["test"]["macro_f1"] > 0.15
    assert len(metrics["test"]["per_class"]) == 77
    assert len(metrics["test"]["confusion_matrix"]) == 77
    assert metrics["inference"]["seconds_per_1000"] > 0
    assert 500_000 <= metrics["params"]["total"] <= 10_000_000
    assert metrics["params"]["total"] == metrics["params"]["trainable"]
    assert metrics["size_on_disk_bytes"] > 4 * metrics["params"]["total"]
    assert metrics["training"]["epochs_run"] == 5 and 1 <= metrics["training"]["best_epoch"] <= 5

    history = [json.loads(line) for line in (trained_run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert all(HISTORY_KEYS <= set(r) for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_macro_f1"] > history[0]["val_macro_f1"]

    for name in ("config.yaml", "train_summary.json", "predictions.json", "training_curves.png",
                 "confusion_matrix.png", "model/model.safetensors", "model/config.json", "model/ftvs.json",
                 "model/vocab_map.json", "checkpoint/state.json", "checkpoint/optimizer.safetensors"):
        assert (trained_run / name).is_file(), name
    resolved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert resolved["learning_rate"] == 2e-3 and resolved["resolved"]["effective_batch_size"] == 32
    preds = json.loads((trained_run / "predictions.json").read_text())
    assert len(preds["y_pred"]) == metrics["num_test_examples"]
    acc = sum(p == t for p, t in zip(preds["y_pred"], preds["y_true"])) / len(preds["y_true"])
    assert acc == pytest.approx(metrics["test"]["accuracy"])


@needs_banking77
def test_exported_model_reloads_and_predicts_consistently(trained_run, banking_small, capsys):
    arm = load_arm(trained_run)
    texts, _ = load_split(banking_small, "test")
    batch = arm.collate(arm.encode(texts[:8]))
    with torch.no_grad():
        a = arm.model(**batch)
        b = load_arm(trained_run / "model").model(**batch)
    assert torch.equal(a, b)
    assert main(["predict", str(trained_run), "I still have not received my new card", "how do I top up?"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    label, prob, _ = lines[0].split("\t", 2)
    assert label in arm.label_names and 0 < float(prob) <= 1


def test_yaml_config_is_overridden_by_flags_and_unknown_keys_suggest_the_closest(tmp_path):
    cfg = build_config({"learning_rate": 1e-4, "num_train_epochs": 7}, {"learning_rate": 3e-4})
    assert cfg.learning_rate == 3e-4 and cfg.num_train_epochs == 7
    with pytest.raises(FtvsError, match="did you mean 'learning_rate'"):
        build_config({"learnig_rate": 1e-4}, {})
    with pytest.raises(FtvsError, match="preset"):
        build_config({}, {"preset": "huge"})


def test_models_command_prints_every_preset(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for preset in PRESETS:
        assert preset in out


def test_pooling_variants_ignore_padding():
    from ftvs.model import ScratchConfig

    for pooling in ("last", "mean", "max"):
        torch.manual_seed(0)
        model = ScratchClassifier(ScratchConfig(vocab_size=50, num_labels=3, pooling=pooling, max_position=16)).eval()
        ids = torch.tensor([[5, 6, 7, 8]])
        padded = torch.tensor([[5, 6, 7, 8, 0, 0, 0]])
        with torch.no_grad():
            a = model(ids, torch.ones_like(ids))
            b = model(padded, (padded != 0).long())
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_token_dropout_replaces_real_tokens_in_training_only():
    from ftvs.model import ScratchConfig

    torch.manual_seed(0)
    model = ScratchClassifier(ScratchConfig(vocab_size=50, num_labels=3, pooling="mean", max_position=64,
                                            dropout=0.0, token_dropout=0.5))
    seen = []
    model.tok_emb.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    ids = torch.cat([torch.randint(2, 50, (4, 48)), torch.zeros(4, 16, dtype=torch.long)], dim=1)
    mask = (ids != 0).long()
    model.train()(ids, mask)
    dropped = seen[-1]
    assert (dropped[:, 48:] == 0).all(), "pads must stay pads"
    share = (dropped[:, :48] == 1).float().mean().item()  # 1 = <unk>
    assert 0.35 < share < 0.65, share
    with torch.no_grad():
        model.eval()
        a, b = model(ids, mask), model(ids, mask)
    assert torch.equal(seen[-1], ids) and torch.equal(a, b), "no word dropout at evaluation"


def test_lowercase_tokenizer_merges_case_and_survives_save_and_load(tmp_path):
    base = load_tokenizer("smollm2-135m")
    texts = ["My Card was declined", "my card was declined", "CARD PIN locked"]
    cased = TrimmedTokenizer.fit(base, texts, max_length=32, max_vocab=1000, name="smollm2-135m")
    lower = TrimmedTokenizer.fit(base, texts, max_length=32, max_vocab=1000, name="smollm2-135m", lowercase=True)
    assert lower.vocab_size < cased.vocab_size
    a, b = lower.encode(["My Card", "my card"], 32)
    assert a == b and 1 not in a
    lower.save(tmp_path)
    again = TrimmedTokenizer.load(tmp_path)
    assert again.lowercase and again.encode(["My CARD"], 32) == lower.encode(["my card"], 32)


@needs_banking77
def test_bf16_inference_is_recorded_and_agrees_with_fp32(trained_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    assert main(["evaluate", str(run), "--mixed_precision", "bf16"]) == 0
    bf16 = json.loads((run / "metrics.json").read_text())
    fp32 = json.loads((trained_run / "metrics.json").read_text())
    assert bf16["inference"]["precision"] == "bf16" and fp32["inference"]["precision"] == "no"
    a = json.loads((run / "predictions.json").read_text())["y_pred"]
    b = json.loads((trained_run / "predictions.json").read_text())["y_pred"]
    assert sum(x == y for x, y in zip(a, b)) / len(a) > 0.95
    assert abs(bf16["test"]["accuracy"] - fp32["test"]["accuracy"]) < 0.02
