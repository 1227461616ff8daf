"""User-facing errors.

Anything the user can fix (a bad path, a missing column, a wrong flag value) is raised as `FtvsError`
with a one-line message that names the problem and the fix. The CLI prints it as
`ftvs: error: ...` and exits with status 2; other exceptions are bugs and keep their traceback.
"""

import difflib


class FtvsError(Exception):
    """A problem with the user's input or environment, reported in one line (exit code 2)."""


def closest(name: str, choices) -> str:
    """' (did you mean X?)' for the nearest choice, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def is_count(value, minimum: int = 1) -> bool:
    """The one rule for a count (epochs, steps, trials, runs at once, processes, examples): a whole number,
    never a bool (`True` is not 1), at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_count(name: str, value, minimum: int = 1, fix: str = "") -> None:
    """Raise a one-line FtvsError naming `name` unless `value` is a count >= `minimum` (`is_count`)."""
    if not is_count(value, minimum):
        fix = fix or f"use e.g. {max(minimum, 1)}"
        raise FtvsError(f"{name} {value!r} must be at least {minimum} (a whole number); {fix}")


def check_keywords(where: str, given, valid) -> None:
    """A Python API call's keywords are among `valid`; an unknown one is an error naming it and the valid
    ones."""
    valid = list(valid)
    for key in given:
        if key not in valid:
            raise FtvsError(
                f"{where} got an unknown keyword {key!r}{closest(key, valid)}; valid keywords: "
                f"{', '.join(valid)}"
            )
