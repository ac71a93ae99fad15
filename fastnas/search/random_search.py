"""Random search (unique samples) and exhaustive search over a finite space."""

from __future__ import annotations

import logging
import random
from typing import Any, List, Optional

from fastnas.search.history import (
    Callback, Constraints, Proposer, ScoreFn, SearchRecord, SearchResult, score_arch, top_indices,
)

__all__ = ["random_search", "exhaustive"]

logger = logging.getLogger(__name__)


def _finish(history: List[SearchRecord], topk: int, exhausted: bool, config: dict) -> SearchResult:
    best = top_indices(history, range(len(history)), topk)
    return SearchResult(history=history, topk=[history[i] for i in best], generations=1,
                        exhausted=exhausted, config=config)


def random_search(space: Any, score_fn: ScoreFn, n: int, seed: int = 0, *,
                  max_params: Optional[float] = None, max_flops: Optional[float] = None,
                  max_tries: int = 100, topk: int = 10,
                  callback: Optional[Callback] = None) -> SearchResult:
    """Scores ``n`` distinct random architectures within the constraints.

    Args:
        space: a :class:`fastnas.spaces.Space`.
        score_fn: ``arch -> float`` or ``arch -> Score`` (higher is better).
        n: number of architectures to score (fewer if the admissible space is smaller: ``exhausted``).
        seed: seed of the ``random.Random`` drawing the samples.
        max_params, max_flops: upper limits on ``space.params`` / ``space.flops`` (None: none).
        max_tries: samples drawn per new architecture before falling back to enumerating the unseen
            admissible ones (finite spaces) or stopping.
        topk: length of ``result.topk``.
        callback: ``callback("candidate", {"record", "index", "count"})`` after each scored architecture.
    """
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n={n!r}: expected an integer >= 0")
    if not (isinstance(max_tries, int) and max_tries >= 1):
        raise ValueError(f"max_tries={max_tries!r}: expected an integer >= 1")
    if not (isinstance(topk, int) and topk >= 1):
        raise ValueError(f"topk={topk!r}: expected an integer >= 1")
    rng = random.Random(seed)
    proposer = Proposer(space, Constraints(max_params, max_flops), set(), max_tries)
    history: List[SearchRecord] = []
    exhausted = False
    while len(history) < n:
        arch = proposer.random(rng)
        if arch is None:
            exhausted = True
            logger.info("random search: admissible space exhausted after %d architectures", len(history))
            break
        record = score_arch(space, score_fn, arch, 0, "random", proposer.measured.pop(arch))
        history.append(record)
        if callback is not None:
            callback("candidate", {"record": record, "index": len(history) - 1, "count": n})
    config = {"n": n, "seed": seed, "max_params": max_params, "max_flops": max_flops,
              "max_tries": max_tries, "topk": topk}
    return _finish(history, topk, exhausted, config)


def exhaustive(space: Any, score_fn: ScoreFn, progress: Optional[Callback] = None, *,
               max_params: Optional[float] = None, max_flops: Optional[float] = None,
               topk: int = 10) -> SearchResult:
    """Scores every architecture of ``space.enumerate()`` within the constraints, in that order.

    Args:
        space: a finite :class:`fastnas.spaces.Space`.
        score_fn: ``arch -> float`` or ``arch -> Score`` (higher is better).
        progress: ``progress("candidate", {"record", "index", "count"})`` after each scored architecture
            (``count`` is ``space.size()``, or None); the same hook shape as the other searchers.
        max_params, max_flops: upper limits on ``space.params`` / ``space.flops`` (None: none).
        topk: length of ``result.topk``.
    """
    if not (isinstance(topk, int) and topk >= 1):
        raise ValueError(f"topk={topk!r}: expected an integer >= 1")
    constraints = Constraints(max_params, max_flops)
    count = space.size()
    history: List[SearchRecord] = []
    seen: set = set()
    for arch in space.enumerate():
        if arch in seen:
            continue
        seen.add(arch)
        ok, params, flops = constraints.measure(space, arch)
        if not ok:
            continue
        record = score_arch(space, score_fn, arch, 0, "exhaustive", (params, flops))
        history.append(record)
        if progress is not None:
            progress("candidate", {"record": record, "index": len(history) - 1, "count": count})
    config = {"max_params": max_params, "max_flops": max_flops, "topk": topk}
    return _finish(history, topk, True, config)
