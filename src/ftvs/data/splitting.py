"""Every stratified sampler: held-out splits, train caps, nested train subsets, eval caps."""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ftvs.data.folder import (
    SPLITS,
    check_output_dir,
    content_hash,
    load_metadata,
    load_split,
    load_tokenizer,
    split_stats,
    staging_dir,
    write_split,
)
from ftvs.data.unlabeled import UNLABELED
from ftvs.errors import FtvsError
from ftvs.fileio import atomic_write_bytes, write_json

# --------------------------------------------------------------------------------------------------
# Stratified splitting
# --------------------------------------------------------------------------------------------------


def _allocate(class_counts: dict, fraction: float, lo_one: bool, hi_all_but_one: bool) -> dict:
    """How many examples of each class go to the held-out side.

    Largest-remainder rounding: each class gets floor or ceil of `fraction * n_class`, with the total
    equal to round(fraction * n). Then each class is clamped to at least 1 (every class is evaluated)
    and, for a split, at most n_class - 1 (every class stays trainable). For n_class >= 2 and
    0 < fraction < 1 the clamp never leaves {floor, ceil}, so each class stays within one example of
    its exact proportional share.
    """
    exact = {c: fraction * n for c, n in class_counts.items()}
    alloc = {c: math.floor(x + 1e-9) for c, x in exact.items()}
    extra = round(fraction * sum(class_counts.values())) - sum(alloc.values())
    by_remainder = sorted(class_counts, key=lambda c: (-(exact[c] - alloc[c]), str(c)))
    for c in by_remainder[: max(extra, 0)]:
        if exact[c] - alloc[c] > 1e-9:
            alloc[c] += 1
    for c, n in class_counts.items():
        if lo_one:
            alloc[c] = max(alloc[c], 1)
        if hi_all_but_one:
            alloc[c] = min(alloc[c], n - 1)
        alloc[c] = min(alloc[c], n)
    return alloc


def stratified_split(labels, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into (kept, held_out) with per-class proportions preserved.

    Deterministic for a given seed; both index lists come back in ascending (original) order so the
    written files keep the source order. Every class needs at least 2 examples (one per side).
    """
    if not 0.0 < fraction < 1.0:
        raise FtvsError(f"split fraction must be between 0 and 1 (exclusive), got {fraction}")
    counts = Counter(labels)
    small = sorted((n, str(c)) for c, n in counts.items() if n < 2)
    if small:
        n, c = small[0]
        raise FtvsError(
            f"class {c!r} has only {n} example(s), too few for a stratified split (needs 2); "
            "drop or merge that class, or add examples of it"
        )
    held = _allocate(counts, fraction, lo_one=True, hi_all_but_one=True)
    return _pick_per_class(labels, held, seed)


def _pick_per_class(labels, per_class: dict, seed: int) -> tuple[list[int], list[int]]:
    by_class: dict = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in sorted(by_class, key=lambda k: (isinstance(k, str), k)):
        idx = np.array(by_class[c])
        chosen.extend(int(i) for i in rng.permutation(idx)[: per_class[c]])
    chosen_set = set(chosen)
    rest = [i for i in range(len(labels)) if i not in chosen_set]
    return rest, sorted(chosen)


def stratified_subsample(labels, n_keep: int, seed: int) -> list[int]:
    """Indices of a stratified subsample of exactly ~n_keep examples (at least one per class)."""
    counts = Counter(labels)
    if n_keep < len(counts):
        raise FtvsError(
            f"--max-train-examples {n_keep} is smaller than the number of classes ({len(counts)}); "
            f"use at least {len(counts)}"
        )
    keep = _allocate(counts, n_keep / len(labels), lo_one=True, hi_all_but_one=False)
    # The "at least one per class" clamp can overshoot N; give the surplus back from the biggest classes.
    while sum(keep.values()) > n_keep:
        biggest = max(keep, key=lambda c: (keep[c], str(c)))
        keep[biggest] -= 1
    _, chosen = _pick_per_class(labels, keep, seed)
    return chosen


def nested_subset(labels, fraction: float, seed: int) -> list[int]:
    """Sorted indices of a stratified `fraction` of `labels`, nested across fractions (same seed): each
    class gets one fixed seeded permutation and the subset takes its first ceil(fraction * n_class)
    examples (at least 1), so a data-size sweep adds examples instead of redrawing them."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    chosen: list[int] = []
    for c, idx in sorted(by_class.items()):
        perm = np.random.default_rng([seed, c]).permutation(len(idx))  # per class: independent of others
        k = min(len(idx), max(1, math.ceil(fraction * len(idx) - 1e-9)))
        chosen.extend(idx[j] for j in perm[:k])
    return sorted(chosen)


def stratified_cap(labels, n_keep: int, seed: int) -> list[int]:
    """Sorted indices of a stratified subsample of exactly min(n_keep, n) examples (>= 1 per class when
    n_keep allows), proportional per class with largest-remainder rounding.

    Unlike `stratified_subsample` it never refuses (fewer kept than classes just drops classes) and draws
    with a per-class seed; the study's eval caps use it and changing it would change their test sets."""
    n = len(labels)
    if n_keep >= n:
        return list(range(n))
    by: dict = defaultdict(list)
    for i, y in enumerate(labels):
        by[y].append(i)
    classes = sorted(by)
    quota = {c: n_keep * len(by[c]) / n for c in classes}
    keep = {c: min(len(by[c]), int(quota[c])) for c in classes}
    if n_keep >= len(classes):
        for c in classes:
            keep[c] = max(keep[c], 1)
    rest = n_keep - sum(keep.values())
    order = sorted(classes, key=lambda c: (-(quota[c] - int(quota[c])), -len(by[c]), c))
    while rest > 0:
        grew = False
        for c in order:
            if rest and keep[c] < len(by[c]):
                keep[c] += 1
                rest -= 1
                grew = True
        if not grew:
            break
    while rest < 0:  # the "one per class" floor overshot: take back from the largest allocations
        c = max(classes, key=lambda c: (keep[c], c))
        keep[c] -= 1
        rest += 1
    chosen = []
    for c in classes:
        perm = np.random.default_rng([seed, len(by[c]), classes.index(c)]).permutation(len(by[c]))
        chosen.extend(by[c][j] for j in perm[: keep[c]])
    return sorted(chosen)


# --------------------------------------------------------------------------------------------------
# Derived folders: a nested train subset, capped val/test
# --------------------------------------------------------------------------------------------------


def subsample_train(data_dir, out_dir, fraction: float, seed: int = 0, tokenizer="auto") -> dict:
    """Write a copy of a prepared folder whose train split is a nested stratified `fraction` of it.

    Nested means the subset for a smaller fraction is contained in the one for a larger fraction (same
    seed): each class gets one fixed seeded permutation and the subset takes its first
    ceil(fraction * n_class) examples (at least 1). So a data-size sweep adds examples instead of
    redrawing them. val/test are copied byte for byte; metadata gains `train_fraction` and
    `parent_data_dir`. `tokenizer="auto"` reuses the parent's tokenizer for token statistics.
    """
    if not 0.0 < fraction <= 1.0:
        raise FtvsError(f"train fraction must be in (0, 1], got {fraction}")
    src = Path(data_dir)
    meta = load_metadata(src)
    texts, labels = load_split(src, "train")
    out = Path(out_dir)
    check_output_dir(out, protect=[src])

    chosen = nested_subset(labels, fraction, seed)
    sub_texts = [texts[i] for i in chosen]
    sub_labels = [labels[i] for i in chosen]

    tok_name = meta.get("tokenizer") if tokenizer == "auto" else tokenizer
    tok = load_tokenizer(tok_name) if meta.get("length_tokens") is not None or tokenizer != "auto" else None
    stats = split_stats({"train": (sub_texts, sub_labels)}, meta["label_names"], tok)
    new = json.loads(json.dumps(meta))
    new["splits"]["train"] = stats["splits"]["train"]
    new["length_words"]["train"] = stats["length_words"]["train"]
    if tok is None:
        new["length_tokens"] = None
        new["tokenizer"] = None
    else:
        if new.get("length_tokens") is None:  # parent had no token stats: only train is known
            new["length_tokens"] = {}
        new["length_tokens"]["train"] = stats["length_tokens"]["train"]
        new["tokenizer"] = tok_name if isinstance(tok_name, str) else None
    new["train_fraction"] = fraction
    new["subsample_seed"] = seed
    new["parent_data_dir"] = str(src.resolve())
    new["parent_content_hash"] = meta.get("content_hash")
    with staging_dir(out) as tmp:
        write_split(tmp, "train", sub_texts, sub_labels)
        for name in ("val.jsonl", "test.jsonl", UNLABELED):
            if (src / name).is_file():
                atomic_write_bytes(tmp / name, (src / name).read_bytes())
        new["content_hash"] = content_hash(tmp)
        write_json(tmp / "metadata.json", new)
    return new


def cap_eval_splits(data_dir, max_val: int | None, max_test: int | None, seed: int = 0) -> dict:
    """Stratified caps on val/test of a prepared folder, in place (written to a temp folder, swapped in).

    Used by small studies (CPU presets) where scoring thousands of test texts with a pre-trained LM would
    cost more than training. metadata.json gains `eval_caps`."""
    data_dir = Path(data_dir)
    meta = load_metadata(data_dir)
    changed, before = {}, {}
    for split, cap in (("val", max_val), ("test", max_test)):
        texts, labels = load_split(data_dir, split)
        before[split] = len(texts)
        if cap and cap < len(texts):
            idx = stratified_cap(labels, cap, seed + (11 if split == "val" else 13))
            changed[split] = ([texts[i] for i in idx], [labels[i] for i in idx])
    if not changed:
        return meta
    _restat(meta, changed)
    meta["eval_caps"] = {
        "max_val_examples": max_val,
        "max_test_examples": max_test,
        "seed": seed,
        "val_before_cap": before["val"],
        "test_before_cap": before["test"],
    }
    names = [f"{s}.jsonl" for s in SPLITS if s not in changed] + [UNLABELED]
    files = {n: (data_dir / n).read_bytes() for n in names if (data_dir / n).is_file()}
    with staging_dir(data_dir) as tmp:
        for name, raw in files.items():
            atomic_write_bytes(tmp / name, raw)
        for split, (texts, labels) in changed.items():
            write_split(tmp, split, texts, labels)
        meta["content_hash"] = content_hash(tmp)
        write_json(tmp / "metadata.json", meta)
    return meta


def _restat(meta: dict, changed: dict) -> None:
    """Recompute the statistics in `meta` of the splits in `changed`, in place."""
    tok = None
    if meta.get("length_tokens") and meta.get("tokenizer"):
        with contextlib.suppress(Exception):  # statistics only: never fail a study over them
            tok = load_tokenizer(meta["tokenizer"])
    stats = split_stats(changed, meta["label_names"], tok)
    for split in changed:
        meta["splits"][split] = stats["splits"][split]
        meta["length_words"][split] = stats["length_words"][split]
        if meta.get("length_tokens") is not None:
            if tok is not None:
                meta["length_tokens"][split] = stats["length_tokens"][split]
            else:
                meta["length_tokens"].pop(split, None)
