"""Tests for `ftvs prepare` (src/ftvs/data.py) on real data sets plus small hand-written files.

Token statistics are skipped (`tokenizer="none"`) or use a tiny stand-in tokenizer so the file runs in
seconds without a pre-trained model.
"""

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftvs import data
from ftvs.errors import FtvsError

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
needs_banking77 = pytest.mark.skipif(
    not (BANKING77 / "train.csv").is_file(), reason=f"Banking77 CSVs not found at {BANKING77}"
)
META_KEYS = {
    "source", "label_names", "num_labels", "seed", "splits", "length_words", "length_tokens", "cleaning",
    "content_hash",
}  # fmt: skip


def _prepare(source, out, **kw):
    kw.setdefault("tokenizer", "none")
    return data.prepare(str(source), out, **kw)


def _write_csv(path: Path, rows, header=("text", "label")) -> Path:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _rows(n_per_class: dict[str, int], prefix="ex"):
    return [(f"{prefix} {c} number {i}", c) for c, n in n_per_class.items() for i in range(n)]


# --------------------------------------------------------------------------------------------------
# Banking77 (local CSV folder with an official test split)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def banking77(tmp_path_factory):
    if not (BANKING77 / "train.csv").is_file():
        pytest.skip(f"Banking77 CSVs not found at {BANKING77}")
    out = tmp_path_factory.mktemp("b77") / "data"
    return out, _prepare(BANKING77, out)


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
    again = _prepare(BANKING77, tmp_path / "again")
    assert again["content_hash"] == meta["content_hash"]
    other_seed = _prepare(BANKING77, tmp_path / "seed1", seed=1)
    assert other_seed["content_hash"] != meta["content_hash"]

    small = _prepare(BANKING77, tmp_path / "small", max_train_examples=770)
    assert small["splits"]["train"]["count"] == 770
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
        meta = _prepare("20newsgroups", tmp_path / "ng", max_train_examples=400)
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
        meta = _prepare("sms_spam", tmp_path / "sms")
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


# --------------------------------------------------------------------------------------------------
# Cleaning
# --------------------------------------------------------------------------------------------------


def test_cleaning_counts_and_repairs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    huge = "word " * 220_000  # > 1 MB of text in one cell
    lines = [
        b"text,label",
        b"caf\xe9 au lait is nice,pos",  # Latin-1 byte: invalid UTF-8
        b'"  spaced   out \t text\n on two lines ",neg',
        b'"   ",pos',  # empty after normalisation
        b"a text without a label,",  # missing label
        b"duplicate text,pos",
        b"duplicate   text,neg",  # duplicate after whitespace normalisation
        b'"' + huge.encode() + b'",neg',
    ]
    lines += [f"positive example {i},pos".encode() for i in range(6)]
    lines += [f"negative example {i},neg".encode() for i in range(6)]
    (src / "train.csv").write_bytes(b"\n".join(lines) + b"\n")
    _write_csv(
        src / "test.csv", [("duplicate text", "pos"), ("fresh test text", "neg"), ("another one", "pos")]
    )

    meta = _prepare(src, tmp_path / "out", validation_split=0.25)
    c = meta["cleaning"]
    assert c["invalid_utf8_repaired"] == 1
    assert c["empty_dropped"] == 1
    assert c["missing_label_dropped"] == 1
    assert c["duplicates_dropped"] == 1
    assert c["leaked_test_dropped"] == 1
    assert c["truncated"] == 1
    assert meta["label_names"] == ["neg", "pos"]

    texts = [t for s in data.SPLITS for t in data.load_split(tmp_path / "out", s)[0]]
    assert "caf\ufffd au lait is nice" in texts
    assert "spaced out text on two lines" in texts
    assert max(len(t) for t in texts) <= data.MAX_CHARS
    assert all(t == " ".join(t.split()) and t for t in texts)
    test_texts, _ = data.load_split(tmp_path / "out", "test")
    assert test_texts == ["fresh test text", "another one"]


def test_jsonl_and_parquet_with_int_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"sentence": f"int labelled {i}", "target": i % 3} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    meta = _prepare(tmp_path / "d.jsonl", tmp_path / "o1")
    assert meta["label_names"] == ["0", "1", "2"]
    assert (meta["text_column"], meta["label_column"]) == ("sentence", "target")
    texts, labels = data.load_split(tmp_path / "o1", "test")
    assert all(int(t.split()[-1]) % 3 == y for t, y in zip(texts, labels))

    table = pa.table({"content": [r["sentence"] for r in rows], "class": [r["target"] + 1 for r in rows]})
    pq.write_table(table, tmp_path / "d.parquet")
    meta = _prepare(tmp_path / "d.parquet", tmp_path / "o2")
    assert meta["label_names"] == ["1", "2", "3"]  # ids are indices into label_names


def test_hf_source_uses_class_label_names_and_ignores_unlabelled_test(tmp_path, monkeypatch):
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "neu", "pos"])}
    )

    def split(n, offset, label=None):
        return datasets.Dataset.from_dict(
            {
                "text": [f"hub text {offset + i}" for i in range(n)],
                "label": [label if label is not None else i % 3 for i in range(n)],
            },
            features=features,
        )

    fake = datasets.DatasetDict(
        {"train": split(60, 0), "validation": split(9, 100), "test": split(9, 200, -1)}
    )
    calls = []
    monkeypatch.setattr(data, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, config=None: calls.append((name, config)) or fake
    )
    meta = _prepare("hf:someone/sentiment:cfg", tmp_path / "hf")
    assert calls == [("someone/sentiment", "cfg")]
    assert meta["label_names"] == ["neg", "neu", "pos"]
    assert meta["val_source"] == "source" and meta["splits"]["val"]["count"] == 9
    assert meta["test_source"] == "stratified"  # the test split had only -1 labels
    assert "test_source_ignored" in meta["notes"]
    assert meta["splits"]["test"]["count"] == 12  # 20% of 60


def test_token_statistics_with_a_tokenizer_object(tmp_path):
    class CharPairs:  # stand-in tokenizer: one token per two characters
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(range(math.ceil(len(t) / 2))) for t in texts]}

    _write_csv(tmp_path / "d.csv", _rows({"a": 10, "b": 10}))
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
    _write_csv(tmp / "cols.csv", _rows({"a": 5, "b": 5}), header=("words", "tag"))
    _write_csv(tmp / "nolabels.csv", [(f"t {i}", "") for i in range(10)])
    _write_csv(tmp / "oneclass.csv", _rows({"a": 10}))
    _write_csv(tmp / "tiny.csv", _rows({"a": 10, "b": 10, "rare": 2}))
    _write_csv(tmp / "three.csv", _rows({"a": 10, "b": 10, "c": 10}))
    unseen = tmp / "unseen"
    _write_csv(unseen / "train.csv", _rows({"a": 10, "b": 10}))
    _write_csv(unseen / "test.csv", [("new one", "a"), ("stranger", "zebra")])
    return [
        ("missing path", tmp / "nope" / "x.csv", {}, "not found"),
        ("no train data", tmp / "nodata", {}, "no train data"),
        ("empty file", tmp / "empty.csv", {}, "empty"),
        ("named column absent", tmp / "cols.csv", {"text_column": "text", "label_column": "tag"}, "available columns: words, tag"),
        ("no auto column", tmp / "cols.csv", {}, "--text-column"),
        ("labels all missing", tmp / "nolabels.csv", {}, "empty/NaN/None"),
        ("unseen test labels", unseen, {}, "unseen in train: 'zebra'"),
        ("one class", tmp / "oneclass.csv", {}, "one class only"),
        ("too few per class", tmp / "tiny.csv", {}, "'rare' has only 2"),
        ("unknown source", "20newsgroup", {}, "did you mean '20newsgroups'"),
        ("bad split", tmp / "oneclass.csv", {"validation_split": 1.5}, "--validation-split"),
        ("max train below classes", tmp / "three.csv", {"max_train_examples": 2}, "smaller than the number of classes"),
    ]  # fmt: skip


def test_error_cases(tmp_path):
    for name, source, kw, needle in _error_cases(tmp_path):
        with pytest.raises(FtvsError) as info:
            _prepare(source, tmp_path / "out" / name.replace(" ", "_"), **kw)
        msg = str(info.value)
        assert needle in msg, f"{name}: {msg}"
        assert "\n" not in msg, name


def test_hf_offline_error_names_alternatives(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(FtvsError) as info:
        _prepare("hf:ftvs-test/surely-not-cached-anywhere", tmp_path / "o")
    msg = str(info.value)
    assert "could not download" in msg and "offline" in msg
    assert "20newsgroups" in msg and "sms_spam" in msg and "CSV" in msg


def test_load_errors_and_output_guard(tmp_path):
    with pytest.raises(FtvsError, match="run `ftvs prepare"):
        data.load_metadata(tmp_path)
    with pytest.raises(FtvsError, match="run `ftvs prepare"):
        data.load_split(tmp_path, "train")
    with pytest.raises(FtvsError, match="did you mean 'test'"):
        data.load_split(tmp_path, "tset")
    (tmp_path / "keep.txt").write_text("precious")
    _write_csv(tmp_path / "src" / "d.csv", _rows({"a": 10, "b": 10}))
    with pytest.raises(FtvsError, match="not a prepared data folder"):
        _prepare(tmp_path / "src" / "d.csv", tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"


# --------------------------------------------------------------------------------------------------
# Nested subsampling for the data-size sweep
# --------------------------------------------------------------------------------------------------


def test_subsample_train_is_nested_and_keeps_val_test(tmp_path):
    _write_csv(tmp_path / "d.csv", _rows({"a": 60, "b": 30, "c": 7}))
    full = tmp_path / "full"
    _prepare(tmp_path / "d.csv", full)
    small = data.subsample_train(full, tmp_path / "s10", 0.1, seed=3)
    big = data.subsample_train(full, tmp_path / "s50", 0.5, seed=3)
    t10 = data.load_split(tmp_path / "s10", "train")
    t50 = data.load_split(tmp_path / "s50", "train")
    assert set(zip(*t10)) <= set(zip(*t50))
    assert small["train_fraction"] == 0.1 and small["parent_data_dir"] == str(full.resolve())
    per_class_full = data.load_metadata(full)["splits"]["train"]["per_class"]
    for name, n in small["splits"]["train"]["per_class"].items():
        assert n == max(1, math.ceil(0.1 * per_class_full[name]))
    for split in ("val", "test"):
        for sub in ("s10", "s50"):
            assert (tmp_path / sub / f"{split}.jsonl").read_bytes() == (full / f"{split}.jsonl").read_bytes()
    assert big["content_hash"] == data.content_hash(tmp_path / "s50") != small["content_hash"]
    again = data.subsample_train(full, tmp_path / "s10b", 0.1, seed=3)
    assert again["content_hash"] == small["content_hash"]


# --------------------------------------------------------------------------------------------------
# Stratified split property
# --------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    class_sizes=st.lists(st.integers(min_value=2, max_value=40), min_size=2, max_size=6),
    fraction=st.floats(min_value=0.05, max_value=0.6),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_stratified_split_properties(class_sizes, fraction, seed):
    labels = [c for c, n in enumerate(class_sizes) for _ in range(n)]
    labels = [labels[(i * 7919) % len(labels)] for i in range(len(labels))]  # interleave classes
    kept, held = data.stratified_split(labels, fraction, seed)
    assert not set(kept) & set(held)
    assert sorted(kept + held) == list(range(len(labels)))
    assert (kept, held) == data.stratified_split(labels, fraction, seed)
    held_counts = Counter(labels[i] for i in held)
    for c, n in enumerate(class_sizes):
        assert abs(held_counts[c] - fraction * n) <= 1 + 1e-9
        assert 1 <= held_counts[c] <= n - 1


# --------------------------------------------------------------------------------------------------
# CLI hook
# --------------------------------------------------------------------------------------------------


def test_cli_prepare_prints_summary(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="ftvs")
    data.add_cli(parser.add_subparsers(dest="command"))
    _write_csv(tmp_path / "d.csv", _rows({"a": 20, "b": 20}, prefix="x" * 150))
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
