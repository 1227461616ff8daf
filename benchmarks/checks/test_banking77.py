"""Checks that need the real Banking77 CSVs (../shared/data/banking77 beside the repository): run by
`make extra-checks` where that folder exists; the main suite (tests/) tests the same code on a
Banking77-format folder of real 20 Newsgroups texts instead. Skipped where the folder is missing (or
FTVS_NO_SHARED=1); FTVS_BANKING77=DIR names another folder."""

import os
from collections import Counter
from pathlib import Path

import pytest

from ftvs import data

# beside the repository, or where FTVS_BANKING77 says (e.g. from a git worktree elsewhere)
BANKING77 = Path(
    os.environ.get("FTVS_BANKING77") or Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77"
)
needs_banking77 = pytest.mark.skipif(
    bool(os.environ.get("FTVS_NO_SHARED")) or not (BANKING77 / "train.csv").is_file(),
    reason=f"Banking77 CSVs not found at {BANKING77}",
)
META_KEYS = {
    "source", "label_names", "num_labels", "seed", "splits", "length_words", "length_tokens", "cleaning",
    "content_hash",
}  # fmt: skip


def prepare_offline(source, out, **kw):
    kw.setdefault("tokenizer", "none")
    return data.prepare(str(source), out, **kw)


@pytest.fixture(scope="module")
def banking77(tmp_path_factory):
    if not (BANKING77 / "train.csv").is_file():
        pytest.skip(f"Banking77 CSVs not found at {BANKING77}")
    out = tmp_path_factory.mktemp("b77") / "data"
    return out, prepare_offline(BANKING77, out)


@needs_banking77
def test_banking77_uses_official_test_and_stratified_val(banking77):
    out, meta = banking77
    assert META_KEYS <= set(meta)
    assert meta["num_labels"] == 77 == len(meta["label_names"])
    assert meta["label_names"] == sorted(meta["label_names"])
    assert meta["test_source"] == "source" and meta["val_source"] == "stratified"
    assert (meta["text_column"], meta["label_column"]) == ("text", "category")
    # official test split, minus the texts that also occur in train
    assert meta["splits"]["test"]["count"] == 3080 - meta["cleaning"]["leaked_test_dropped"]
    assert meta == data.load_metadata(out)

    train_texts, train_y = data.load_split(out, "train")
    val_texts, val_y = data.load_split(out, "val")
    test_texts, test_y = data.load_split(out, "test")
    assert len(val_texts) == meta["splits"]["val"]["count"]
    assert not set(train_texts) & set(val_texts) and not set(train_texts) & set(test_texts)
    assert len(set(train_texts)) == len(train_texts)
    assert set(train_y) == set(val_y) == set(range(77))
    # val is ~10% of the de-duplicated train data, and each class is within one example of 10%
    pool = Counter(train_y) + Counter(val_y)
    assert abs(len(val_y) - 0.1 * sum(pool.values())) <= 1
    for c, n in Counter(val_y).items():
        assert abs(n - 0.1 * pool[c]) <= 1
    for split in data.SPLITS:
        stats = meta["length_words"][split]
        assert set(stats) == {"mean", "median", "p95", "max"} and stats["max"] >= stats["p95"] > 0
        per_class = meta["splits"][split]["per_class"]
        assert list(per_class) == meta["label_names"]
        assert sum(per_class.values()) == meta["splits"][split]["count"]
    assert meta["content_hash"] == data.content_hash(out)


@needs_banking77
def test_banking77_deterministic_and_max_train_keeps_val_test(banking77, tmp_path):
    out, meta = banking77
    again = prepare_offline(BANKING77, tmp_path / "again")
    assert again["content_hash"] == meta["content_hash"]
    other_seed = prepare_offline(BANKING77, tmp_path / "seed1", seed=1)
    assert other_seed["content_hash"] != meta["content_hash"]

    small = prepare_offline(BANKING77, tmp_path / "small", max_train_examples=770)
    assert small["splits"]["train"]["count"] == 770
    assert all(n >= 1 for n in small["splits"]["train"]["per_class"].values())
    for split in ("val", "test"):
        assert (tmp_path / "small" / f"{split}.jsonl").read_bytes() == (out / f"{split}.jsonl").read_bytes()
    full_train = set(data.load_split(out, "train")[0])
    assert set(data.load_split(tmp_path / "small", "train")[0]) <= full_train


#


@needs_banking77
def test_every_preset_stays_inside_half_to_ten_million_parameters_on_banking77():
    import csv

    from ftvs.arms import TrimmedTokenizer, scratch_model_config
    from ftvs.config import build_config
    from ftvs.model import PRESETS, ScratchClassifier
    from ftvs.pretrained import load_tokenizer

    with open(BANKING77 / "train.csv", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    tok = TrimmedTokenizer.fit(load_tokenizer("smollm2-135m"), texts, max_length=128, max_vocab=16000,
                               name="smollm2-135m")  # fmt: skip
    assert 1000 < tok.vocab_size < 16000
    cfg = build_config({}, {"data": "x", "output_dir": "y"})
    counts = {}
    for preset in PRESETS:
        cfg.preset = preset
        counts[preset] = ScratchClassifier(scratch_model_config(cfg, tok.vocab_size, 77)).num_parameters()[
            "total"
        ]
        assert 500_000 <= counts[preset] <= 10_000_000, (preset, counts[preset])
    assert counts["tiny"] < counts["small"] < counts["medium"] < counts["large"]
