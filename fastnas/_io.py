"""Atomic file writes: a run killed at any moment leaves each file either old or new, never half-written."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write"]

PathLike = Union[str, "os.PathLike[str]"]

# The temporary file is created with mode 0o666 and the kernel applies the process umask, as for any
# new file. (Reading the umask needs os.umask(0) and a second call to put it back: another thread
# creating a file between the two would get a world-writable file.)
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Calls ``write(f)`` on a temporary file beside ``path``, fsyncs it, moves it into place with
    ``os.replace`` and fsyncs the directory (so the rename itself survives a crash). The file gets the
    usual permissions (0o666 less the umask), not ``mkstemp``'s 0600. Creates the parent directory if
    needed."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(directory, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return path


def _create_temporary(directory: Path, name: str) -> tuple[int, str]:
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {os.path.join(directory, name)}")


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable on POSIX; directories cannot be opened for fsync on Windows.
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
