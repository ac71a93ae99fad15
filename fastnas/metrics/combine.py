"""Combining scores: the GeNAS flatness score, its combination with another score, and ``Score``.

Pure Python (no tensors): the inputs are the per-level losses a flatness evaluation measured.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Sequence, Tuple

__all__ = ["Score", "check_sigmas", "flatness_score", "combined"]


@dataclass(frozen=True)
class Score:
    """The result of scoring one architecture; higher ``value`` is better.

    Attributes:
        value: the score used for ranking.
        parts: named components (e.g. ``{"angle": 0.31, "flatness": 2.1e-3}``), kept in the history.
        flagged: the score is suspect (a non-finite loss, a diverged evaluation). Search ranks flagged
            candidates below every unflagged one; a non-finite ``value`` is always treated as flagged.
    """

    value: float
    parts: Mapping[str, Any] = field(default_factory=dict)
    flagged: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {"value": self.value, "parts": dict(self.parts), "flagged": self.flagged}


def _floats(name: str, values: Sequence[Any]) -> list:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={values!r}: expected a sequence of numbers ({exc})") from None
    return out


def check_sigmas(sigmas: Any, name: str = "sigmas", shown: Any = None) -> Tuple[float, ...]:
    """Noise levels as a tuple of floats: at least one, each positive and finite, strictly increasing.

    The one check of sigmas in fastnas (scores, evaluator, CLI); ``ValueError`` names ``name`` and quotes
    ``shown`` (default: ``sigmas``), e.g. the text a user typed.
    """
    shown = sigmas if shown is None else shown
    if isinstance(sigmas, (str, bytes)) or isinstance(sigmas, numbers.Number):
        raise ValueError(f"{name}={shown!r}: expected a sequence of noise levels, e.g. (0.002, 0.01, 0.02)")
    try:
        if any(isinstance(s, bool) for s in sigmas):
            raise TypeError("bool")
        out = tuple(float(s) for s in sigmas)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={shown!r}: expected a sequence of numbers") from None
    if not out:
        raise ValueError(f"{name}={shown!r}: expected at least one noise level")
    for s in out:
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"{name}={shown!r}: every level must be positive and finite, got {s!r}")
    for a, b in zip(out, out[1:]):
        if not b > a:
            raise ValueError(f"{name}={shown!r}: expected strictly increasing levels ({a!r} then {b!r})")
    return out


def flatness_score(losses: Sequence[float], sigmas: Sequence[float], alpha: float = 1.0,
                   eps: float = 1e-5) -> float:
    """The GeNAS flatness score of one candidate.

    ``F = 1 / (sum_{i=1}^{t-1} |(L_{i+1} - L_i) / (sigma_{i+1} - sigma_i)| + alpha * |L_1 / sigma_1| + eps)``

    where ``L_i`` is the loss at perturbation level ``sigma_i``. ``alpha = 1`` is the reference code's
    form (the "initial loss" ``L_0`` taken as 0, so the first slope is ``L_1 / sigma_1``), ``alpha = 0``
    the pure-flatness form; ``eps = 1e-5`` as in the reference code.

    Args:
        losses: ``L_1..L_t``, one per level, ``t >= 1``.
        sigmas: ``sigma_1..sigma_t``, positive and strictly increasing, same length as ``losses``.
        alpha: weight of the ``|L_1 / sigma_1|`` ("deep") term, finite and ``>= 0``.
        eps: added to the denominator, ``>= 0``.

    Returns:
        ``F`` as a float. If any loss is NaN or infinite the result is ``float('nan')`` (not an error:
        a diverged evaluation is data, and the caller flags it, e.g. with ``Score(..., flagged=True)``).
        A zero denominator (possible only with ``eps = 0``) gives ``float('inf')``.

    Raises:
        ValueError: lengths differ or are zero, a sigma is not positive/finite or the sigmas are not
            strictly increasing, or ``alpha``/``eps`` are out of range.
    """
    ls = _floats("losses", losses)
    if len(ls) == 0:
        raise ValueError("losses=[]: expected at least one loss (one per sigma level)")
    ss = check_sigmas(sigmas)
    if len(ls) != len(ss):
        raise ValueError(f"losses has {len(ls)} values but sigmas has {len(ss)}: expected one loss per sigma")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha={alpha!r}: expected a finite value >= 0")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps={eps!r}: expected a finite value >= 0")
    if not all(math.isfinite(v) for v in ls):
        return float("nan")
    total = sum(abs((ls[i + 1] - ls[i]) / (ss[i + 1] - ss[i])) for i in range(len(ls) - 1))
    total += alpha * abs(ls[0] / ss[0]) + eps
    if total == 0.0:
        return float("inf")
    return 1.0 / total


def combined(score: float, flatness: float, sigma1: float, gamma: float) -> float:
    """``score + gamma * beta * flatness`` with ``beta = 1 / sigma1`` (GeNAS, e.g. angle + flatness).

    Args:
        score: the other score (angle ``acos(cos)/pi``, accuracy, ...).
        flatness: :func:`flatness_score` of the same candidate.
        sigma1: the first (smallest) perturbation level, ``> 0``.
        gamma: the mixing weight (the GeNAS README uses 16 for angle + flatness).

    Returns:
        The combined score; NaN inputs give NaN (the caller flags it).
    """
    sigma1 = float(sigma1)
    if not (math.isfinite(sigma1) and sigma1 > 0):
        raise ValueError(f"sigma1={sigma1!r}: expected a positive finite value (the smallest sigma)")
    gamma = float(gamma)
    if not math.isfinite(gamma):
        raise ValueError(f"gamma={gamma!r}: expected a finite value")
    return float(score) + gamma * (1.0 / sigma1) * float(flatness)
