"""Every number ftvs shows a person: the comparison table, the report, the study's terminal summary.

One function per kind of quantity, each returning `missing` ("–") for None so that a table cell is
never empty. Machine-readable files (JSON) hold the raw numbers; nothing here is parsed back.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

MISSING = "–"


def now() -> str:
    """The current time in UTC, ISO 8601 to the second: the timestamps of study.json and the run logs."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def fixed(x, digits: int = 4, unit: str = "", missing: str = MISSING) -> str:
    """Integers with thousands separators, other numbers with `digits` decimals: '1,234', '0.8123'."""
    if x is None:
        return missing
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}{unit}"
    return f"{x:.{digits}f}{unit}"


def f4(x) -> str:
    return MISSING if x is None else f"{x:.4f}"


def f3(x) -> str:
    return MISSING if x is None else f"{x:.3f}"


def signed(x, digits: int = 4) -> str:
    """A difference, always with its sign: '+0.0123'."""
    return MISSING if x is None else f"{x:+.{digits}f}"


def pm(mean, std, digits: int = 4, missing: str = MISSING) -> str:
    """'mean ± std'; the mean alone when the std is unknown (one seed)."""
    if mean is None:
        return missing
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def p_value(p) -> str:
    """Four decimals, scientific below 1e-4, and a bound where the float underflowed to 0."""
    if p is None:
        return MISSING
    if p <= 0:
        return "< 1e-300"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.4f}"


def seconds(x) -> str:
    """Seconds with the precision that matters at their size: '1,234', '12.3', '1.23'."""
    if x is None:
        return MISSING
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def clock(s, missing: str = MISSING) -> str:
    """A duration as a person reads a clock: '42s', '3m05s', '2h07m'."""
    if s is None or not math.isfinite(s):
        return missing
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def nbytes(n) -> str:
    """Decimal units, one decimal: '12.3 MB'."""
    if n is None:
        return MISSING
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def count(n) -> str:
    """A large count, short: '1.23M', '4.5k', '812'."""
    if n is None:
        return MISSING
    n = float(n)
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{int(n)}"


def grouped(v) -> str:
    """A number with thousands separators as it is ('1,234', '0.5'); MISSING for anything else."""
    return f"{v:,}" if isinstance(v, int | float) and not isinstance(v, bool) else MISSING


def length(v) -> str:
    """A text-length statistic: a whole number as '1,234', a fractional one with one decimal."""
    if v is None:
        return MISSING
    return f"{v:,.1f}" if isinstance(v, float) and not float(v).is_integer() else f"{int(v):,}"


def times(r) -> str:
    """A ratio as '3.2×' (two significant digits below 10)."""
    if r is None:
        return MISSING
    if r >= 100:
        return f"{r:,.0f}×"
    if r >= 10:
        return f"{r:.0f}×"
    if r >= 1:
        return f"{r:.1f}×"
    return f"{r:.2g}×"


def fraction(f: float) -> str:
    """A training-set fraction as written in a config: '0.1', '1'."""
    return f"{f:g}"
