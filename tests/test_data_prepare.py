"""`ftvs prepare` end to end (ftvs/data/prepare.py) on real data sets plus small hand-written files.

Token statistics are skipped (`tokenizer="none"`) or use a tiny stand-in tokenizer so the file runs in
seconds without a pre-trained model.
"""

import argparse
import math
from collections import Counter
from pathlib import Path

import pytest
from builders import intents_csv_dir
from data_example import class_rows, prepare_offline, write_csv

from ftvs import data
from ftvs.errors import FtvsError

META_KEYS = {
    "source", "label_names", "num_labels", "seed", "splits", "length_words", "length_tokens", "cleaning",
    "content_hash",
}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# A local CSV folder with an official test split, in Banking77's format (text,category): real 20 Newsgroups
# posts (tests/builders.py); the same checks on the real Banking77 CSVs: benchmarks/checks/test_banking77.py
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("intents") / "data"
    return out, prepare_offline(intents_csv_dir(), out)


def test_csv_folder_uses_official_test_and_stratified_val(csv_folder):
    out, meta = csv_folder
    assert META_KEYS <= set(meta)
    assert meta["num_labels"] == 20 == len(meta["label_names"])
    assert meta["label_names"] == sorted(meta["label_names"])
    assert meta["test_source"] == "source" and meta["val_source"] == "stratified"
    assert (meta["text_column"], meta["label_column"]) == ("text", "category")
    # official test split, minus the texts that also occur in train
    assert meta["splits"]["test"]["count"] == 3000 - meta["cleaning"]["leaked_test_dropped"]
    assert meta == data.load_metadata(out)

    train_texts, train_y = data.load_split(out, "train")
    val_texts, val_y = data.load_split(out, "val")
    test_texts, test_y = data.load_split(out, "test")
    assert len(val_texts) == meta["splits"]["val"]["count"]
    assert not set(train_texts) & set(val_texts) and not set(train_texts) & set(test_texts)
    assert len(set(train_texts)) == len(train_texts)
    assert set(train_y) == set(val_y) == set(range(20))
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


def test_csv_folder_deterministic_and_max_train_keeps_val_test(csv_folder, tmp_path):
    out, meta = csv_folder
    again = prepare_offline(intents_csv_dir(), tmp_path / "again")
    assert again["content_hash"] == meta["content_hash"]
    other_seed = prepare_offline(intents_csv_dir(), tmp_path / "seed1", seed=1)
    assert other_seed["content_hash"] != meta["content_hash"]

    small = prepare_offline(intents_csv_dir(), tmp_path / "small", max_train_examples=200)
    assert small["splits"]["train"]["count"] == 200
    assert all(n >= 1 for n in small["splits"]["train"]["per_class"].values())
    for split in ("val", "test"):
        assert (tmp_path / "small" / f"{split}.jsonl").read_bytes() == (out / f"{split}.jsonl").read_bytes()
    full_train = set(data.load_split(out, "train")[0])
    assert set(data.load_split(tmp_path / "small", "train")[0]) <= full_train


# --------------------------------------------------------------------------------------------------
# Built-in offline data sets
# --------------------------------------------------------------------------------------------------


def test_20newsgroups_builtin(tmp_path):
    try:
        meta = prepare_offline("20newsgroups", tmp_path / "ng", max_train_examples=400)
    except FtvsError as e:
        pytest.skip(f"20newsgroups offline copy unavailable: {e}")
    assert meta["num_labels"] == 20 and meta["label_names"][0] == "alt.atheism"
    assert meta["test_source"] == "source" and meta["remove_headers"] is True
    assert meta["splits"]["train"]["count"] == 400
    assert meta["splits"]["test"]["count"] > 7000
    texts, _ = data.load_split(tmp_path / "ng", "test")
    assert not any(t.startswith("From:") for t in texts[:200])  # headers stripped


def test_sms_spam_builtin_stratified_test(tmp_path):
    try:
        meta = prepare_offline("sms_spam", tmp_path / "sms")
    except FtvsError as e:
        pytest.skip(f"sms_spam offline copy unavailable: {e}")
    assert meta["label_names"] == ["ham", "spam"]
    assert meta["test_source"] == "stratified" == meta["val_source"]
    sizes = {s: meta["splits"][s]["count"] for s in data.SPLITS}
    total = sum(sizes.values())
    assert abs(sizes["test"] - 0.2 * total) <= 2
    spam_share = {s: meta["splits"][s]["per_class"]["spam"] / sizes[s] for s in data.SPLITS}
    assert abs(spam_share["test"] - spam_share["train"]) < 0.01
    assert abs(spam_share["val"] - spam_share["train"]) < 0.01


def test_token_statistics_with_a_tokenizer_object(tmp_path):
    class CharPairs:  # stand-in tokenizer: one token per two characters
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(range(math.ceil(len(t) / 2))) for t in texts]}

    write_csv(tmp_path / "d.csv", class_rows({"a": 10, "b": 10}))
    meta = data.prepare(str(tmp_path / "d.csv"), tmp_path / "o", tokenizer=CharPairs())
    assert set(meta["length_tokens"]) == set(data.SPLITS)
    for split in data.SPLITS:
        texts, _ = data.load_split(tmp_path / "o", split)
        assert meta["length_tokens"][split]["max"] == max(math.ceil(len(t) / 2) for t in texts)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _error_cases(tmp: Path):
    """(name, source, kwargs, substring of the message)."""
    (tmp / "nodata").mkdir()
    (tmp / "nodata" / "readme.txt").write_text("hi")
    (tmp / "empty.csv").write_bytes(b"")
    write_csv(tmp / "cols.csv", class_rows({"a": 5, "b": 5}), header=("words", "tag"))
    write_csv(tmp / "nolabels.csv", [(f"t {i}", "") for i in range(10)])
    write_csv(tmp / "oneclass.csv", class_rows({"a": 10}))
    write_csv(tmp / "tiny.csv", class_rows({"a": 10, "b": 10, "rare": 2}))
    write_csv(tmp / "three.csv", class_rows({"a": 10, "b": 10, "c": 10}))
    unseen = tmp / "unseen"
    write_csv(unseen / "train.csv", class_rows({"a": 10, "b": 10}))
    write_csv(unseen / "test.csv", [("new one", "a"), ("stranger", "zebra")])
    return [
        ("missing path", tmp / "nope" / "x.csv", {}, "not found"),
        ("no train data", tmp / "nodata", {}, "no train data"),
        ("empty file", tmp / "empty.csv", {}, "empty"),
        ("named column absent", tmp / "cols.csv", {"text_column": "text", "label_column": "tag"},
         "available columns: words, tag"),
        ("no auto column", tmp / "cols.csv", {}, "--text-column"),
        ("labels all missing", tmp / "nolabels.csv", {}, "empty/NaN/None"),
        ("unseen test labels", unseen, {}, "unseen in train: 'zebra'"),
        ("one class", tmp / "oneclass.csv", {}, "one class only"),
        ("too few per class", tmp / "tiny.csv", {}, "'rare' has only 2"),
        ("unknown source", "20newsgroup", {}, "did you mean '20newsgroups'"),
        ("bad split", tmp / "oneclass.csv", {"validation_split": 1.5}, "--validation-split"),
        ("max train below classes", tmp / "three.csv", {"max_train_examples": 2},
         "smaller than the number of classes"),
    ]  # fmt: skip


def test_error_cases(tmp_path):
    for name, source, kw, needle in _error_cases(tmp_path):
        with pytest.raises(FtvsError) as info:
            prepare_offline(source, tmp_path / "out" / name.replace(" ", "_"), **kw)
        msg = str(info.value)
        assert needle in msg, f"{name}: {msg}"
        assert "\n" not in msg, name


def test_load_errors_and_output_guard(tmp_path):
    with pytest.raises(FtvsError, match="run `ftvs prepare"):
        data.load_metadata(tmp_path)
    with pytest.raises(FtvsError, match="run `ftvs prepare"):
        data.load_split(tmp_path, "train")
    with pytest.raises(FtvsError, match="did you mean 'test'"):
        data.load_split(tmp_path, "tset")
    (tmp_path / "keep.txt").write_text("precious")
    write_csv(tmp_path / "src" / "d.csv", class_rows({"a": 10, "b": 10}))
    with pytest.raises(FtvsError, match="not a prepared data folder"):
        prepare_offline(tmp_path / "src" / "d.csv", tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"


# --------------------------------------------------------------------------------------------------
# CLI hook
# --------------------------------------------------------------------------------------------------


def test_cli_prepare_prints_summary(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="ftvs")
    data.add_cli(parser.add_subparsers(dest="command"))
    write_csv(tmp_path / "d.csv", class_rows({"a": 20, "b": 20}, prefix="x" * 150))
    args = parser.parse_args(
        ["prepare", str(tmp_path / "d.csv"), "--output-dir", str(tmp_path / "o"), "--tokenizer", "none",
         "--validation-split", "0.2", "--seed", "5"]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "split" in out and "examples" in out and "tokens mean" in out
    assert out.count("[train]") == 2 and out.count("[test]") == 2
    assert all(len(line) < 140 for line in out.splitlines() if line.lstrip().startswith("["))
    meta = data.load_metadata(tmp_path / "o")
    assert meta["seed"] == 5 and meta["validation_split"] == 0.2
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", "x", "--output_dir", "o", "--test-split", "2"])
