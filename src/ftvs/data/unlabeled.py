"""Unlabeled texts of a prepared folder (`unlabeled.jsonl`, one `{"text": str}` a line): what a distilled
student learns from with its teacher's probabilities only (docs/distill.md).

Two sources, both cleaned like the labelled splits and never holding a val or test text (nothing leaks
into model selection or scoring) nor a train text (it has its label there):
- `--unlabeled FILE`: a text file (one text a line) or a .csv/.tsv/.jsonl/.parquet file with a text column;
- `--unlabeled_from_rest N`: up to N of the training texts that `--max-train-examples` left out, their labels
  withheld (a seeded random draw).
The labelled splits' `content_hash` does not cover this file: a teacher trained on the folder before the
texts were added stays the folder's teacher.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from ftvs.data.cleaning import TEXT_CANDIDATES, clean_text, pick_column
from ftvs.data.sources import _read_file, decode_file
from ftvs.errors import FtvsError
from ftvs.fileio import read_jsonl, write_jsonl

UNLABELED = "unlabeled.jsonl"


def read_unlabeled_file(path, max_chars: int, encoding: str | None = None) -> list[str]:
    """The raw texts of `--unlabeled FILE` (uncleaned; `clean_unlabeled` cleans them)."""
    path = Path(path)
    if not path.is_file():
        raise FtvsError(
            f"--unlabeled {path}: no such file; name a text file (one text a line) or a data file"
        )
    if path.suffix.lower() in ("", ".txt", ".text"):
        text, _ = decode_file(path, path.read_bytes(), encoding)
        return text.splitlines()
    table = _read_file(path, encoding)
    return list(table.fetch(pick_column(table, None, TEXT_CANDIDATES, "text")))


def clean_unlabeled(raw_texts, known: set[str], max_chars: int) -> tuple[list[str], dict]:
    """Cleaned, de-duplicated texts that are in none of the labelled splits (`known`), and the counts of
    what was dropped."""
    counts: Counter = Counter()
    seen, texts = set(known), []
    for raw in raw_texts:
        text = clean_text(raw, max_chars, counts)
        if not text:
            counts["empty_dropped"] += 1
        elif text in known:
            counts["labelled_dropped"] += 1  # in train (labelled there), val or test (it would leak)
        elif text in seen:
            counts["duplicates_dropped"] += 1
        else:
            seen.add(text)
            texts.append(text)
    keys = ("invalid_utf8_repaired", "truncated", "empty_dropped", "duplicates_dropped", "labelled_dropped")
    return texts, {k: int(counts[k]) for k in keys}


def draw_from_rest(rest: list[str], n: int, seed: int) -> list[str]:
    """Up to `n` of the training texts left out by --max-train-examples, a seeded draw."""
    order = list(range(len(rest)))
    random.Random(seed + 5).shuffle(order)
    return [rest[i] for i in sorted(order[:n])]


def unlabeled_texts(
    final: dict, rest: list[str], from_rest: int | None, file, max_chars: int, seed: int, encoding=None
) -> tuple[list[str], dict | None]:
    """The folder's unlabeled texts and their metadata entry (None when neither source is given)."""
    if not from_rest and file is None:
        return [], None
    if from_rest and not rest:
        raise FtvsError(
            "--unlabeled_from_rest keeps the training texts --max-train-examples leaves out, and it left "
            "none out; pass a smaller --max-train-examples, or --unlabeled FILE"
        )
    drawn = draw_from_rest(rest, from_rest, seed) if from_rest else []
    raw = drawn + (read_unlabeled_file(file, max_chars, encoding) if file is not None else [])
    known = {t for texts, _ in final.values() for t in texts}
    texts, counts = clean_unlabeled(raw, known, max_chars)
    if not texts:
        raise FtvsError(
            "no unlabeled texts left after cleaning (each one empty or in the labelled splits); "
            "name an --unlabeled file with other texts"
        )
    meta = {
        "count": len(texts),
        "from_rest": len(drawn),
        "file": str(file) if file is not None else None,
        "cleaning": counts,
    }
    return texts, meta


def write_unlabeled(folder: Path, texts: list[str]) -> None:
    if texts:
        write_jsonl(Path(folder) / UNLABELED, ({"text": t} for t in texts))


def load_unlabeled(data_dir, limit: int | None = None) -> list[str]:
    """The folder's unlabeled texts (the first `limit`; none when it has no unlabeled.jsonl)."""
    path = Path(data_dir) / UNLABELED
    if not path.is_file():
        return []
    texts = [str(r["text"]) for r in read_jsonl(path)]
    return texts if limit is None else texts[:limit]
