"""Source formats (ftvs/data/sources.py): local JSONL/parquet files, Hub datasets, the offline error."""

import json

import pytest
from data_example import prepare_offline

from ftvs import data
from ftvs.data import sources
from ftvs.errors import FtvsError


def test_jsonl_and_parquet_with_int_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"sentence": f"int labelled {i}", "target": i % 3} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    meta = prepare_offline(tmp_path / "d.jsonl", tmp_path / "o1")
    assert meta["label_names"] == ["0", "1", "2"]
    assert (meta["text_column"], meta["label_column"]) == ("sentence", "target")
    texts, labels = data.load_split(tmp_path / "o1", "test")
    assert all(int(t.split()[-1]) % 3 == y for t, y in zip(texts, labels))

    table = pa.table({"content": [r["sentence"] for r in rows], "class": [r["target"] + 1 for r in rows]})
    pq.write_table(table, tmp_path / "d.parquet")
    meta = prepare_offline(tmp_path / "d.parquet", tmp_path / "o2")
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
    monkeypatch.setattr(sources, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, config=None: calls.append((name, config)) or fake
    )
    meta = prepare_offline("hf:someone/sentiment:cfg", tmp_path / "hf")
    assert calls == [("someone/sentiment", "cfg")]
    assert meta["label_names"] == ["neg", "neu", "pos"]
    assert meta["val_source"] == "source" and meta["splits"]["val"]["count"] == 9
    assert meta["test_source"] == "stratified"  # the test split had only -1 labels
    assert "test_source_ignored" in meta["notes"]
    assert meta["splits"]["test"]["count"] == 12  # 20% of 60


def test_hf_offline_error_names_alternatives(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(FtvsError) as info:
        prepare_offline("hf:ftvs-test/surely-not-cached-anywhere", tmp_path / "o")
    msg = str(info.value)
    assert "could not download" in msg and "offline" in msg
    assert "20newsgroups" in msg and "sms_spam" in msg and "CSV" in msg
