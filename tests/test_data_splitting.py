"""Stratified samplers (ftvs/data/splitting.py): held-out splits, nested train subsets, eval caps."""

import math
from collections import Counter

from data_example import class_rows, prepare_offline, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from ftvs import data

# --------------------------------------------------------------------------------------------------
# Nested subsampling for the data-size sweep
# --------------------------------------------------------------------------------------------------


def test_subsample_train_is_nested_and_keeps_val_test(tmp_path):
    write_csv(tmp_path / "d.csv", class_rows({"a": 60, "b": 30, "c": 7}))
    full = tmp_path / "full"
    prepare_offline(tmp_path / "d.csv", full)
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
# The study's caps: stratified_cap and cap_eval_splits
# --------------------------------------------------------------------------------------------------


def test_stratified_cap_is_exact_proportional_and_deterministic():
    labels = [0] * 50 + [1] * 30 + [2] * 20 + [3] * 1
    idx = data.stratified_cap(labels, 10, seed=0)
    assert len(idx) == 10 and idx == sorted(idx) == data.stratified_cap(labels, 10, seed=0)
    counts = Counter(labels[i] for i in idx)
    assert counts[3] == 1 and counts[0] >= counts[1] >= counts[2] >= 1
    assert data.stratified_cap(labels, 10, seed=1) != idx
    assert data.stratified_cap(labels, 1000, seed=0) == list(range(len(labels)))


def test_cap_eval_splits_caps_val_and_test_in_place(tmp_path):
    write_csv(tmp_path / "d.csv", class_rows({"a": 60, "b": 40, "c": 20}))
    out = tmp_path / "o"
    prepare_offline(tmp_path / "d.csv", out)
    train_before = (out / "train.jsonl").read_bytes()
    test_before = data.load_split(out, "test")
    meta = data.cap_eval_splits(out, max_val=5, max_test=9, seed=0)
    texts, labels = data.load_split(out, "test")
    assert len(texts) == 9 and set(zip(texts, labels)) <= set(zip(*test_before))
    assert set(labels) == {0, 1, 2}  # stratified: every class kept
    assert len(data.load_split(out, "val")[0]) == 5
    assert (out / "train.jsonl").read_bytes() == train_before
    assert meta == data.load_metadata(out) and meta["content_hash"] == data.content_hash(out)
    assert meta["splits"]["test"]["count"] == 9 and meta["eval_caps"]["test_before_cap"] == len(
        test_before[0]
    )
    assert data.cap_eval_splits(out, max_val=None, max_test=100) == meta  # nothing to cap: unchanged
