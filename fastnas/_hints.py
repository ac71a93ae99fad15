"""The "did you mean" hint of error messages for unknown names (one format across fastnas)."""

from __future__ import annotations

import difflib
from typing import Any, Iterable

__all__ = ["did_you_mean"]


def did_you_mean(value: Any, options: Iterable[Any], n: int = 3, joiner: str = ", ") -> str:
    """``"; did you mean 'a', 'b'?"`` for the options close to ``value``, or ``""`` when none is."""
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=n)
    return f"; did you mean {joiner.join(map(repr, close))}?" if close else ""
