"""Small hand-written data files shared by the tests of ftvs.data (tests/test_data_*.py)."""

import csv
import io
from pathlib import Path

from ftvs import data


def prepare_offline(source, out, **kw):
    """`prepare` without token statistics (no pre-trained tokenizer needed)."""
    kw.setdefault("tokenizer", "none")
    return data.prepare(str(source), out, **kw)


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def class_rows(n_per_class: dict[str, int], prefix="ex"):
    """(text, label) rows: n distinct texts per class."""
    return [(f"{prefix} {c} number {i}", c) for c, n in n_per_class.items() for i in range(n)]
