"""The from-scratch arm: model sizes on a real Banking77-sized vocabulary, the trimmed tokenizer, export and
reload."""

import torch
from builders import intents_csv_dir

from ftvs.arms import TrimmedTokenizer, load_arm, scratch_model_config
from ftvs.cli import main
from ftvs.config import build_config
from ftvs.data import load_split
from ftvs.model import PRESETS, ScratchClassifier
from ftvs.pretrained import load_tokenizer


def test_every_preset_stays_inside_half_to_ten_million_parameters_on_real_texts():
    texts, _ = load_split_from_csv()
    tok = TrimmedTokenizer.fit(
        load_tokenizer("smollm2-135m"), texts, max_length=128, max_vocab=16000, name="smollm2-135m"
    )
    assert 1000 < tok.vocab_size < 16000
    cfg = build_config({}, {"data": "x", "output_dir": "y"})
    counts = {}
    for preset in PRESETS:
        cfg.preset = preset
        counts[preset] = ScratchClassifier(scratch_model_config(cfg, tok.vocab_size, 20)).num_parameters()[
            "total"
        ]
        assert 500_000 <= counts[preset] <= 10_000_000, (preset, counts[preset])
    assert counts["tiny"] < counts["small"] < counts["medium"] < counts["large"]


def load_split_from_csv():
    import csv

    with open(intents_csv_dir() / "train.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:500]  # ~5.5k SmolLM2 tokens: about Banking77's vocabulary
    return [r["text"] for r in rows], [r["category"] for r in rows]


def test_exported_model_reloads_and_predicts_consistently(trained_run, intents_small, capsys):
    arm = load_arm(trained_run)
    texts, _ = load_split(intents_small, "test")
    batch = arm.collate(arm.encode(texts[:8]))
    with torch.no_grad():
        a = arm.model(**batch)
        b = load_arm(trained_run / "model").model(**batch)
    assert torch.equal(a, b)
    assert (
        main(["predict", str(trained_run), "My car engine makes a noise", "Which graphics card for my PC?"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    label, prob, _ = lines[0].split("\t", 2)
    assert label in arm.label_names and 0 < float(prob) <= 1


def test_lowercase_tokenizer_merges_case_and_survives_save_and_load(tmp_path):
    base = load_tokenizer("smollm2-135m")
    texts = ["My Card was declined", "my card was declined", "CARD PIN locked"]
    cased = TrimmedTokenizer.fit(base, texts, max_length=32, max_vocab=1000, name="smollm2-135m")
    lower = TrimmedTokenizer.fit(
        base, texts, max_length=32, max_vocab=1000, name="smollm2-135m", lowercase=True
    )
    assert lower.vocab_size < cased.vocab_size
    a, b = lower.encode(["My Card", "my card"], 32)
    assert a == b and 1 not in a
    lower.save(tmp_path)
    again = TrimmedTokenizer.load(tmp_path)
    assert again.lowercase and again.encode(["My CARD"], 32) == lower.encode(["my card"], 32)
