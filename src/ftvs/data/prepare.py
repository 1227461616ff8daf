"""`ftvs prepare` step by step: read the source, pick the columns, clean, de-duplicate, drop leaks, carve
the stratified splits, write the folder and print its summary; plus the command's flags."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from ftvs.data.cleaning import (
    LABEL_CANDIDATES,
    MAX_CHARS,
    TEXT_CANDIDATES,
    check_class_sizes,
    check_seen,
    clean_split,
    drop_duplicates,
    drop_known,
    label_names_of,
    pick_column,
    take_rows,
    to_ids,
)
from ftvs.data.folder import (
    DATA_VERSION,
    SPLITS,
    check_output_dir,
    content_hash,
    load_split,
    load_tokenizer,
    split_stats,
    staging_dir,
    write_split,
)
from ftvs.data.sources import Source, load_source
from ftvs.data.splitting import stratified_split, stratified_subsample
from ftvs.data.unlabeled import unlabeled_texts, write_unlabeled
from ftvs.errors import FtvsError, is_count
from ftvs.fileio import write_json

DEFAULT_TOKENIZER = "smollm2-135m"

CLEANING_COUNTS = (
    "invalid_utf8_repaired",
    "truncated",
    "empty_dropped",
    "missing_label_dropped",
    "duplicates_dropped",
    "leaked_test_dropped",
    "leaked_val_dropped",
)


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
    encoding: str | None = None,
    unlabeled=None,
    unlabeled_from_rest: int | None = None,
) -> dict:
    """Prepare `source` into `output_dir` (train/val/test.jsonl + metadata.json) and return the metadata.

    `encoding` is the fallback for local text files without a byte-order mark that are not UTF-8
    (default latin-1); the encoding used is recorded as metadata's `encoding`.

    `tokenizer` names the tokenizer for token-length statistics (`"none"` skips them). The val split is
    a stratified `validation_split` of train unless the source has one; the test split is the source's
    own when it has one, otherwise a stratified `test_split` of train. Raises FtvsError for anything the
    user can fix.

    `unlabeled` (a file) and `unlabeled_from_rest` (up to N of the training texts `max_train_examples` leaves
    out) write `unlabeled.jsonl` for distillation (ftvs.data.unlabeled); metadata's `unlabeled` counts them.
    """
    _check_settings(validation_split, test_split, max_train_examples, max_chars, unlabeled_from_rest)
    out = Path(output_dir)
    check_output_dir(out)

    src = load_source(str(source), remove_headers, encoding)
    text_col, label_col = _pick_columns(src, text_column, label_column)
    class_names = src.tables["train"].class_names.get(label_col)
    counts: Counter = Counter()
    rows, notes = _clean(src, text_col, label_col, max_chars, counts)
    names = _dedupe_train(rows, class_names, counts)
    name_of = _namer(names, class_names)
    _drop_leaks(rows, src, name_of, counts)
    carve = _carve_splits(rows, name_of, seed, validation_split, test_split, counts["duplicates_dropped"])
    train_before_cap = len(rows["train"].texts)
    rest: list[str] = []
    if max_train_examples is not None and max_train_examples < train_before_cap:
        keep = stratified_subsample(rows["train"].labels, max_train_examples, seed + 2)
        kept = set(keep)
        rest = [t for i, t in enumerate(rows["train"].texts) if i not in kept]
        rows["train"] = take_rows(rows["train"], keep)

    tok = load_tokenizer(tokenizer)  # only after the data checks, so a bad source fails fast
    origin = src.tables["train"].origin
    final = {
        split: (rows[split].texts, to_ids(rows[split], names, class_names, split, origin)) for split in SPLITS
    }
    unl_texts, unl_meta = unlabeled_texts(
        final, rest, unlabeled_from_rest, unlabeled, max_chars, seed, encoding
    )
    meta = {
        "source": str(source),
        "source_description": src.description,
        "label_names": names,
        "num_labels": len(names),
        "seed": seed,
        **split_stats(final, names, tok),
        "cleaning": {key: int(counts[key]) for key in CLEANING_COUNTS} | {"max_chars": max_chars},
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
    if unl_meta:
        meta["unlabeled"] = unl_meta
    _write(out, final, meta, unl_texts)
    return meta


def _check_settings(validation_split, test_split, max_train_examples, max_chars, from_rest) -> None:
    for flag, value in (("--validation-split", validation_split), ("--test-split", test_split)):
        if not 0.0 < float(value) < 1.0:
            raise FtvsError(f"{flag} must be between 0 and 1 (exclusive), got {value}")
    if max_train_examples is not None and not is_count(max_train_examples):
        raise FtvsError(f"--max-train-examples must be a positive integer, got {max_train_examples}")
    if max_chars < 1:
        raise FtvsError(f"--max-chars must be positive, got {max_chars}")
    if from_rest is not None and (not is_count(from_rest) or max_train_examples is None):
        raise FtvsError(
            f"--unlabeled_from_rest {from_rest} needs a positive N and --max-train-examples (it keeps the "
            "training texts that cap leaves out); pass both, or --unlabeled FILE"
        )


def _pick_columns(src: Source, text_column: str | None, label_column: str | None) -> tuple[str, str]:
    train_table = src.tables["train"]
    text_col = pick_column(train_table, text_column, TEXT_CANDIDATES, "text")
    label_col = pick_column(train_table, label_column, LABEL_CANDIDATES, "label", avoid=text_col)
    if text_col == label_col:
        raise FtvsError(
            f"text and label column are both {text_col!r}; pass different --text-column/--label-column"
        )
    for table in src.tables.values():  # the official splits must have the same columns
        pick_column(table, text_col, (), "text")
        pick_column(table, label_col, (), "label")
    return text_col, label_col


def _clean(src: Source, text_col: str, label_col: str, max_chars: int, counts: Counter) -> tuple[dict, dict]:
    """Cleaned rows per split, and notes on source splits left out."""
    rows = {split: clean_split(t, text_col, label_col, max_chars, counts) for split, t in src.tables.items()}
    notes = {}
    for split in ("val", "test"):  # e.g. GLUE test splits carry label -1 everywhere: treat as absent
        if split in rows and not rows[split].texts:
            notes[f"{split}_source_ignored"] = f"the source's {split} split has no labelled texts"
            del rows[split]
    if not rows["train"].texts:
        origin = src.tables["train"].origin
        if counts["missing_label_dropped"]:
            raise FtvsError(
                f"all labels in column {label_col!r} of {origin} are empty/NaN/None; "
                "pick the label column with --label-column"
            )
        raise FtvsError(
            f"no non-empty texts in column {text_col!r} of {origin}; pick the text column with --text-column"
        )
    return rows, notes


def _namer(names: list[str], class_names: list[str] | None):
    """Label key -> the label's name, for messages."""
    return lambda key: names[key] if class_names is not None else str(key)


def _dedupe_train(rows: dict, class_names: list[str] | None, counts: Counter) -> list[str]:
    """Drop duplicate train texts; return the label names (at least two classes, or FtvsError)."""
    rows["train"], counts["duplicates_dropped"] = drop_duplicates(rows["train"])
    names = label_names_of(rows["train"], class_names)
    train_keys = set(rows["train"].labels)
    if len(train_keys) < 2:
        only = _namer(names, class_names)(next(iter(train_keys)))
        raise FtvsError(
            f"train data has one class only ({only!r}); a classifier needs at least 2 — check --label-column"
        )
    return names


def _drop_leaks(rows: dict, src: Source, name_of, counts: Counter) -> None:
    """Drop val/test texts that occur in train (and val texts that occur in test)."""
    known = set(rows["train"].texts)
    train_keys = set(rows["train"].labels)
    for split in ("test", "val"):
        if split in rows:
            rows[split], counts[f"leaked_{split}_dropped"] = drop_known(rows[split], known)
            check_seen(rows[split], train_keys, split, src.tables[split].origin, name_of)
    if "val" in rows and "test" in rows:  # an example in both val and test would blur model selection
        rows["val"], n = drop_known(rows["val"], set(rows["test"].texts))
        counts["leaked_val_dropped"] += n


def _carve_splits(
    rows: dict, name_of, seed: int, validation_split: float, test_split: float, duplicates: int = 0
) -> list[str]:
    """Carve the splits the source lacks out of train (stratified); return their names."""
    carve = [s for s in ("test", "val") if s not in rows]
    train = rows["train"]
    if carve:
        what = " and ".join({"test": "a test split", "val": "a validation split"}[s] for s in carve)
        check_class_sizes(train, 1 + len(carve), name_of, what, duplicates)
    split_seed = {"test": seed, "val": seed + 1}
    for split in carve:
        fraction = test_split if split == "test" else validation_split
        keep, held = stratified_split(train.labels, fraction, split_seed[split])
        rows[split], train = take_rows(train, held), take_rows(train, keep)
    rows["train"] = train
    return carve


def _write(out: Path, final: dict, meta: dict, unlabeled: list[str]) -> None:
    with staging_dir(out) as tmp:
        for split, (texts, labels) in final.items():
            write_split(tmp, split, texts, labels)
        write_unlabeled(tmp, unlabeled)
        meta["content_hash"] = content_hash(tmp)
        write_json(tmp / "metadata.json", meta)


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
    if meta.get("unlabeled"):
        u = meta["unlabeled"]
        dropped = ", ".join(f"{k}={v}" for k, v in u["cleaning"].items() if v)
        print(
            f"unlabeled: {u['count']:,} texts ({u['from_rest']:,} from the rest of train"
            f"{', file ' + u['file'] if u['file'] else ''}){'; ' + dropped if dropped else ''}",
            file=file,
        )
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
            ".jsonl/.parquet file, a folder with train.* (+ optional val.*/test.*), or a built-in offline "
            "set: 20newsgroups, sms_spam."
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
        help="fraction of train held out (stratified) for validation when the source has no val split "
        "(default 0.1)",
    )  # fmt: skip
    p.add_argument(
        "--test-split", "--test_split", dest="test_split", type=_fraction, default=0.2,
        help="fraction held out (stratified) for test when the source has no test split (default 0.2)",
    )  # fmt: skip
    p.add_argument(
        "--max-train-examples", "--max_train_examples", dest="max_train_examples", type=_positive_int,
        default=None,
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
    p.add_argument(
        "--encoding", default=None,
        help="encoding of text files that have no byte-order mark and are not UTF-8 (default latin-1; "
        "the one used is printed and recorded in metadata.json)",
    )  # fmt: skip
    p.add_argument(
        "--unlabeled", default=None, metavar="FILE",
        help="texts without labels for a distilled student (one a line, or a data file with a text column); "
        "cleaned, de-duplicated, and never a val/test/train text: written as unlabeled.jsonl",
    )  # fmt: skip
    p.add_argument(
        "--unlabeled_from_rest", "--unlabeled-from-rest", dest="unlabeled_from_rest", type=_positive_int,
        default=None, metavar="N",
        help="keep up to N of the training texts --max-train-examples leaves out as unlabeled.jsonl "
        "(labels withheld)",
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
        encoding=args.encoding,
        unlabeled=args.unlabeled,
        unlabeled_from_rest=args.unlabeled_from_rest,
    )
    print_summary(meta, args.output_dir)
    return 0
