"""fastnas._io.atomic_write: files get 0o666 less the umask, and importing it leaves the umask alone."""

from __future__ import annotations

import importlib
import os
import stat
import sys

import pytest

import fastnas._io as fio

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def test_import_does_not_touch_the_umask(monkeypatch):
    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    monkeypatch.delitem(sys.modules, "fastnas._io")
    importlib.import_module("fastnas._io")
    assert calls == []  # os.umask(0) at import left a window where new files were world-writable


@posix_only
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_mode_is_0666_less_the_current_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = fio.atomic_write(tmp_path / "sub" / "out.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert path.read_bytes() == b"{}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary left behind


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.bin"
    fio.atomic_write(path, lambda f: f.write(b"old"))

    def boom(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        fio.atomic_write(path, boom)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]
