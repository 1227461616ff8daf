"""Cleaning (ftvs/data/cleaning.py): repairs, truncation, empty/missing/duplicate/leaked rows, each
counted."""

from data_example import prepare_offline, write_csv

from ftvs import data


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
    write_csv(
        src / "test.csv", [("duplicate text", "pos"), ("fresh test text", "neg"), ("another one", "pos")]
    )

    # --encoding utf-8: bad bytes are repaired and counted (the default would read the file as latin-1)
    meta = prepare_offline(src, tmp_path / "out", validation_split=0.25, encoding="utf-8")
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
