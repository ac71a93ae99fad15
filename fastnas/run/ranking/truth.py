"""The ground-truth table of the ranking benchmark: one row per architecture, its test (and validation)
accuracy, every architecture parsed by the run's space."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from fastnas.metrics.rank import ARCH_COLUMNS

__all__ = ["TruthRow", "load_truth"]

_TEST_COLUMNS = ("test_accuracy", "test_acc", "accuracy", "acc", "top1")
_VALID_COLUMNS = ("valid_accuracy", "valid_acc", "val_accuracy", "val_acc")


@dataclass(frozen=True)
class TruthRow:
    """One architecture of a ground-truth table.

    Attributes:
        line: its line in the CSV file (the header is line 1).
        arch: the parsed architecture; ``text``: its canonical text (``space.format``).
        test_accuracy: the accuracy scores are compared with; ``valid_accuracy``: NaN when absent.
    """

    line: int
    arch: Any
    text: str
    test_accuracy: float
    valid_accuracy: float = math.nan


def _column(header: Sequence[str], names: Sequence[str]) -> Optional[int]:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def _number(where: str, line: int, column: str, cell: str, *, allow_empty: bool) -> float:
    cell = cell.strip()
    if not cell and allow_empty:
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
        cell = cell or "an empty cell"
    else:
        if math.isfinite(value):
            return value
    raise ValueError(f"{where}:{line}: column {column!r} holds {cell!r}; expected a finite number")


def load_truth(path: "os.PathLike[str] | str", space: Any, *, name: str = "truth") -> List[TruthRow]:
    """The rows of a ground-truth CSV (``fastnas groundtruth``'s table, or a hand-written one).

    The header names an architecture column (``arch``, ``architecture``, ``arch_str``, ``genotype``), a
    test-accuracy column (``test_accuracy``, ``test_acc``, ``accuracy``, ``acc``, ``top1``) and optionally
    a validation-accuracy column (``valid_accuracy``, ``valid_acc``, ``val_acc``), case-insensitive. Every
    architecture is parsed by ``space`` and must appear once.

    Args:
        path: the CSV file.
        space: the run's space.
        name: how errors name the file's origin (the CLI passes ``"--truth"``).

    Raises:
        ValueError: a missing or empty file, a missing column, a row of the wrong length, a cell that is not
            a finite number, an architecture not in ``space`` or repeated; the message names ``name``, the
            file and the line.
    """
    where = f"{name} {os.fspath(path)}"
    if not Path(path).is_file():
        raise ValueError(f"{where}: no such file (expected a CSV with arch and test_accuracy columns, as "
                         "fastnas groundtruth writes)")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            lines = [(k, row) for k, row in enumerate(csv.reader(fh), start=1) if any(c.strip() for c in row)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{where}: not a readable CSV file ({e})") from None
    if not lines:
        raise ValueError(f"{where} is empty: expected a header row with arch and test_accuracy columns and one "
                         "row per architecture")
    head_line, header = lines[0]
    arch_i, test_i, valid_i = (_column(header, n) for n in (ARCH_COLUMNS, _TEST_COLUMNS, _VALID_COLUMNS))
    for i, what, names in ((arch_i, "architecture", ARCH_COLUMNS), (test_i, "test accuracy", _TEST_COLUMNS)):
        if i is None:
            raise ValueError(f"{where}:{head_line}: no {what} column in the header {header}; expected one named "
                             f"{' or '.join(names)}")
    rows: List[TruthRow] = []
    seen: Dict[str, int] = {}
    for line, cells in lines[1:]:
        if len(cells) != len(header):
            raise ValueError(f"{where}:{line}: {len(cells)} cells, but the header has {len(header)} columns")
        text = cells[arch_i].strip()
        try:
            arch = space.parse(text)
        except ValueError as e:
            raise ValueError(f"{where}:{line}: {text!r} is not an architecture of the run's space "
                             f"{space.name!r} ({e})") from None
        canon = space.format(arch)
        if canon in seen:
            raise ValueError(f"{where}:{line}: architecture {text!r} appears again (first at line {seen[canon]})")
        seen[canon] = line
        test = _number(where, line, header[test_i], cells[test_i], allow_empty=False)
        valid = math.nan if valid_i is None else _number(where, line, header[valid_i], cells[valid_i],
                                                         allow_empty=True)
        rows.append(TruthRow(line, arch, canon, test, valid))
    if not rows:
        raise ValueError(f"{where} has a header but no architectures")
    return rows
