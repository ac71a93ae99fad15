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
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from fastnas._io import atomic_write

__all__ = ["FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "fingerprint"]

FORMAT_VERSION = 1

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
        ValueError: the file is corrupt or truncated, is not a fastnas checkpoint, has a newer format
            version, or holds another kind or fingerprint. The message names ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        detail = " ".join(str(e).split())
        if "WeightsUnpickler error:" in detail:  # drop torch's advice to load with weights_only=False
            detail = "weights-only load failed: " + detail.split("WeightsUnpickler error:", 1)[1].split(" Check the")[0].strip()
        detail = _shorten(detail)
        raise ValueError(f"checkpoint {str(path)!r} is corrupt, truncated or not a fastnas checkpoint "
                         f"({type(e).__name__}: {detail}); delete it or start without resuming") from e
    if not isinstance(payload, dict) or not isinstance(payload.get("kind"), str):
        raise ValueError(f"checkpoint {str(path)!r} is not a fastnas checkpoint (no 'kind' entry)")
    kind = payload["kind"]
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"checkpoint {str(path)!r} has format_version={version!r}; this fastnas reads "
                         f"versions <= {FORMAT_VERSION} (written by a newer fastnas?)")
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"checkpoint {str(path)!r} holds kind={kind!r}, expected {expected_kind!r}")
    if expected_fingerprint is not None and payload.get("fingerprint") != expected_fingerprint:
        raise ValueError(f"checkpoint {str(path)!r} belongs to other settings (fingerprint "
                         f"{payload.get('fingerprint')!r}, expected {expected_fingerprint!r}); use another "
                         f"path or start without resuming")
    return payload
