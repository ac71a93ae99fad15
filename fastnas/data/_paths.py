"""Where loaders look for files, and the error that lists every place tried."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

__all__ = ["search_roots", "DataNotFoundError"]

PathLike = Union[str, "os.PathLike[str]"]

#: Environment variable naming a directory searched when ``data_dir`` is None.
DATA_DIR_ENV = "FASTNAS_DATA_DIR"


class DataNotFoundError(FileNotFoundError):
    """A dataset's files were not found; the message lists every path tried and how to get them."""


def search_roots(data_dir: Optional[PathLike], defaults: Sequence[PathLike] = ()) -> List[Path]:
    """Directories to search: ``data_dir`` alone if given, else ``$FASTNAS_DATA_DIR`` then ``defaults``."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        roots.append(Path(env).expanduser())
    roots.extend(Path(d) for d in defaults)
    return roots


def not_found(what: str, tried: Iterable[Path], hint: str) -> DataNotFoundError:
    tried = list(dict.fromkeys(str(p) for p in tried))
    lines = "\n".join(f"  {p}" for p in tried) or "  (no directory to search)"
    return DataNotFoundError(f"{what} not found. Looked in:\n{lines}\n{hint}")
