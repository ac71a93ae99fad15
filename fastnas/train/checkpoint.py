"""Checkpoint files: atomic writes, safe loads, and a check of what a file holds.

A checkpoint is a ``dict`` saved with :func:`torch.save`. Every payload carries

* ``kind`` — what the file holds (``"spos_supernet"``, ``"spos_supernet_init"``, ...),
* ``format_version`` — the layout version of that kind (:data:`FORMAT_VERSION`),
* ``fingerprint`` (optional) — a short hash of the settings the file belongs to (see :func:`fingerprint`),

so that resuming from the wrong file fails with a clear message instead of silently mixing runs.

Files are written atomically (temporary file in the same directory, ``fsync``, ``os.replace``): a run
killed while saving leaves either the old checkpoint or the new one, never a truncated file. Loading uses
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects, so only tensors, numbers,
strings and containers of them may be stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from fastnas._io import atomic_write

__all__ = ["FORMAT_VERSION", "OLDEST_READABLE", "save_checkpoint", "load_checkpoint", "fingerprint"]

#: The layout version written; files of versions ``OLDEST_READABLE .. FORMAT_VERSION`` are read.
FORMAT_VERSION = 1
OLDEST_READABLE = 1

PathLike = Union[str, "os.PathLike[str]"]


def fingerprint(obj: Any) -> str:
    """A short stable hash (16 hex digits) of a JSON-like value (dict keys sorted; other values by ``str``)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def save_checkpoint(path: PathLike, payload: Dict[str, Any]) -> Path:
    """Writes ``payload`` to ``path`` atomically.

    Args:
        path: destination file; its directory is created if needed.
        payload: a dict with at least a ``"kind"`` string; ``"format_version"`` is added when missing.
            Values must be loadable with ``torch.load(weights_only=True)`` (tensors, numbers, strings,
            ``None`` and lists/tuples/dicts of them).

    Returns:
        The path written.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"payload: expected a dict, got {type(payload).__name__}")
    kind = payload.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"payload['kind']={kind!r}: expected a non-empty string naming what the file holds")
    payload = dict(payload)
    payload.setdefault("format_version", FORMAT_VERSION)

    return atomic_write(path, lambda f: torch.save(payload, f))


def _shorten(text: str, limit: int = 160) -> str:
    """``text`` cut to whole sentences within ``limit`` characters (torch's advice after its first
    sentence is noise here), else at a word boundary with "..."; never mid-word."""
    if len(text) <= limit:
        return text
    out = ""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if len(out) + len(sentence) + 1 > limit:
            break
        out = f"{out} {sentence}".strip()
    if out:
        return out
    return text[:limit - 3].rsplit(" ", 1)[0].rstrip(" ,;:") + "..."


def load_checkpoint(path: PathLike, *, expected_kind: Optional[str] = None,
                    expected_fingerprint: Optional[str] = None,
                    map_location: Union[str, torch.device, None] = "cpu") -> Dict[str, Any]:
    """Loads a checkpoint written by :func:`save_checkpoint` and checks what it holds.

    Args:
        path: the checkpoint file.
        expected_kind: if given, the payload's ``kind`` must equal it.
        expected_fingerprint: if given, the payload's ``fingerprint`` must equal it.
        map_location: passed to :func:`torch.load` (default: tensors on the CPU).

    Returns:
        The payload dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is corrupt or truncated, is not a fastnas checkpoint (no ``kind``, or it holds
            Python objects), has no, an older or a newer format version, or holds another kind or
            fingerprint. The message names ``path`` and what was expected.
    """
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    wanted = (f"expected a fastnas checkpoint of kind {expected_kind!r}" if expected_kind is not None
              else "expected a fastnas checkpoint")
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    try:
        with warnings.catch_warnings():
            # a plain pickle (protocol > 2) makes torch warn before it fails: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise ValueError(f"{where} is corrupt, truncated or not a fastnas checkpoint ({_load_error(e)}); "
                         f"{wanted}; delete it or start without resuming") from e
    if not isinstance(payload, dict) or not isinstance(payload.get("kind"), str):
        what = "a dict without a 'kind' entry" if isinstance(payload, dict) else f"a {type(payload).__name__}"
        raise ValueError(f"{where} is not a fastnas checkpoint (it holds {what}); {wanted}")
    kind = payload["kind"]
    version = payload.get("format_version")
    readable = f"this fastnas reads format_version {_versions()}"
    if "format_version" not in payload:
        raise ValueError(f"{where} (kind={kind!r}) has no format_version; {readable}; not written by fastnas?")
    if type(version) is not int:
        raise ValueError(f"{where} (kind={kind!r}) has format_version={version!r}; {readable}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{where} (kind={kind!r}) has format_version={version}, written by a newer fastnas; "
                         f"{readable}; upgrade fastnas or start without resuming")
    if version < OLDEST_READABLE:
        raise ValueError(f"{where} (kind={kind!r}) has format_version={version}, written by an older fastnas; "
                         f"{readable}; delete it (or use that fastnas) or start without resuming")
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"{where} holds kind={kind!r}, expected {expected_kind!r}")
    if expected_fingerprint is not None and payload.get("fingerprint") != expected_fingerprint:
        raise ValueError(f"{where} belongs to other settings (fingerprint "
                         f"{payload.get('fingerprint')!r}, expected {expected_fingerprint!r}); use another "
                         f"path or start without resuming")
    return payload


def _versions() -> str:
    return str(FORMAT_VERSION) if OLDEST_READABLE == FORMAT_VERSION else f"{OLDEST_READABLE} to {FORMAT_VERSION}"


def _load_error(e: BaseException) -> str:
    """One short line of what ``torch.load`` said, without its advice to load untrusted pickles."""
    detail = " ".join(str(e).split())
    if "WeightsUnpickler error:" in detail:
        detail = detail.split("WeightsUnpickler error:", 1)[1].split(" Check the")[0].strip()
        if "Unsupported global:" in detail:  # a pickled Python object: fastnas checkpoints hold none
            name = detail.split("Unsupported global:", 1)[1].split(" was not")[0].strip()
            detail = f"it holds a Python object ({name}), which a fastnas checkpoint never does"
        detail = "weights-only load failed: " + detail
    if not detail and isinstance(e, EOFError):
        detail = "the file ends too early"
    detail = f"{type(e).__name__}: {detail}" if detail else type(e).__name__
    return _shorten(detail)
