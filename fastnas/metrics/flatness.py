"""The flatness score (GeNAS "FBS"): loss of a model at several Gaussian weight perturbations.

``F = 1 / (sum_i |(L_{i+1} - L_i) / (sigma_{i+1} - sigma_i)| + alpha * |L_1 / sigma_1| + eps)``
(:func:`~fastnas.metrics.combine.flatness_score`), with ``L_i`` the mean validation loss at noise level
``sigma_i``. Two entry points:

* :func:`flatness` — any ``nn.Module`` and any data (a DataLoader, ``(x, y)`` batches, or a tensor pair);
* :class:`FlatnessConfig` + :func:`supernet_flatness` — a supernet candidate, with BatchNorm recalibration
  and the search-time settings (used by :func:`~fastnas.metrics.scores.make_score_fn`).

Both run on :class:`~fastnas.metrics.evaluator.MultiSigmaEvaluator`; weights are bit-identical afterwards.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from fastnas._hints import did_you_mean
from fastnas.metrics.combine import flatness_score
from fastnas.metrics.evaluator import (
    BN_MODES, NOISE_MODES, PRECISIONS, SCOPES, EvalResult, MultiSigmaEvaluator, check_choice, check_sigmas,
)

__all__ = ["FlatnessConfig", "FlatnessResult", "flatness", "supernet_flatness", "PRESETS", "result_from_eval"]


def _finite_nonneg(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a number") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name}={value!r}: expected a finite value >= 0")
    return v


def _int_at_least(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
    return value


@dataclass(frozen=True)
class FlatnessConfig:
    """Settings of the flatness score of supernet candidates.

    Args:
        sigmas: noise levels (absolute standard deviations), positive, strictly increasing.
        alpha: weight of the ``|L_1 / sigma_1|`` term (1: GeNAS code, 0: pure flatness).
        eps: added to the denominator (GeNAS: 1e-5).
        samples: noise samples per level, averaged (GeNAS: 1).
        noise: ``"independent"``, ``"cumulative"`` (the GeNAS code) or ``"shared"``; see
            :class:`~fastnas.metrics.evaluator.MultiSigmaEvaluator`.
        scope: ``"path"`` (all of the candidate's parameters; equal to perturbing the whole supernet as
            GeNAS does) or ``"cells"`` (only the searched cells' parameters).
        seed: noise seed.
        precision: ``"fp32"`` or ``"bf16"`` (autocast forward, fp32 loss).
        bn_mode: BatchNorm recalibration mode, ``"exact"`` or ``"momentum"`` (GeNAS).
        bn_batches: recalibration batches per candidate (GeNAS: ceil(850/64) = 14); 0 keeps the
            supernet's statistics.
        bn_batch_size: images per recalibration batch (GeNAS: 64).
        batch_size: validation batch size (``None``: automatic, see the evaluator).
    """

    sigmas: Tuple[float, ...] = (2e-3, 1e-2, 2e-2)
    alpha: float = 1.0
    eps: float = 1e-5
    samples: int = 1
    noise: str = "independent"
    scope: str = "path"
    seed: int = 0
    precision: str = "fp32"
    bn_mode: str = "exact"
    bn_batches: int = 14
    bn_batch_size: int = 64
    batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", check_sigmas(self.sigmas))
        object.__setattr__(self, "alpha", _finite_nonneg("alpha", self.alpha))
        object.__setattr__(self, "eps", _finite_nonneg("eps", self.eps))
        _int_at_least("samples", self.samples, 1)
        check_choice("noise", self.noise, NOISE_MODES)
        check_choice("scope", self.scope, SCOPES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("bn_mode", self.bn_mode, BN_MODES)
        _int_at_least("seed", self.seed, 0)
        _int_at_least("bn_batches", self.bn_batches, 0)
        _int_at_least("bn_batch_size", self.bn_batch_size, 1)
        if self.batch_size is not None:
            _int_at_least("batch_size", self.batch_size, 1)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sigmas"] = list(self.sigmas)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FlatnessConfig":
        """The config of ``d``; unknown keys are an error (with close matches), ``None`` keeps defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            hint = did_you_mean(unknown[0], names, n=2)
            raise ValueError(f"FlatnessConfig: unknown key {unknown[0]!r}{hint}; expected {names}")
        kw = {k: v for k, v in d.items() if v is not None or k == "batch_size"}
        if "sigmas" in kw:
            kw["sigmas"] = tuple(kw["sigmas"])
        return cls(**kw)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "FlatnessConfig":
        """A config with the sigmas a space recommends: ``"<space>"`` or ``"<space>-<dataset>"``, e.g.
        ``"nb201"``, ``"darts-cifar10"``, ``"darts-cifar100"`` (see :data:`PRESETS`)."""
        if not isinstance(name, str) or name not in PRESETS:
            check_choice("preset", name, list(PRESETS))
        return cls(sigmas=PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})

    def replace(self, **changes: Any) -> "FlatnessConfig":
        return dataclasses.replace(self, **changes)


class _SpacePresets(Mapping):
    """``"<space>"`` or ``"<space>-<dataset>"`` -> the sigmas of ``create_space(space).presets(dataset)``,
    for every registered space and dataset (read-only, computed on lookup)."""

    @staticmethod
    def _split(name: str) -> Optional[Tuple[str, Optional[str]]]:
        from fastnas.spaces import list_spaces

        for space in sorted(list_spaces(), key=len, reverse=True):
            if name == space:
                return space, None
            if name.startswith(space + "-") and len(name) > len(space) + 1:
                return space, name[len(space) + 1:]
        return None

    def __getitem__(self, name: str) -> Tuple[float, ...]:
        from fastnas.spaces import create_space

        split = self._split(name) if isinstance(name, str) else None
        if split is None:
            raise KeyError(name)
        return create_space(split[0]).presets(split[1]).sigmas

    def __iter__(self) -> Iterator[str]:
        from fastnas.data import list_datasets
        from fastnas.spaces import list_spaces

        for space in list_spaces():
            yield space
            for data in list_datasets():
                yield f"{space}-{data}"

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return "PRESETS(" + ", ".join(f"{k!r}: {self[k]!r}" for k in self) + ")"


#: The sigmas each space recommends (``Space.presets``), e.g. GeNAS's: ``PRESETS["nb201"]`` (its Table 5),
#: ``PRESETS["darts-cifar10"]``, ``PRESETS["darts-cifar100"]``.
PRESETS: Mapping[str, Tuple[float, ...]] = _SpacePresets()


@dataclass(frozen=True)
class FlatnessResult:
    """Flatness of one model.

    Attributes:
        score: ``F`` (NaN when a loss is not finite; then ``flagged``).
        losses: mean loss at each sigma level (averaged over samples), in order.
        sigmas: the levels.
        flagged: a loss was NaN or infinite (e.g. the model diverged at a large sigma).
        accuracies: mean top-1 at each level.
        sample_losses: ``sample_losses[i][s]``, loss at level ``i``, sample ``s``.
        report: how the evaluation ran (device, channels_last, folded_bn, precision, batch_size).
    """

    score: float
    losses: Tuple[float, ...]
    sigmas: Tuple[float, ...]
    flagged: bool
    accuracies: Tuple[float, ...]
    sample_losses: Tuple[Tuple[float, ...], ...] = ()
    report: Dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def parts(self) -> Dict[str, float]:
        """``{"flatness": F, "loss@<sigma>": L, ...}`` for a :class:`~fastnas.metrics.combine.Score`."""
        out: Dict[str, float] = {"flatness": self.score}
        for s, loss in zip(self.sigmas, self.losses):
            out[f"loss@{s:g}"] = loss
        return out


def result_from_eval(r: EvalResult, alpha: float, eps: float, report: Optional[Dict[str, Any]] = None) -> FlatnessResult:
    """A :class:`FlatnessResult` from the evaluator's losses."""
    losses = r.mean_losses
    flagged = not all(math.isfinite(v) for v in losses)
    score = float("nan") if flagged else flatness_score(losses, r.sigmas, alpha=alpha, eps=eps)
    flagged = flagged or not math.isfinite(score)
    return FlatnessResult(score, losses, tuple(r.sigmas), flagged, r.mean_accuracies, r.losses, dict(report or {}))


def _stack_data(data: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` tensors from a tensor pair, a DataLoader or an iterable of ``(x, y)`` batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.dim() == 0 or y.dim() == 0:
            raise ValueError(f"data: x has shape {tuple(x.shape)} and y {tuple(y.shape)}; expected x of shape "
                             "(N, ...) and labels y of shape (N,)")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data: x has {x.shape[0]} samples but y has {y.shape[0]}; expected as many labels "
                             "as samples")
        if y.dim() != 1:
            raise ValueError(f"data: y has shape {tuple(y.shape)}; expected labels of shape (N,) = "
                             f"({x.shape[0]},)")
        return x, y
    if isinstance(data, torch.Tensor):
        raise ValueError("data: got a single tensor; expected (x, y) tensors, a DataLoader or (x, y) batches")
    try:
        it = iter(data)
    except TypeError:
        raise ValueError(f"data: expected (x, y) tensors, a DataLoader or an iterable of (x, y) batches, got "
                         f"{type(data).__name__}") from None
    xs, ys = [], []
    for k, batch in enumerate(it):
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor)
                and isinstance(batch[1], torch.Tensor)):
            raise ValueError(f"data: batch {k} is a {type(batch).__name__}; expected an (x, y) pair of tensors")
        xs.append(batch[0])
        ys.append(batch[1].reshape(-1))
    if not xs:
        raise ValueError("data: no batches; expected at least one (x, y) batch")
    return torch.cat(xs), torch.cat(ys)


def _check_model_dtype(model: nn.Module) -> None:
    """Only float32 models: the evaluator stages the data as float32 (and ``precision="bf16"`` runs a float32
    model under autocast); another dtype would fail deep in torch with a dtype mismatch."""
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.is_floating_point()})
    if dtypes and dtypes != ["float32"]:
        raise ValueError(f"model: its parameters are {', '.join(dtypes)}; fastnas.flatness scores float32 models "
                         "(precision='bf16' runs them under bf16 autocast); call model.float() first")


def flatness(model: nn.Module, data: Any, sigmas: Sequence[float], alpha: float = 1.0, samples: int = 1,
             seed: int = 0, noise: str = "independent", criterion: Optional[Callable] = None,
             precision: str = "fp32", eps: float = 1e-5, params: Optional[Iterable] = None, *,
             batch_size: Optional[int] = None, device=None) -> FlatnessResult:
    """Flatness of any model: its losses at weight perturbations ``theta + N(0, sigma_i^2)``.

    Args:
        model: any ``nn.Module`` mapping a batch ``x`` to logits. Put in eval mode for scoring (BatchNorm
            uses its running statistics; they are not changed), every submodule's mode restored after.
        data: a ``DataLoader``, an iterable of ``(x, y)`` batches, or a pair of tensors ``(x, y)``. It is
            read once and staged on the model's device.
        sigmas: noise levels, positive and strictly increasing.
        alpha: weight of the ``|L_1 / sigma_1|`` term; ``eps``: added to the denominator.
        samples: noise samples per level, averaged (>= 1).
        seed: noise seed (the same seed gives the same noise: reproducible).
        noise: ``"independent"``, ``"cumulative"`` or ``"shared"`` (see
            :class:`~fastnas.metrics.evaluator.MultiSigmaEvaluator`).
        criterion: ``criterion(logits, y)`` returning the batch mean (or with ``reduction="sum"``);
            default cross-entropy. The loss at a level is the per-sample mean over all of ``data``.
        precision: ``"fp32"`` or ``"bf16"``.
        params: the parameters to perturb (names or tensors of ``model``); default all.
        batch_size: evaluation batch size (``None``: automatic).

    Returns:
        A :class:`FlatnessResult`; a non-finite loss gives ``flagged=True`` and ``score=nan``.

    The weights are bit-identical afterwards, also when the model or the criterion raises.

    Example::

        res = fastnas.flatness(model, val_loader, sigmas=(0.002, 0.01, 0.02))
        res.score, res.losses
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    _check_model_dtype(model)
    sig = check_sigmas(sigmas)
    check_choice("noise", noise, NOISE_MODES)
    check_choice("precision", precision, PRECISIONS)
    _int_at_least("samples", samples, 1)
    alpha = _finite_nonneg("alpha", alpha)
    eps = _finite_nonneg("eps", eps)
    if criterion is not None and not callable(criterion):
        raise ValueError(f"criterion: expected a callable criterion(logits, y), got {type(criterion).__name__}")
    x, y = _stack_data(data)
    ev = MultiSigmaEvaluator(model, x, y, sigmas=sig, samples=samples, noise=noise, seed=seed,
                             precision=precision, batch_size=batch_size, device=device, criterion=criterion,
                             params=params, bn_batches=0)
    r = ev.evaluate()
    return result_from_eval(r, alpha, eps, ev.report())


def supernet_flatness(supernet: nn.Module, arch: Any, valid_x: torch.Tensor, valid_y: torch.Tensor,
                      config: Optional[FlatnessConfig] = None, *, calib_x: Optional[torch.Tensor] = None,
                      device=None) -> FlatnessResult:
    """Flatness of one supernet candidate with the settings of ``config`` (default: the sigmas its space
    recommends, ``supernet.space.presets()``).

    The candidate is recalibrated on ``calib_x`` (the supernet-train images; ``None``: ``valid_x``), then
    perturbed on its path only, with the supernet's parameter layout (equal to perturbing the whole
    supernet, as the GeNAS code does). For many candidates, reuse one evaluator through
    :func:`~fastnas.metrics.scores.make_score_fn`.
    """
    if config is None:
        presets = getattr(getattr(supernet, "space", None), "presets", None)
        config = FlatnessConfig(sigmas=presets().sigmas) if callable(presets) else FlatnessConfig()
    cfg = config
    ev = _evaluator(supernet, valid_x, valid_y, cfg, calib_x=calib_x, device=device)
    return result_from_eval(ev.evaluate(arch), cfg.alpha, cfg.eps, ev.report())


def _evaluator(supernet: nn.Module, valid_x: torch.Tensor, valid_y: torch.Tensor, cfg: FlatnessConfig, *,
               calib_x: Optional[torch.Tensor] = None, device=None) -> MultiSigmaEvaluator:
    return MultiSigmaEvaluator(supernet, valid_x, valid_y, sigmas=cfg.sigmas, samples=cfg.samples, noise=cfg.noise,
                               seed=cfg.seed, precision=cfg.precision, batch_size=cfg.batch_size, device=device,
                               calib_x=calib_x, bn_batches=cfg.bn_batches, bn_batch_size=cfg.bn_batch_size,
                               bn_mode=cfg.bn_mode, scope=cfg.scope)
