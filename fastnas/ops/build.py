"""What the compiled extension ``fastnas._C`` was built with: version, CUDA kernels, SIMD path."""

from __future__ import annotations

from dataclasses import dataclass

from fastnas import _native

__all__ = ["NativeBuild", "native_build"]


@dataclass(frozen=True)
class NativeBuild:
    """The native build, as ``fastnas info`` prints it.

    Attributes:
        loaded: whether ``fastnas._C`` could be imported.
        error: why not (None when loaded).
        version: the package version the extension was built for (None for a development build).
        cuda: whether the CUDA kernels were compiled in.
        simd: the noise loop's SIMD variant on this CPU (e.g. ``"avx512f (hand-written)"``).
    """

    loaded: bool
    error: str | None
    version: str | None
    cuda: bool
    simd: str | None

    def __str__(self) -> str:
        if not self.loaded:
            return f"fastnas._C not loaded ({self.error})"
        parts = [f"fastnas._C {self.version or '(development build)'}",
                 f"CUDA kernels {'built' if self.cuda else 'not built'}"]
        if self.simd:
            parts.append(f"SIMD {self.simd}")
        return ", ".join(parts)


def native_build() -> NativeBuild:
    """How ``fastnas._C`` was built (or why it is not loaded)."""
    C = _native.C
    if C is None:
        return NativeBuild(False, _native.load_error, None, False, None)
    has_cuda = getattr(C, "has_cuda", False)  # a bool attribute of the module
    simd = C.simd_variant() if hasattr(C, "simd_variant") else None
    return NativeBuild(True, None, getattr(C, "__version__", None), bool(has_cuda), simd)
