"""The run directory: its files, atomic writes, and the record of which phases are done.

Layout of a run directory::

    config.toml          the settings given, and those fastnas chose for each phase once it started
    state.json           phases started/done, seconds per phase, sessions
    supernet.pt          SPOS supernet checkpoint (end of every epoch)
    supernet_init.pt     the supernet's initial weights (for the angle score)
    search_state.json    the search state after every scored candidate
    history.csv          every scored candidate with every score part
    retrain.pt           checkpoint of the from-scratch retraining of the winner (if any)
    result.json          the outcome: "arch", scores, params, FLOPs, test accuracy, timings, backends
    plots/*.png          search progress, loss against sigma, the cell, Kendall-tau scatter

Every file is written to a temporary file in the same directory and moved into place with
``os.replace``: a run killed at any moment leaves each file either old or new, never half-written.

Under torchrun only rank 0 writes: a :class:`RunDir` of another rank (``writes`` is False) reads the
files but its ``create``, ``save_config``, ``save_state`` and ``write_json`` do nothing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from fastnas import distributed
from fastnas._io import atomic_write
from fastnas.run.config import LEGACY_VALUES, RunConfig, dumps_toml, load_toml

__all__ = ["RunDir", "write_text_atomic", "write_json_atomic", "read_json", "PHASES"]

PathLike = Union[str, "os.PathLike[str]"]

PHASES = ("train", "search", "retrain", "report")
_STATE_VERSION = 1


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` via a temporary file and ``os.replace`` (with fsync)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if not isinstance(value, (str, int, float, bool, type(None))) and hasattr(value, "item"):
        return _json_safe(value.item())
    return value


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON (non-finite floats as strings 'nan', 'inf'), atomically."""
    return write_text_atomic(path, json.dumps(_json_safe(obj), indent=1, allow_nan=False) + "\n")


def read_json(path: PathLike, what: str) -> Any:
    """Reads a JSON file; a corrupt file is a ``ValueError`` naming it and ``what`` it should hold."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {os.fspath(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {os.fspath(path)!r} is corrupt ({e})") from None


def read_settings(path: PathLike, what: str, version: int, from_dict: Any) -> Any:
    """``from_dict(d["settings"])`` of a ``{"version", "settings"}`` JSON file (``family.json``,
    ``refine.json``); ``ValueError`` naming the file when it is corrupt or of another version."""
    saved = read_json(path, what)
    try:
        if saved.get("version") != version:
            raise ValueError(f"version {saved.get('version')!r}, this fastnas reads {version}")
        return from_dict(saved["settings"])
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is corrupt or from another fastnas: {e}") from None


def _header(text: str) -> str:
    """The leading comment block of a TOML text (as :func:`~fastnas.run.config.dumps_toml` writes a header)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines)


class RunDir:
    """Paths of one run directory and its phase record (``state.json``).

    Args:
        path: the directory.
        writes: whether this process writes it (``None``: when it is rank 0 of its world, see
            :mod:`fastnas.distributed`; always for one process).
    """

    CONFIG = "config.toml"
    STATE = "state.json"
    SUPERNET = "supernet.pt"
    SUPERNET_INIT = "supernet_init.pt"
    SEARCH_STATE = "search_state.json"
    HISTORY = "history.csv"
    RETRAIN = "retrain.pt"
    RESULT = "result.json"
    PLOTS = "plots"

    def __init__(self, path: PathLike, writes: Optional[bool] = None) -> None:
        self.path = Path(path)
        self.writes = distributed.is_main() if writes is None else bool(writes)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- what is there

    def is_run(self) -> bool:
        return (self.path / self.CONFIG).is_file()

    def check_usable_for_new_run(self) -> None:
        """``ValueError`` unless the directory is absent or empty (a new run never overwrites)."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise ValueError(f"out={str(self.path)!r} exists and is not a directory")
        if self.is_run():
            raise ValueError(f"out={str(self.path)!r} already holds a run; continue it with "
                             f"--resume {self.path} or choose another --out")
        if any(self.path.iterdir()):
            raise ValueError(f"out={str(self.path)!r} is not empty and holds no fastnas run; "
                             "choose another --out")

    def load_config(self) -> RunConfig:
        """The run's saved config (``ValueError`` if the file is missing or corrupt)."""
        path = self.path / self.CONFIG
        if not self.path.is_dir():
            raise ValueError(f"run directory {str(self.path)!r} does not exist")
        if not path.is_file():
            raise ValueError(f"{str(self.path)!r} is not a fastnas run directory (no {self.CONFIG})")
        try:
            saved = load_toml(path)
            present = {str(k).replace("-", "_") for k in saved}
            saved.update({k: v for k, v in LEGACY_VALUES.items() if k not in present})  # written before they existed
            return RunConfig.from_dict(saved)
        except ValueError as e:
            raise ValueError(f"{str(path)!r} is corrupt or from another fastnas version: {e}") from None

    # ---- writing

    def create(self, config: RunConfig, header: str = "", notes: Optional[Dict[str, str]] = None) -> None:
        """Makes the directory and writes ``config.toml`` and a fresh ``state.json``."""
        if not self.writes:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.save_config(config, header, notes)
        self.save_state(self.new_state())

    def save_config(self, config: RunConfig, header: Optional[str] = "",
                    notes: Optional[Dict[str, str]] = None) -> bool:
        """Writes ``config.toml`` unless it already holds exactly this text; returns whether it wrote.

        ``header=None`` keeps the header comment of the file there; ``notes``: a comment per key (see
        :func:`~fastnas.run.config.dumps_toml`)."""
        if not self.writes:
            return False
        path = self.path / self.CONFIG
        try:
            old: Optional[str] = path.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            old = None
        if header is None:
            header = _header(old or "")
        text = dumps_toml(config, header, notes)
        if text == old:
            return False
        write_text_atomic(path, text)
        return True

    @staticmethod
    def new_state() -> Dict[str, Any]:
        return {"version": _STATE_VERSION, "phases": {}, "timings": {}, "sessions": 0}

    def load_state(self) -> Dict[str, Any]:
        path = self.path / self.STATE
        if not path.is_file():
            return self.new_state()
        state = read_json(path, "run state")
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION \
                or not isinstance(state.get("phases"), dict):
            raise ValueError(f"run state {str(path)!r} is not a fastnas run state (version "
                             f"{state.get('version') if isinstance(state, dict) else None!r})")
        state.setdefault("timings", {})
        state.setdefault("sessions", 0)
        return state

    def save_state(self, state: Dict[str, Any]) -> None:
        if self.writes:
            write_json_atomic(self.path / self.STATE, state)

    def write_json(self, path: PathLike, obj: Any) -> None:
        """:func:`write_json_atomic` of ``obj`` to ``path`` (a file of this run) if this process writes."""
        if self.writes:
            write_json_atomic(path, obj)

    def phase(self, state: Dict[str, Any], name: str) -> Optional[str]:
        """``None``, ``"started"`` or ``"done"``."""
        return state["phases"].get(name)
