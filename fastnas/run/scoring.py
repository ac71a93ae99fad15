"""The one place a run builds its score function from its config (a thin layer over fastnas.metrics).

:func:`build_score_fn` maps the run's settings onto :func:`fastnas.metrics.make_score_fn` and wraps the
result in a :class:`TimedScoreFn` that counts calls and seconds and, separately, the seconds spent in
BatchNorm recalibration (as the evaluator reports them).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from fastnas.run.config import RunConfig

__all__ = ["build_score_fn", "flatness_config", "default_sigmas", "TimedScoreFn"]

Pair = Tuple[torch.Tensor, torch.Tensor]


def default_sigmas(space: Any, data: Optional[str]) -> Tuple[float, ...]:
    """The sigmas the space recommends for the dataset (``space.presets(data)``); ``space`` is a
    :class:`~fastnas.spaces.Space` or a registered name."""
    if isinstance(space, str):
        from fastnas.spaces import create_space

        space = create_space(space)
    return tuple(space.presets(data).sigmas)


def flatness_config(config: RunConfig) -> Any:
    """The :class:`fastnas.metrics.FlatnessConfig` of the run's ``score`` section, seeded by the run (also
    used for the BN recalibration of the accuracy score); unset settings keep the FlatnessConfig defaults."""
    return config.component("score", seed=config.seed)


class TimedScoreFn:
    """``arch -> Score`` that measures itself: ``calls``, ``seconds`` (all of scoring, recalibration
    included) and ``recal_seconds`` (BatchNorm recalibration only)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.calls = 0
        self.seconds = 0.0
        self.recal_seconds = 0.0

    def __call__(self, arch: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.fn(arch)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            evaluator = getattr(self.fn, "evaluator", None)
            self.recal_seconds = float(getattr(evaluator, "recal_seconds", 0.0))

    def stats(self) -> Dict[str, Any]:
        out = {"calls": self.calls, "seconds": self.seconds, "recal_seconds": self.recal_seconds}
        inner = getattr(self.fn, "stats", None)
        if callable(inner):
            out["score_fn"] = inner()
        return out


def build_score_fn(config: RunConfig, supernet: Any, space: Any, *, valid: Pair, calib_x: torch.Tensor,
                   initial_state: Optional[Mapping[str, torch.Tensor]], device: torch.device) -> TimedScoreFn:
    """The score function of ``config.metric`` over the trained ``supernet``.

    Args:
        config: the run's settings (metric, sigmas, alpha, gamma, noise, samples, recal_batches, seed).
        supernet: the trained supernet (on ``device``).
        space: its space.
        valid: ``(x, y)``: the images candidates are scored on (the search-validation subset).
        calib_x: images for BatchNorm recalibration (the supernet-training half).
        initial_state: the supernet's initial ``state_dict`` (for the angle score).
        device: where scoring runs.
    """
    from fastnas.metrics import make_score_fn

    fn = make_score_fn(config.metric, supernet, space, valid=valid, calib_x=calib_x, initial_state=initial_state,
                       flatness_config=flatness_config(config), gamma=config.gamma, device=device)
    return TimedScoreFn(fn)
