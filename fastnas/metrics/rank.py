"""Rank correlation between proxy scores and ground-truth accuracies (Kendall tau-b, Spearman rho).

NumPy only (SciPy is a test dependency): :func:`kendall_tau` equals ``scipy.stats.kendalltau`` (tau-b)
and :func:`spearman` equals ``scipy.stats.spearmanr`` with ``nan_policy="omit"``. Kendall's tau is
O(n log n), so the 15,625 architectures of NAS-Bench-201 take milliseconds.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "RankResult", "kendall_tau", "spearman", "load_ground_truth", "correlate", "scatter_plot",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def _pairs(x: Sequence[float], y: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, int]:
    """Float arrays with every pair holding a NaN removed, and the number removed."""
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x has {xa.size} values but y has {ya.size}: expected paired sequences")
    keep = ~(np.isnan(xa) | np.isnan(ya))
    return xa[keep], ya[keep], int(xa.size - keep.sum())


def _dense_ranks(sorted_values: np.ndarray) -> np.ndarray:
    """1-based dense ranks of an already sorted array."""
    if sorted_values.size == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.empty(sorted_values.size, dtype=bool)
    new[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=new[1:])
    return np.cumsum(new, dtype=np.int64)


def _tied_pairs(ranks: np.ndarray) -> int:
    counts = np.bincount(ranks)
    counts = counts[counts > 1].astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _count_inversions(a: np.ndarray) -> int:
    """Number of pairs ``i < j`` with ``a[i] > a[j]`` (``a`` holds ranks >= 1).

    Bottom-up merge sort, vectorised per level: at width ``w`` every left block is merged with its right
    neighbour at once by offsetting each block pair into its own value range, so one ``searchsorted``
    counts, for each right-block element, the left-block elements greater than it.
    """
    a = np.asarray(a, dtype=np.int64).copy()
    n = a.size
    if n < 2:
        return 0
    span = int(a.max()) + 1
    idx = np.arange(n, dtype=np.int64)
    total = 0
    w = 1
    while w < n:
        pair = idx // (2 * w)
        keys = a + pair * span
        is_left = (idx // w) % 2 == 0
        left = keys[is_left]  # sorted: each block is sorted and the offsets increase
        right_keys = keys[~is_left]
        right_pair = pair[~is_left]
        end_of_pair = np.searchsorted(left, (right_pair + 1) * span, side="left")
        not_greater = np.searchsorted(left, right_keys, side="right")
        total += int((end_of_pair - not_greater).sum())
        a = np.sort(keys, kind="stable") - pair * span  # pair ids are non-decreasing in idx
        w *= 2
    return total


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between ``x`` and ``y`` (ties handled; pairs with a NaN dropped).

    Equal to ``scipy.stats.kendalltau(x, y, nan_policy="omit").statistic``. Returns NaN when fewer than
    two pairs remain or either side is constant.
    """
    xa, ya, _ = _pairs(x, y)
    n = xa.size
    if n < 2:
        return float("nan")
    # Sort by y, then stably by x: pairs tied in x are in y order and so never count as discordant.
    perm = np.argsort(ya, kind="mergesort")
    xa, ya = xa[perm], _dense_ranks(ya[perm])
    perm = np.argsort(xa, kind="mergesort")
    xs, yr = xa[perm], ya[perm]
    xr = _dense_ranks(xs)
    discordant = _count_inversions(yr)
    boundary = np.empty(n + 1, dtype=bool)
    boundary[0] = boundary[n] = True
    np.not_equal(xr[1:], xr[:-1], out=boundary[1:n])
    boundary[1:n] |= yr[1:] != yr[:-1]
    runs = np.diff(np.flatnonzero(boundary)).astype(np.int64)
    both_tied = int((runs * (runs - 1) // 2).sum())
    x_tied = _tied_pairs(xr)
    y_tied = _tied_pairs(yr)
    total = n * (n - 1) // 2
    if x_tied == total or y_tied == total:
        return float("nan")
    con_minus_dis = total - x_tied - y_tied + both_tied - 2 * discordant
    tau = con_minus_dis / math.sqrt(total - x_tied) / math.sqrt(total - y_tied)
    return float(min(1.0, max(-1.0, tau)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties getting the average of their positions (``scipy.stats.rankdata``)."""
    n = values.size
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    group_rank = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of average ranks (pairs with a NaN dropped).

    Equal to ``scipy.stats.spearmanr(x, y, nan_policy="omit").statistic``. Returns NaN when fewer than
    two pairs remain or either side is constant.
    """
    xa, ya, _ = _pairs(x, y)
    if xa.size < 2:
        return float("nan")
    rx = _average_ranks(xa)
    ry = _average_ranks(ya)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if denom == 0.0:
        return float("nan")
    return float(min(1.0, max(-1.0, float(rx @ ry) / denom)))


@dataclass(frozen=True)
class RankResult:
    """Rank agreement of scores with ground truth.

    Attributes:
        tau: Kendall's tau-b.
        spearman: Spearman's rho.
        n: number of architectures used (in both tables, both values finite, not flagged).
        n_dropped: architectures in both tables that were dropped: ``n_flagged`` plus those whose
            accuracy is NaN or infinite.
        n_unmatched: score entries with no ground-truth entry (ignored).
        n_flagged: architectures dropped because their score is flagged or not finite (a flagged
            candidate's score is ``-inf``: kept, they would all tie last and distort tau).
    """

    tau: float
    spearman: float
    n: int
    n_dropped: int
    n_unmatched: int = 0
    n_flagged: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


#: Names of an architecture column in ground-truth CSVs, in order of preference.
ARCH_COLUMNS = ("arch", "architecture", "arch_str", "arch_string", "genotype")
_ACC_NAMES = ("acc", "accuracy", "test_acc", "test_accuracy", "top1", "valid_acc", "val_acc")


def pick_column(fieldnames: Sequence[str], given: Optional[str], exact: Sequence[str], stem: str,
                what: str, path: PathLike) -> str:
    """The column of ``fieldnames`` named ``given``, else the first of ``exact`` (case-insensitive), else the
    only one containing ``stem``; ``ValueError`` naming ``what`` and the columns otherwise."""
    if given is not None:
        if given not in fieldnames:
            raise ValueError(f"{what}={given!r} is not a column of {os.fspath(path)!r}; "
                             f"columns are {list(fieldnames)}")
        return given
    lowered = {name.strip().lower(): name for name in fieldnames}
    for cand in exact:
        if cand in lowered:
            return lowered[cand]
    fuzzy = [name for low, name in lowered.items() if stem in low]
    if len(fuzzy) == 1:
        return fuzzy[0]
    detail = f"several columns contain {stem!r}: {fuzzy}" if fuzzy else f"no column is named like {list(exact)}"
    raise ValueError(f"cannot tell which column of {os.fspath(path)!r} holds the {what.split('_')[0]}: "
                     f"{detail}; columns are {list(fieldnames)}; name it with {what}=NAME")


def load_ground_truth(csv_path: PathLike, arch_column: Optional[str] = None,
                      acc_column: Optional[str] = None) -> Dict[str, float]:
    """Reads ``{architecture text: accuracy}`` from a CSV file with a header row.

    Without explicit names, the architecture column is the one named ``arch``/``architecture``/
    ``arch_str``/``genotype`` (case-insensitive; else the only column containing "arch") and the accuracy
    column ``acc``/``accuracy``/``test_acc``/``top1``/... (else the only column containing "acc").
    Empty accuracy cells read as NaN (dropped by :func:`correlate`).

    Raises:
        FileNotFoundError: there is no file ``csv_path``.
        ValueError: the columns cannot be found (the message lists them), a cell is not a number, or an
            architecture appears twice with different accuracies.
    """
    if not Path(csv_path).is_file():
        raise FileNotFoundError(f"csv_path={os.fspath(csv_path)!r}: no such file (expected a CSV with an "
                                "architecture and an accuracy column)")
    try:
        return _read_ground_truth(csv_path, arch_column, acc_column)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{os.fspath(csv_path)!r} is not a readable CSV file ({e})") from None


def _read_ground_truth(csv_path: PathLike, arch_column: Optional[str], acc_column: Optional[str]
                       ) -> Dict[str, float]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fieldnames = reader.fieldnames
        if not fieldnames:
            raise ValueError(f"csv_path={os.fspath(csv_path)!r} is empty: expected a header row")
        arch_col = pick_column(fieldnames, arch_column, ARCH_COLUMNS, "arch", "arch_column", csv_path)
        acc_col = pick_column(fieldnames, acc_column, _ACC_NAMES, "acc", "acc_column", csv_path)
        truth: Dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            text = (row.get(arch_col) or "").strip()
            if not text:
                continue
            cell = (row.get(acc_col) or "").strip()
            try:
                value = float(cell) if cell else float("nan")
            except ValueError:
                raise ValueError(f"{os.fspath(csv_path)}:{line}: column {acc_col!r} holds {cell!r}, "
                                 f"expected a number") from None
            old = truth.get(text)
            if old is not None and not (old == value or (math.isnan(old) and math.isnan(value))):
                raise ValueError(f"{os.fspath(csv_path)}:{line}: architecture {text!r} appears again with "
                                 f"{acc_col}={value!r} (earlier {old!r}); aggregate repeated runs first")
            truth[text] = value
    return truth


def _match(scores: Mapping[str, float], truth: Mapping[str, float],
           canonicalize: Optional[Callable[[str], str]]) -> Tuple[list, list, list, int]:
    canon = canonicalize if canonicalize is not None else (lambda s: s)
    table = {canon(k): float(v) for k, v in truth.items()}
    keys, xs, ys, unmatched = [], [], [], 0
    for text, value in scores.items():
        key = canon(text)
        if key not in table:
            unmatched += 1
            continue
        keys.append(key)
        xs.append(float(value))
        ys.append(table[key])
    if not keys and scores:
        example_s = next(iter(scores))
        example_t = next(iter(truth), None)
        hint = ("pass canonicalize= to map both to one text form" if canonicalize is None else
                "both compared in the space's canonical text form; is the truth of another space or size?")
        raise ValueError(f"no architecture of scores is in truth (e.g. score key {example_s!r}, truth key "
                         f"{example_t!r}); {hint}")
    return keys, xs, ys, unmatched


def _usable(keys: list, xs: list, ys: list, flagged: Iterable[str],
            canonicalize: Optional[Callable[[str], str]]) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """The pairs with a finite, unflagged score and a finite accuracy; ``(x, y, n_dropped, n_flagged)``."""
    canon = canonicalize if canonicalize is not None else (lambda s: s)
    bad = {canon(k) for k in flagged}
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    bad_score = ~np.isfinite(x) | np.array([k in bad for k in keys], dtype=bool)
    keep = ~bad_score & np.isfinite(y)
    return x[keep], y[keep], int(keep.size - keep.sum()), int(bad_score.sum())


def _rank(scores: Mapping[str, float], truth: Mapping[str, float], canonicalize: Optional[Callable[[str], str]],
          flagged: Iterable[str]) -> Tuple[RankResult, np.ndarray, np.ndarray]:
    keys, xs, ys, unmatched = _match(scores, truth, canonicalize)
    x, y, dropped, n_flagged = _usable(keys, xs, ys, flagged, canonicalize)
    if unmatched:
        logger.info("correlate: %d of %d scored architectures have no ground truth", unmatched, len(scores))
    if dropped:
        logger.info("correlate: dropped %d architectures (%d with a flagged or non-finite score)", dropped, n_flagged)
    result = RankResult(tau=kendall_tau(x, y), spearman=spearman(x, y), n=int(x.size), n_dropped=dropped,
                        n_unmatched=unmatched, n_flagged=n_flagged)
    return result, x, y


def correlate(scores: Mapping[str, float], truth: Mapping[str, float],
              canonicalize: Optional[Callable[[str], str]] = None, *,
              flagged: Iterable[str] = ()) -> RankResult:
    """Kendall tau-b and Spearman rho of ``scores`` against ``truth``, matched by architecture text.

    Architectures whose score is flagged (named in ``flagged``) or not finite (NaN, or the ``-inf`` a
    flagged candidate gets) are dropped, as are those whose accuracy is not finite; the result counts them.

    Args:
        scores: ``{architecture text: score}`` (higher is better).
        truth: ``{architecture text: accuracy}``, e.g. from :func:`load_ground_truth`.
        canonicalize: maps a text to the form both tables are compared in (e.g.
            ``lambda s: space.format(space.parse(s))``); identity by default.
        flagged: texts of the candidates whose score is flagged, whatever its value.
    """
    return _rank(scores, truth, canonicalize, flagged)[0]


def scatter_plot(scores: Mapping[str, float], truth: Mapping[str, float], path: PathLike,
                 title: Optional[str] = None,
                 canonicalize: Optional[Callable[[str], str]] = None, *,
                 flagged: Iterable[str] = ()) -> RankResult:
    """Writes a PNG scatter plot of score against ground-truth accuracy; returns the correlation.

    The architectures plotted and correlated are those :func:`correlate` keeps.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change), imported here so
    that importing fastnas never imports matplotlib.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result, x, y = _rank(scores, truth, canonicalize, flagged)
    fig = Figure(figsize=(5.0, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(y, x, s=18, alpha=0.6, linewidths=0.5, edgecolors="black")
    ax.set_xlabel("ground-truth accuracy")
    ax.set_ylabel("score")
    stats = f"Kendall tau {result.tau:.3f}, Spearman {result.spearman:.3f}, n={result.n}"
    ax.set_title(f"{title}\n{stats}" if title else stats, fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    return result
