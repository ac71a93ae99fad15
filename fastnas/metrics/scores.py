"""Score functions for the search: ``make_score_fn(metric, supernet, ...) -> callable(arch) -> Score``.

A metric is a weighted sum of score parts (:class:`~fastnas.metrics.metric.Metric`; the parts are
registered in :mod:`fastnas.metrics.parts`). Presets, by name (higher is better):

==================== ==========================================================================
``accuracy``          top-1 after BatchNorm recalibration (SPOS)
``angle``             ``acos(cos(v_0, v_T)) / pi`` (RLNAS, normalised as in GeNAS)
``flatness``          ``F`` of :func:`~fastnas.metrics.combine.flatness_score` (GeNAS)
``angle+flatness``    ``angle + gamma * F / sigma_1`` (GeNAS; default ``gamma = 16``, its README)
``accuracy+flatness`` ``accuracy + gamma * F / sigma_1`` (default ``gamma = 16``, as for the angle)
``angle+accuracy``    ``angle + gamma * accuracy`` (default ``gamma = 1``)
``R0``/``R1``/``R2``  REG-NAS: ``accuracy``, ``-nfr``, ``accuracy - nfr`` (``nfr`` against ``reference``)
==================== ==========================================================================

and any formula, e.g. ``"angle + 8/sigma1*flatness"`` or ``"1*accuracy - 0.5*loss"``.

Every part's values are reported in ``Score.parts`` (``angle``, ``accuracy`` and ``loss``, ``flatness``
and ``loss@<sigma>``, ...), in term order. What the parts need (clean and/or perturbed losses, the
initial weights) is computed once per candidate, in one evaluator pass. A non-finite part flags the
score and gives it the worst value, ``-inf``; the search goes on.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from fastnas.metrics.accuracy import DEFAULT_BN_BATCH_SIZE, DEFAULT_BN_BATCHES
from fastnas.metrics.angle import AngleScorer
from fastnas.metrics.combine import Score
from fastnas.metrics.evaluator import MultiSigmaEvaluator
from fastnas.metrics.flatness import FlatnessConfig
from fastnas.metrics.metric import DEFAULT_GAMMA, METRICS, Metric
from fastnas.metrics.parts import PartContext

__all__ = ["METRICS", "DEFAULT_GAMMA", "ScoreFunction", "make_score_fn", "default_flatness_config"]

logger = logging.getLogger(__name__)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class ScoreFunction:
    """``arch -> Score``, caching by architecture; built by :func:`make_score_fn`.

    Attributes:
        metric: the :class:`~fastnas.metrics.metric.Metric` (``str(metric)``: its preset name or formula).
        needs: what its parts need, evaluated once per candidate.
        evaluations: candidates actually evaluated (cache misses).
        calls: calls, cache hits included.
        cache: ``{arch: Score}`` (when caching).
    """

    def __init__(self, metric: Metric, space: Any, angle_scorer: Optional[AngleScorer],
                 evaluator: Optional[MultiSigmaEvaluator], flatness_config: Optional[FlatnessConfig],
                 cache: bool) -> None:
        self.metric = metric
        self.needs = metric.needs
        self._parts = metric.score_parts()
        self.space = space
        self._angle = angle_scorer
        self.evaluator = evaluator
        self.flatness_config = flatness_config
        self.cache: Optional[Dict[Any, Score]] = {} if cache else None
        self.evaluations = 0
        self.calls = 0
        self.reference_key: Optional[str] = None  # a hash of the reference's per-sample correctness
        self.reference_error: Optional[float] = None

    def set_reference(self, reference: Any) -> None:
        """The reference negative flips are counted against (a metric with ``nfr``).

        Args:
            reference: an architecture of the supernet (its predictions after the same BatchNorm
                recalibration as a candidate's), or its predictions on the validation set: labels
                ``(n,)`` or logits ``(n, C)``.

        The reference's per-sample correctness is computed once here; a hash of it is part of the cache
        key, so scores against another reference are never mixed up.
        """
        import hashlib

        from fastnas.metrics.flips import predicted_labels

        if "reference" not in self.needs:
            raise ValueError(f"reference: metric {str(self.metric)!r} has no part that uses a reference "
                             "(e.g. nfr)")
        ev = self.evaluator
        if isinstance(reference, torch.Tensor) or hasattr(reference, "__array__"):  # predictions
            labels = predicted_labels("reference", reference, ev.n).to(ev.device)
            correct = labels == ev.labels
        else:
            arch = self.space.validate(reference) if self.space is not None else reference
            correct = ev.reference_correct(arch)
        ev.set_reference(correct)
        packed = correct.to(torch.uint8).cpu().numpy().tobytes()
        self.reference_key = hashlib.sha256(packed).hexdigest()[:16]
        self.reference_error = 1.0 - float(correct.sum()) / ev.n

    @property
    def parts(self) -> Tuple[str, ...]:
        """The metric's part names, in term order."""
        return self.metric.parts

    @property
    def gamma(self) -> Optional[float]:
        """The metric's mixing weight (``None`` when it has none)."""
        return self.metric.gamma

    def _key(self, arch: Any) -> Any:
        return self.space.validate(arch) if self.space is not None else arch

    def _cache_key(self, arch: Any) -> Any:
        return (arch, self.reference_key) if "reference" in self.needs else arch

    def __call__(self, arch: Any) -> Score:
        self.calls += 1
        key = self._key(arch)
        ckey = self._cache_key(key)
        if self.cache is not None and ckey in self.cache:
            return self.cache[ckey]
        if "reference" in self.needs and self.reference_key is None:
            raise ValueError(f"reference: metric {str(self.metric)!r} counts negative flips, but no reference "
                             "is set (make_score_fn(reference=...) or set_reference)")
        score = self._score(key)
        self.evaluations += 1
        if self.cache is not None:
            self.cache[ckey] = score
        return score

    def context(self, arch: Any) -> PartContext:
        """The evaluation of ``arch`` its parts are computed from (one evaluator pass at most)."""
        clean, perturbed = "clean" in self.needs, "perturbed" in self.needs
        result = self.evaluator.evaluate(arch, clean=clean, perturbed=perturbed) if clean or perturbed else None
        return PartContext(arch=arch, config=self.flatness_config, result=result, angle_scorer=self._angle,
                           reference_error=self.reference_error)

    def _score(self, arch: Any) -> Score:
        ctx = self.context(arch)
        parts: Dict[str, Any] = {}
        for part in self._parts:
            parts.update(part(ctx))
        if not all(_finite_number(v) for v in parts.values()):
            return Score(float("-inf"), parts, True)
        value = self.metric.value(parts, self.flatness_config)
        if not math.isfinite(value):
            return Score(float("-inf"), parts, True)
        return Score(value, parts, False)

    def stats(self) -> Dict[str, Any]:
        """Counts and the evaluator's report."""
        out: Dict[str, Any] = {"metric": str(self.metric), "calls": self.calls, "evaluations": self.evaluations}
        if self.evaluator is not None:
            out["evaluator"] = self.evaluator.report()
        return out


def default_flatness_config(space: Any = None, data: Optional[str] = None) -> FlatnessConfig:
    """The score settings when none are given: the space's sigmas for ``data``
    (``space.presets(data).sigmas``) when the space has presets, else :class:`FlatnessConfig` defaults."""
    presets = getattr(space, "presets", None)
    if callable(presets):
        sigmas = getattr(presets(data), "sigmas", None)
        if sigmas:
            return FlatnessConfig(sigmas=tuple(sigmas))
    return FlatnessConfig()


def _pair(name: str, data: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise ValueError(f"{name}: expected an (x, y) pair of tensors, got {type(data).__name__}")
    return data[0], data[1]


def make_score_fn(metric: Union[str, Metric], supernet: nn.Module, space: Any = None, *, valid: Any = None,
                  calib_x: Optional[torch.Tensor] = None, split: Any = None,
                  initial_state: Optional[Mapping[str, torch.Tensor]] = None,
                  flatness_config: Optional[FlatnessConfig] = None, gamma: Optional[float] = None,
                  cache: bool = True, device=None, bn_batches: Optional[int] = None,
                  bn_batch_size: Optional[int] = None, bn_mode: Optional[str] = None,
                  batch_size: Optional[int] = None, precision: Optional[str] = None,
                  reference: Any = None) -> ScoreFunction:
    """A score function ``arch -> Score`` for the search.

    Args:
        metric: a preset name (:data:`METRICS`), a formula (``"angle + 16/sigma1*flatness"``, see
            :meth:`Metric.parse <fastnas.metrics.metric.Metric.parse>`) or a :class:`Metric`.
        supernet: the trained supernet.
        space: its space (``None``: ``supernet.space``); architectures are validated (and cached) by it.
        valid: ``(x, y)`` validation tensors (the search-valid split), for accuracy and flatness.
        calib_x: BatchNorm recalibration images (the supernet-train split); ``None``: ``valid``'s images.
        split: a :class:`~fastnas.data.splits.SearchSplit` instead of ``valid``/``calib_x``.
        initial_state: the supernet's state before training (``TrainResult.initial_state``), for the angle.
        flatness_config: flatness settings (``None``: :func:`default_flatness_config` of the space, i.e.
            its presets' sigmas); its BN settings apply to accuracy too.
        gamma: the metric's mixing weight (``None``: the metric's own, for a preset :data:`DEFAULT_GAMMA`);
            ignored by a single-term metric.
        cache: remember each architecture's score.
        device: where to evaluate (default: the supernet's device).
        bn_batches, bn_batch_size, bn_mode, batch_size, precision: override ``flatness_config``'s.
        reference: for a metric with ``nfr`` (REG-NAS's ``R1``, ``R2``, ``"accuracy - 2*nfr"``): the
            reference architecture of the supernet, or its predictions on ``valid`` (labels or logits);
            see :meth:`ScoreFunction.set_reference`.

    Raises:
        ValueError: an unknown metric or part (with the registered ones), a missing input a part needs,
            a part that cannot be computed with these settings (e.g. ``loss@0.5`` without that level).
    """
    metric = Metric.parse(metric).with_gamma(gamma)
    if not isinstance(supernet, nn.Module) or not hasattr(supernet, "path_parameters"):
        raise ValueError(f"supernet: expected a Supernet (with path_parameters), got {type(supernet).__name__}")
    space = space if space is not None else getattr(supernet, "space", None)
    needs = metric.needs
    name = str(metric)
    angle_scorer = None
    if "initial_state" in needs:
        if initial_state is None:
            raise ValueError(f"initial_state: metric {name!r} needs the supernet's weights before training "
                             "(TrainResult.initial_state or the supernet_init.pt checkpoint)")
        angle_scorer = AngleScorer(supernet, initial_state, normalize=True)
    if "reference" in needs and reference is None:
        raise ValueError(f"reference: metric {name!r} counts negative flips against a reference; pass "
                         "reference= (an architecture of the supernet, or its predictions on valid)")
    if "reference" not in needs and reference is not None:
        raise ValueError(f"reference: metric {name!r} has no part that uses a reference (e.g. nfr)")
    evaluator = None
    cfg = flatness_config
    evaluate = "clean" in needs or "perturbed" in needs
    if evaluate or metric.uses_sigma1:
        if cfg is None:
            cfg = default_flatness_config(space)
            if "perturbed" not in needs:
                cfg = cfg.replace(bn_batches=DEFAULT_BN_BATCHES, bn_batch_size=DEFAULT_BN_BATCH_SIZE)
        overrides = {k: v for k, v in dict(bn_batches=bn_batches, bn_batch_size=bn_batch_size, bn_mode=bn_mode,
                                           batch_size=batch_size, precision=precision).items() if v is not None}
        if overrides:
            cfg = cfg.replace(**overrides)
        for part in metric.score_parts():
            if part.check is not None:
                part.check(cfg)
    if evaluate:
        if split is not None:
            valid = split.search_valid
            calib_x = split.supernet_train[0] if calib_x is None else calib_x
        if valid is None:
            raise ValueError(f"valid: metric {name!r} needs validation data: valid=(x, y) or split=SearchSplit")
        vx, vy = _pair("valid", valid)
        evaluator = MultiSigmaEvaluator(
            supernet, vx, vy, sigmas=cfg.sigmas if "perturbed" in needs else (), samples=cfg.samples,
            noise=cfg.noise, seed=cfg.seed, precision=cfg.precision, batch_size=cfg.batch_size, device=device,
            calib_x=calib_x, bn_batches=cfg.bn_batches, bn_batch_size=cfg.bn_batch_size, bn_mode=cfg.bn_mode,
            scope=cfg.scope)
    fn = ScoreFunction(metric, space, angle_scorer, evaluator, cfg, cache)
    if reference is not None:
        fn.set_reference(reference)
    return fn
