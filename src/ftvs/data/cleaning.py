"""Column picking, text cleaning and label keys: what `ftvs prepare` removes or repairs, each step counted."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ftvs.data.sources import Table, repair_text
from ftvs.errors import FtvsError, closest

MAX_CHARS = 20_000  # texts longer than this are cut: a 1 MB "text" is a data bug, not a training example
# Column names tried in order (case-insensitive) when --text-column / --label-column are not given.
TEXT_CANDIDATES = (
    "text", "sentence", "content", "review", "body", "message", "sms", "document", "utterance",
    "query", "question", "tweet", "comment", "sentence1", "review_text", "abstract",
)  # fmt: skip
LABEL_CANDIDATES = (
    "label", "labels", "category", "class", "intent", "target", "sentiment", "topic", "coarse_label",
    "y", "label_text", "class_label",
)  # fmt: skip
_INT_STRING = re.compile(r"-?[0-9]+")


# --------------------------------------------------------------------------------------------------
# Columns, cleaning, labels
# --------------------------------------------------------------------------------------------------


def pick_column(table: Table, explicit: str | None, candidates, kind: str, avoid: str | None = None) -> str:
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
    text = repair_text(str(value))[0].strip()
    if not text or text.lower() in ("nan", "none", "null"):
        return None
    if _INT_STRING.fullmatch(text) and str(int(text)) == text:
        return int(text)
    return text


@dataclass
class Rows:
    texts: list[str]
    labels: list  # label keys (int/str), or ClassLabel ids


def clean_split(table: Table, text_col: str, label_col: str, max_chars: int, counts: Counter) -> Rows:
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
        text = clean_text(raw_text, max_chars, counts)
        if not text:
            counts["empty_dropped"] += 1
            continue
        if label is None:
            counts["missing_label_dropped"] += 1
            continue
        texts.append(text)
        labels.append(label)
    return Rows(texts, labels)


def clean_text(raw_text, max_chars: int, counts: Counter) -> str:
    """One text repaired, whitespace-normalised and truncated ("" when empty), each change counted."""
    text = "" if _is_missing(raw_text) else str(raw_text)
    text, repaired = repair_text(text)
    counts["invalid_utf8_repaired"] += repaired
    text = " ".join(text.split())  # collapses runs of any whitespace (incl. newlines) and strips
    if len(text) > max_chars:
        text = text[:max_chars].rstrip()
        counts["truncated"] += 1
    return text


def drop_duplicates(rows: Rows) -> tuple[Rows, int]:
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(rows.texts):
        if t not in seen:
            seen.add(t)
            keep.append(i)
    return take_rows(rows, keep), len(rows.texts) - len(keep)


def drop_known(rows: Rows, known: set[str]) -> tuple[Rows, int]:
    keep = [i for i, t in enumerate(rows.texts) if t not in known]
    return take_rows(rows, keep), len(rows.texts) - len(keep)


def take_rows(rows: Rows, idx) -> Rows:
    return Rows([rows.texts[i] for i in idx], [rows.labels[i] for i in idx])


def label_names_of(train: Rows, class_names: list[str] | None) -> list[str]:
    if class_names is not None:
        return list(class_names)
    keys = set(train.labels)
    return [str(k) for k in sorted(keys, key=lambda k: (isinstance(k, str), k))]


def to_ids(rows: Rows, names: list[str], class_names: list[str] | None, split: str, origin: str) -> list[int]:
    if class_names is not None:
        bad = sorted({y for y in rows.labels if y >= len(names)})
        if bad:
            raise FtvsError(
                f"{origin}: label ids {bad[:10]} are outside the {len(names)} class names; fix the data"
            )
        return list(rows.labels)
    index = {name: i for i, name in enumerate(names)}
    return [index[str(y)] for y in rows.labels]


def check_seen(rows: Rows, train_keys: set, split: str, origin: str, names_of) -> None:
    unseen = sorted({y for y in rows.labels if y not in train_keys}, key=lambda k: (isinstance(k, str), k))
    if unseen:
        shown = ", ".join(repr(names_of(y)) for y in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        n = sum(1 for y in rows.labels if y not in train_keys)
        raise FtvsError(
            f"labels in {split} unseen in train: {shown} ({n} {split} rows in {origin}); "
            f"drop those rows or remap them to a train label"
        )


def check_class_sizes(rows: Rows, needed: int, names_of, what: str, duplicates: int = 0) -> None:
    """Every class has `needed` training rows; `duplicates`: how many duplicate texts were dropped before."""
    counts = Counter(rows.labels)
    small = sorted(((n, names_of(c)) for c, n in counts.items() if n < needed), key=lambda t: (t[0], t[1]))
    if small:
        n, name = small[0]
        more = f" (and {len(small) - 1} more classes)" if len(small) > 1 else ""
        dropped = (
            f" after {duplicates:,} duplicate text(s) were dropped ({len(rows.texts):,} distinct left)"
            if duplicates
            else ""
        )
        raise FtvsError(
            f"class {name!r} has only {n} training example(s){more}{dropped} but splitting off {what} needs "
            f"at least {needed} per class (one per side); drop or merge that class, or add examples of it"
        )
