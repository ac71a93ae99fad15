"""Loads the compiled extension ``fastnas._C`` once; records why when it cannot.

Only the backend modules (``fastnas/ops/*/cpp.py``, ``cuda.py``) use :data:`C`, and
``fastnas/ops/build.py`` reads what it was built with (for ``fastnas info``). A missing or broken
extension never breaks ``import fastnas``: it warns once and the pure-torch references take over.
"""

from __future__ import annotations

import warnings

__all__ = ["C", "load_error"]

C = None
load_error: str | None = None

try:  # pragma: no cover - which branch runs depends on the install
    from fastnas import _C as C  # type: ignore[attr-defined,no-redef]
except Exception as exc:  # ImportError, or an OSError from a broken shared object
    C = None
    load_error = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        "fastnas: the compiled extension fastnas._C could not be loaded "
        f"({load_error}); using the pure-torch reference kernels. "
        "Reinstall with `pip install .` to build it.",
        RuntimeWarning,
        stacklevel=2,
    )
