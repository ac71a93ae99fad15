"""fastnas.ops.native_build() and the `fastnas info` lines built from it."""

from __future__ import annotations


import fastnas
from fastnas import _native
from fastnas.cli import main
from fastnas.ops import NativeBuild, native_build


def test_native_build_reports_the_extension():
    b = native_build()
    assert b.loaded == (_native.C is not None)
    if b.loaded:
        assert b.cuda is bool(_native.C.has_cuda)
        assert b.simd == _native.C.simd_variant()
        assert f"CUDA kernels {'built' if b.cuda else 'not built'}" in str(b)
        assert f"SIMD {b.simd}" in str(b)
    else:
        assert "not loaded" in str(b)


def test_text_of_each_kind_of_build():
    assert str(NativeBuild(True, None, "0.1.0", True, "avx2")) == "fastnas._C 0.1.0, CUDA kernels built, SIMD avx2"
    assert str(NativeBuild(True, None, None, False, None)) == "fastnas._C (development build), CUDA kernels not built"
    assert str(NativeBuild(False, "ImportError: x", None, False, None)) == "fastnas._C not loaded (ImportError: x)"


def test_info_prints_the_cuda_build_line(capsys):
    # It called has_cuda() on a bool and a bare except swallowed the TypeError: the line never appeared.
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    native = [line for line in out.splitlines() if line.startswith("native")]
    assert native == [f"native  {native_build()}"]
    if _native.C is not None:
        assert "CUDA kernels" in native[0]


def test_info_reports_the_override_routes(capsys, monkeypatch):
    monkeypatch.setenv("FASTNAS_BACKEND", "cuda")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "FASTNAS_BACKEND=cuda: " in out and "loss_correct -> automatic (no 'cuda' backend)" in out


def test_only_the_ops_layer_reads_the_extension():
    import inspect

    from fastnas.cli import commands

    assert "_native" not in inspect.getsource(commands.cmd_info)
    assert fastnas.ops.native_build is native_build
