"""A prepared data folder: its files (train/val/test.jsonl, metadata.json), their statistics, atomic
writes."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from ftvs.errors import FtvsError, closest
from ftvs.fileio import files_hash, read_json, read_jsonl, replace_dir, write_jsonl

SPLITS = ("train", "val", "test")
DATA_VERSION = 1


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


def load_tokenizer(name):
    """The tokenizer used for token-length statistics, or None for `none` (statistics skipped)."""
    if name is None or str(name).lower() == "none":
        return None
    if not isinstance(name, str):
        return name  # an already-loaded tokenizer object
    try:  # transformers: slow to import, and only needed for token statistics
        from ftvs.pretrained import load_tokenizer as load_pretrained_tokenizer
    except ImportError as e:
        raise FtvsError(
            f"token statistics need ftvs.pretrained ({e}); pass --tokenizer none to skip them"
        ) from None
    return load_pretrained_tokenizer(name)


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


def split_stats(split_rows: dict[str, tuple[list[str], list[int]]], names: list[str], tokenizer) -> dict:
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
    return files_hash(data_dir, [f"{split}.jsonl" for split in SPLITS])


def split_hash(data_dir, split: str) -> str:
    """sha256 of one split's file: the identity of the texts and labels a run was scored on."""
    return hashlib.sha256((Path(data_dir) / f"{split}.jsonl").read_bytes()).hexdigest()


def check_output_dir(out: Path, protect: list[Path] = ()) -> None:
    """Refuse to replace a folder that holds anything but prepared data (it would be deleted)."""
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
        ours = {f"{split}.jsonl" for split in SPLITS} | {"metadata.json"}
        other = sorted(
            p.name + ("/" if p.is_dir() else "")
            for p in out.iterdir()
            if p.name not in ours and not p.name.startswith(".")
        )
        if other:
            raise FtvsError(
                f"output folder {out} holds more than prepared data ({', '.join(other[:5])}), which "
                "re-preparing would delete; move those out or choose another --output_dir"
            )


@contextlib.contextmanager
def staging_dir(out: Path):
    """A temp folder next to `out`, swapped into place only when everything was written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_split(folder: Path, split: str, texts: list[str], labels: list[int]) -> None:
    write_jsonl(
        folder / f"{split}.jsonl", ({"text": t, "label": int(y)} for t, y in zip(texts, labels, strict=True))
    )


# --------------------------------------------------------------------------------------------------
# Reading a prepared folder
# --------------------------------------------------------------------------------------------------


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
