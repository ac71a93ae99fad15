"""Score functions for the search: ``make_score_fn(metric, supernet, ...) -> callable(arch) -> Score``.

Metrics and their values (higher is better):

==================== ==========================================================================
``accuracy``          top-1 after BatchNorm recalibration (SPOS)
``angle``             ``acos(cos(v_0, v_T)) / pi`` (RLNAS, normalised as in GeNAS)
``flatness``          ``F`` of :func:`~fastnas.metrics.combine.flatness_score` (GeNAS)
``angle+flatness``    ``angle + gamma * F / sigma_1`` (GeNAS; default ``gamma = 16``, its README)
``accuracy+flatness`` ``accuracy + gamma * F / sigma_1`` (default ``gamma = 16``, as for the angle)
``angle+accuracy``    ``angle + gamma * accuracy`` (default ``gamma = 1``)
==================== ==========================================================================

Every part is reported in ``Score.parts`` (``angle``, ``accuracy``, ``flatness``, ``loss@<sigma>``). A
non-finite part flags the score and gives it the worst value, ``-inf``; the search goes on.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from fastnas.metrics.accuracy import DEFAULT_BN_BATCH_SIZE, DEFAULT_BN_BATCHES
from fastnas.metrics.angle import AngleScorer
from fastnas.metrics.combine import Score, combined
from fastnas.metrics.evaluator import MultiSigmaEvaluator, check_choice
from fastnas.metrics.flatness import FlatnessConfig, result_from_eval

__all__ = ["METRICS", "DEFAULT_GAMMA", "ScoreFunction", "make_score_fn"]

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "angle", "flatness", "angle+flatness", "accuracy+flatness", "angle+accuracy")
#: Default mixing weight per combined metric.
DEFAULT_GAMMA: Dict[str, float] = {"angle+flatness": 16.0, "accuracy+flatness": 16.0, "angle+accuracy": 1.0}


class ScoreFunction:
    """``arch -> Score``, caching by architecture; built by :func:`make_score_fn`.

    Attributes:
        metric: the metric name.
        evaluations: candidates actually evaluated (cache misses).
        calls: calls, cache hits included.
        cache: ``{arch: Score}`` (when caching).
    """

    def __init__(self, metric: str, parts: Tuple[str, ...], gamma: Optional[float], space: Any,
                 angle_scorer: Optional[AngleScorer], evaluator: Optional[MultiSigmaEvaluator],
                 flatness_config: Optional[FlatnessConfig], cache: bool) -> None:
        self.metric = metric
        self.parts = parts
        self.gamma = gamma
        self.space = space
        self._angle = angle_scorer
        self.evaluator = evaluator
        self.flatness_config = flatness_config
        self.cache: Optional[Dict[Any, Score]] = {} if cache else None
        self.evaluations = 0
        self.calls = 0

    def _key(self, arch: Any) -> Any:
        return self.space.validate(arch) if self.space is not None else arch

    def __call__(self, arch: Any) -> Score:
        self.calls += 1
        key = self._key(arch)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        score = self._score(key)
        self.evaluations += 1
        if self.cache is not None:
            self.cache[key] = score
        return score

    def _score(self, arch: Any) -> Score:
        parts: Dict[str, Any] = {}
        if "angle" in self.parts:
            parts["angle"] = self._angle(arch)
        want_acc, want_flat = "accuracy" in self.parts, "flatness" in self.parts
        if want_acc or want_flat:
            r = self.evaluator.evaluate(arch, clean=want_acc, perturbed=want_flat)
            if want_acc:
                parts["accuracy"] = r.clean_accuracy
                parts["loss"] = r.clean_loss
            if want_flat:
                cfg = self.flatness_config
                fr = result_from_eval(r, cfg.alpha, cfg.eps)
                parts.update(fr.parts())
        values = [parts[p] for p in self.parts]
        flagged = not all(isinstance(v, (int, float)) and math.isfinite(v) for v in parts.values())
        if flagged or not all(math.isfinite(v) for v in values):
            return Score(float("-inf"), parts, True)
        if len(self.parts) == 1:
            value = float(values[0])
        elif self.parts[1] == "flatness":
            value = combined(values[0], values[1], self.flatness_config.sigmas[0], self.gamma)
        else:  # angle + gamma * accuracy
            value = float(values[0]) + self.gamma * float(values[1])
        if not math.isfinite(value):
            return Score(float("-inf"), parts, True)
        return Score(value, parts, False)

    def stats(self) -> Dict[str, Any]:
        """Counts and the evaluator's report."""
        out: Dict[str, Any] = {"metric": self.metric, "calls": self.calls, "evaluations": self.evaluations}
        if self.evaluator is not None:
            out["evaluator"] = self.evaluator.report()
        return out


def _pair(name: str, data: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise ValueError(f"{name}: expected an (x, y) pair of tensors, got {type(data).__name__}")
    return data[0], data[1]


def make_score_fn(metric: str, supernet: nn.Module, space: Any = None, *, valid: Any = None,
                  calib_x: Optional[torch.Tensor] = None, split: Any = None,
                  initial_state: Optional[Mapping[str, torch.Tensor]] = None,
                  flatness_config: Optional[FlatnessConfig] = None, gamma: Optional[float] = None,
                  cache: bool = True, device=None, bn_batches: Optional[int] = None,
                  bn_batch_size: Optional[int] = None, bn_mode: Optional[str] = None,
                  batch_size: Optional[int] = None, precision: Optional[str] = None) -> ScoreFunction:
    """A score function ``arch -> Score`` for the search.

    Args:
        metric: one of :data:`METRICS`.
        supernet: the trained supernet.
        space: its space (``None``: ``supernet.space``); architectures are validated (and cached) by it.
        valid: ``(x, y)`` validation tensors (the search-valid split), for accuracy and flatness.
        calib_x: BatchNorm recalibration images (the supernet-train split); ``None``: ``valid``'s images.
        split: a :class:`~fastnas.data.splits.SearchSplit` instead of ``valid``/``calib_x``.
        initial_state: the supernet's state before training (``TrainResult.initial_state``), for the angle.
        flatness_config: flatness settings (``None``: the NB201 preset for the nb201 space, the DARTS
            CIFAR-10 preset for darts); its BN settings apply to accuracy too.
        gamma: mixing weight of a combined metric (``None``: :data:`DEFAULT_GAMMA`).
        cache: remember each architecture's score.
        device: where to evaluate (default: the supernet's device).
        bn_batches, bn_batch_size, bn_mode, batch_size, precision: override ``flatness_config``'s.
    """
    metric = check_choice("metric", metric, METRICS)
    if not isinstance(supernet, nn.Module) or not hasattr(supernet, "path_parameters"):
        raise ValueError(f"supernet: expected a Supernet (with path_parameters), got {type(supernet).__name__}")
    space = space if space is not None else getattr(supernet, "space", None)
    parts = tuple(metric.split("+"))
    if len(parts) > 1:
        gamma = DEFAULT_GAMMA[metric] if gamma is None else float(gamma)
        if not math.isfinite(gamma):
            raise ValueError(f"gamma={gamma!r}: expected a finite number")
    angle_scorer = None
    if "angle" in parts:
        if initial_state is None:
            raise ValueError(f"initial_state: metric {metric!r} needs the supernet's weights before training "
                             "(TrainResult.initial_state or the supernet_init.pt checkpoint)")
        angle_scorer = AngleScorer(supernet, initial_state, normalize=True)
    evaluator = None
    cfg = flatness_config
    if "accuracy" in parts or "flatness" in parts:
        if split is not None:
            valid = split.search_valid
            calib_x = split.supernet_train[0] if calib_x is None else calib_x
        if valid is None:
            raise ValueError(f"valid: metric {metric!r} needs validation data: valid=(x, y) or split=SearchSplit")
        vx, vy = _pair("valid", valid)
        if cfg is None:
            name = getattr(space, "name", "")
            cfg = FlatnessConfig.preset("darts-cifar10" if name == "darts" else "nb201")
            if "flatness" not in parts:
                cfg = cfg.replace(bn_batches=DEFAULT_BN_BATCHES, bn_batch_size=DEFAULT_BN_BATCH_SIZE)
        overrides = {k: v for k, v in dict(bn_batches=bn_batches, bn_batch_size=bn_batch_size, bn_mode=bn_mode,
                                           batch_size=batch_size, precision=precision).items() if v is not None}
        if overrides:
            cfg = cfg.replace(**overrides)
        evaluator = MultiSigmaEvaluator(
            supernet, vx, vy, sigmas=cfg.sigmas if "flatness" in parts else (), samples=cfg.samples,
            noise=cfg.noise, seed=cfg.seed, precision=cfg.precision, batch_size=cfg.batch_size, device=device,
            calib_x=calib_x, bn_batches=cfg.bn_batches, bn_batch_size=cfg.bn_batch_size, bn_mode=cfg.bn_mode,
            scope=cfg.scope)
    return ScoreFunction(metric, parts, gamma if len(parts) > 1 else None, space, angle_scorer, evaluator, cfg,
                         cache)
