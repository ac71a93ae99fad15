"""The one place a run builds its score function from its config (a thin layer over fastnas.metrics).

:func:`build_score_fn` maps the run's settings onto ``fastnas.metrics.make_score_fn`` and wraps the
result in a :class:`TimedScoreFn` that counts calls and seconds, separating the time spent in BatchNorm
recalibration (measured around ``supernet.recalibrate``) from the rest of scoring.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from fastnas.run.config import RunConfig

__all__ = ["build_score_fn", "TimedScoreFn"]

logger = logging.getLogger(__name__)

Pair = Tuple[torch.Tensor, torch.Tensor]


class TimedScoreFn:
    """``arch -> Score`` that measures itself: ``calls``, ``seconds`` (all scoring, recalibration included)
    and ``recal_seconds`` (time inside ``supernet.recalibrate``; ``None`` if it was never seen)."""

    def __init__(self, fn: Callable[[Any], Any], supernet: Any) -> None:
        self.fn = fn
        self.calls = 0
        self.seconds = 0.0
        self.recal_seconds: Optional[float] = None
        self.recal_calls = 0
        original = supernet.recalibrate

        def timed_recalibrate(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.recal_seconds = (self.recal_seconds or 0.0) + time.perf_counter() - t0
                self.recal_calls += 1

        # An instance attribute shadows the method for this supernet object only.
        supernet.recalibrate = timed_recalibrate

    def __call__(self, arch: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.fn(arch)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


def build_score_fn(config: RunConfig, supernet: Any, space: Any, *, valid: Pair, recal: Pair,
                   initial_state: Optional[Dict[str, torch.Tensor]], device: torch.device) -> TimedScoreFn:
    """The score function of ``config.metric`` over the trained ``supernet``.

    Args:
        config: the run's settings (metric, sigmas, alpha, gamma, noise, samples, recal_batches, seed).
        supernet: the trained supernet (on ``device``).
        space: its space.
        valid: ``(x, y)`` images the candidates are scored on (the search-validation subset).
        recal: ``(x, y)`` images for BatchNorm recalibration (the supernet-training half).
        initial_state: the supernet's initial ``state_dict`` (for the angle score).
        device: where scoring runs.
    """
    try:
        from fastnas.metrics import scores as _scores  # the metrics layer, imported when a run scores
    except ImportError:  # INTERIM until fastnas.metrics.scores lands
        from fastnas.run import _interim_scores as _scores

    flat_cfg = None
    if config.uses("flatness"):
        flat_cfg = _flatness_config(_scores, config)
    fn = _call_factory(_scores.make_score_fn, config, supernet, space, valid=valid, recal=recal,
                       initial_state=initial_state, flatness_config=flat_cfg, device=device)
    return TimedScoreFn(fn, supernet)


def _flatness_config(module: Any, config: RunConfig) -> Any:
    cls = getattr(module, "FlatnessConfig", None)
    if cls is None:
        from fastnas.metrics import flatness as _flatness
        cls = _flatness.FlatnessConfig
    wanted = {"sigmas": tuple(config.sigmas), "alpha": config.alpha, "noise": config.noise,
              "samples": config.samples, "seed": config.seed, "recal_batches": config.recal_batches}
    accepted = set(inspect.signature(cls).parameters)
    kwargs = {k: v for k, v in wanted.items() if v is not None and k in accepted}
    return cls(**kwargs)


def _call_factory(factory: Callable[..., Any], config: RunConfig, supernet: Any, space: Any, *,
                  valid: Pair, recal: Pair, initial_state: Any, flatness_config: Any,
                  device: torch.device) -> Callable[[Any], Any]:
    params = inspect.signature(factory).parameters
    offered = {"initial_state": initial_state, "flatness_config": flatness_config,
               "gamma": config.gamma, "cache": False, "seed": config.seed, "device": device,
               "recal_batches": config.recal_batches, "batch_size": config.batch_size}
    kwargs = {k: v for k, v in offered.items() if k in params and v is not None}
    data_names = [n for n in ("valid", "data", "valid_data", "batches") if n in params]
    recal_names = [n for n in ("recal", "recal_data", "train", "train_data") if n in params]
    if data_names:
        kwargs[data_names[0]] = valid
    if recal_names:
        kwargs[recal_names[0]] = recal
    if data_names:
        return factory(config.metric, supernet, space, **kwargs)
    return factory(config.metric, supernet, space, valid, **kwargs)
