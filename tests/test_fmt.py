"""`ftvs.fmt`: the strings the table, the report and the study summary show (tests read them back)."""

import math

from ftvs import fmt


def test_missing_numbers_show_a_dash():
    for f in (
        fmt.fixed,
        fmt.f4,
        fmt.f3,
        fmt.signed,
        fmt.pm,
        fmt.p_value,
        fmt.seconds,
        fmt.nbytes,
        fmt.count,
        fmt.grouped,
        fmt.length,
        fmt.times,
    ):
        args = (None, None) if f is fmt.pm else (None,)
        assert f(*args) == "–", f.__name__
    assert fmt.clock(None, missing="-") == fmt.clock(math.nan, missing="-") == "-"


def test_numbers():
    assert (fmt.fixed(1234), fmt.fixed(0.81234), fmt.fixed(0.5, 3, " s")) == ("1,234", "0.8123", "0.500 s")
    assert (fmt.f4(0.81236), fmt.f3(0.81236), fmt.signed(0.0123), fmt.signed(-0.5, 3)) == (
        "0.8124",
        "0.812",
        "+0.0123",
        "-0.500",
    )
    assert fmt.pm(0.81, 0.012) == "0.8100 ± 0.0120" and fmt.pm(0.81, None) == "0.8100"
    assert fmt.pm(2.0, 0.5, 1) == "2.0 ± 0.5"
    assert (fmt.grouped(12345), fmt.grouped("x"), fmt.length(12.25), fmt.length(12.0)) == (
        "12,345",
        "–",
        "12.2",
        "12",
    )
    assert fmt.fraction(0.1) == "0.1" and fmt.fraction(1.0) == "1"


def test_p_values():
    assert [fmt.p_value(p) for p in (0.0, 3e-7, 0.04999, 1.0)] == ["< 1e-300", "3.0e-07", "0.0500", "1.0000"]


def test_units():
    assert [fmt.seconds(s) for s in (1234.5, 12.34, 1.234)] == ["1,234", "12.3", "1.23"]
    assert [fmt.clock(s) for s in (42.4, 185, 7620)] == ["42s", "3m05s", "2h07m"]
    assert [fmt.nbytes(n) for n in (512, 2_500, 12_300_000, 4.2e9)] == [
        "512 B",
        "2.5 kB",
        "12.3 MB",
        "4.2 GB",
    ]
    assert [fmt.count(n) for n in (812, 4_500, 1_234_567, 2.5e9)] == ["812", "4.5k", "1.23M", "2.50B"]
    assert [fmt.times(r) for r in (0.25, 3.24, 42.0, 1234.0)] == ["0.25×", "3.2×", "42×", "1,234×"]
