"""The one error type users see: a one-line message, exit code 2 in the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


class VramplanError(Exception):
    """Bad input or an impossible request; the message names the value and the next step."""


def did_you_mean(value: str, choices: Iterable[str], what: str, hint: str = "") -> VramplanError:
    """Build the error for an unknown `value`, naming the closest `choices`."""
    import difflib  # only on this error path: `vramplan --help` does not pay for it

    choices = sorted(set(choices))
    shown = value if len(value) <= 60 else value[:59] + "…"  # a pasted paragraph stays one short line
    close = difflib.get_close_matches(value.lower()[:100], [c.lower() for c in choices], n=3, cutoff=0.5)
    lower_to_choice = {c.lower(): c for c in choices}
    msg = f"unknown {what} {shown!r}"
    if close:
        msg += "; did you mean " + " or ".join(repr(lower_to_choice[c]) for c in close) + "?"
    elif len(choices) <= 12:
        msg += "; expected one of: " + ", ".join(choices)
    if hint:
        msg += f" ({hint})"
    return VramplanError(msg)
