"""Metrics: weighted sums of score parts, their text form, and the named presets.

A :class:`Metric` is ``sum_k w_k * s_k * part_k`` where ``s_k`` is 1 or, for a term of scale
``"per_sigma1"``, ``1 / sigma_1`` (the smallest noise level of the score settings; GeNAS's
``beta``). Text forms (:meth:`Metric.parse`)::

    angle + 16/sigma1*flatness        GeNAS: angle + gamma * beta * F, gamma = 16
    1*accuracy - 0.5*loss             any registered parts, any finite weights
    loss@0.01                         a member of a family of parts

A text whose spaces-removed form is a preset name is that preset (``"angle + flatness"`` is the
``angle+flatness`` preset, with ``gamma = 16``; write ``angle + 1*flatness`` for the plain sum).

Presets (:data:`METRIC_PRESETS`), values unchanged from the named metrics of earlier versions:

==================== ==========================================================================
``accuracy``          ``accuracy``
``angle``             ``angle``
``flatness``          ``flatness``
``angle+flatness``    ``angle + gamma/sigma1 * flatness`` (``gamma = 16``, the GeNAS README)
``accuracy+flatness`` ``accuracy + gamma/sigma1 * flatness`` (``gamma = 16``)
``angle+accuracy``    ``angle + gamma * accuracy`` (``gamma = 1``)
``R0``, ``R1``, ``R2`` REG-NAS rewards ``lambda1 * accuracy - lambda2 * nfr`` with ``(lambda1, lambda2)`` =
                      (1, 0), (0, 1), (1, 1); ``nfr`` needs a reference (``make_score_fn(reference=)``)
==================== ==========================================================================

The weight marked ``mixing`` (the presets' ``gamma``) is the one ``make_score_fn(gamma=...)`` sets.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

from fastnas.metrics.parts import PART_NAME, ScorePart, check_part_name, get_score_part

__all__ = ["SCALES", "Term", "Metric", "METRIC_PRESETS", "METRICS", "DEFAULT_GAMMA"]

#: How a term's weight is scaled: ``None`` (not at all) or ``"per_sigma1"`` (divided by sigma_1).
SCALES: Tuple[Optional[str], ...] = (None, "per_sigma1")

_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_TOKEN = re.compile(rf"\s*(?:(?P<num>{_NUMBER})|(?P<name>{PART_NAME})|(?P<op>[-+*/])|(?P<bad>\S))")
_SIGMA1 = ("sigma1", "sigma_1")
_EXAMPLE = "e.g. 'angle + 16/sigma1*flatness' or '1*accuracy - 0.5*loss'"


@dataclass(frozen=True)
class Term:
    """One term ``weight * [1/sigma_1] * part`` of a :class:`Metric`.

    Args:
        weight: a finite number.
        part: a registered part (a family member is stored in its canonical spelling: ``loss@1e-2``
            becomes ``loss@0.01``).
        scale: ``None`` or ``"per_sigma1"`` (the weight is divided by the smallest noise level).
        mixing: this weight is the metric's ``gamma`` (what ``make_score_fn(gamma=...)`` replaces).
    """

    weight: float
    part: str
    scale: Optional[str] = None
    mixing: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, numbers.Real) \
                or not math.isfinite(self.weight):
            raise ValueError(f"weight={self.weight!r} of part {self.part!r}: expected a finite number")
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "part", get_score_part(check_part_name(self.part)).name)
        if self.scale not in SCALES:
            raise ValueError(f"scale={self.scale!r} of part {self.part!r}: expected one of {list(SCALES)}")
        object.__setattr__(self, "mixing", bool(self.mixing))

    def contribution(self, value: float, sigma1: Optional[float]) -> float:
        """``weight * value`` (scale ``None``) or ``weight * (1 / sigma1) * value``, in that order."""
        if self.scale is None:
            return self.weight * float(value)
        return self.weight * (1.0 / sigma1) * float(value)

    def text(self, first: bool) -> str:
        negative = math.copysign(1.0, self.weight) < 0
        w = abs(self.weight)
        coef = "" if w == 1.0 and self.scale is None else _number(w) + ("/sigma1" if self.scale else "") + "*"
        body = coef + self.part
        if first:
            return "-" + body if negative else body
        return (" - " if negative else " + ") + body


def _number(x: float) -> str:
    s = repr(float(x))
    return s[:-2] if s.endswith(".0") else s


@dataclass(frozen=True)
class Metric:
    """A weighted sum of score parts; higher is better.

    Args:
        terms: one or more :class:`Term`; at most one of them ``mixing``.
        name: the preset's name (not part of equality), shown instead of the formula.
    """

    terms: Tuple[Term, ...]
    name: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        terms = tuple(self.terms) if isinstance(self.terms, (tuple, list)) else None
        if not terms or not all(isinstance(t, Term) for t in terms):
            raise ValueError(f"terms={self.terms!r}: expected a non-empty sequence of Term")
        if sum(t.mixing for t in terms) > 1:
            raise ValueError(f"terms: at most one term may be the mixing weight (gamma), got "
                             f"{[t.part for t in terms if t.mixing]}")
        object.__setattr__(self, "terms", terms)

    # ---- what it is -----------------------------------------------------------------------------

    @property
    def formula(self) -> str:
        """The text form, e.g. ``angle + 16/sigma1*flatness`` (:meth:`parse` reads it back)."""
        return "".join(t.text(i == 0) for i, t in enumerate(self.terms))

    def __str__(self) -> str:
        return self.name or self.formula

    @property
    def parts(self) -> Tuple[str, ...]:
        """The distinct parts, in term order."""
        return tuple(dict.fromkeys(t.part for t in self.terms))

    def score_parts(self) -> Tuple[ScorePart, ...]:
        """The registered parts of :attr:`parts`."""
        return tuple(get_score_part(p) for p in self.parts)

    @property
    def needs(self) -> FrozenSet[str]:
        """What its parts need (a subset of :data:`~fastnas.metrics.parts.NEEDS`)."""
        return frozenset().union(*(p.needs for p in self.score_parts()))

    @property
    def uses_sigma1(self) -> bool:
        """A term is scaled by ``1 / sigma_1``: the metric needs score settings even without evaluation."""
        return any(t.scale == "per_sigma1" for t in self.terms)

    @property
    def gamma(self) -> Optional[float]:
        """The mixing weight, or ``None`` when no term is marked ``mixing``."""
        return next((t.weight for t in self.terms if t.mixing), None)

    def with_gamma(self, gamma: Optional[float]) -> "Metric":
        """This metric with the mixing weight set to ``gamma`` (``None``: unchanged).

        A single-term metric has nothing to mix and ignores ``gamma`` (as the one-part presets always
        have); a sum without a mixing term raises ``ValueError``: its weights are in its formula.
        """
        if gamma is None:
            return self
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
            raise ValueError(f"gamma={gamma!r}: expected a finite number")
        gamma = float(gamma)
        if not math.isfinite(gamma):
            raise ValueError(f"gamma={gamma!r}: expected a finite number")
        if self.gamma is None:
            if len(self.terms) == 1:
                return self
            raise ValueError(f"gamma={gamma!r}: metric {str(self)!r} has no mixing weight; write the weights "
                             "into the formula instead")
        terms = tuple(replace(t, weight=gamma) if t.mixing else t for t in self.terms)
        return Metric(terms, name=self.name)

    # ---- its value ------------------------------------------------------------------------------

    def value(self, parts: Mapping[str, Any], config: Any = None) -> float:
        """``sum_k contribution_k`` of the part values ``parts`` (``Score.parts``), left to right.

        Args:
            parts: ``{part: value}``, holding every part of the metric.
            config: the score settings (anything with ``sigmas``), needed when :attr:`uses_sigma1`.
        """
        sigma1 = None
        if self.uses_sigma1:
            sigmas = getattr(config, "sigmas", None)
            if not sigmas:
                raise ValueError(f"config: metric {str(self)!r} divides by sigma_1 and needs score settings "
                                 f"with sigmas, got {config!r}")
            sigma1 = float(sigmas[0])
            if not (math.isfinite(sigma1) and sigma1 > 0):
                raise ValueError(f"sigma1={sigma1!r}: expected a positive finite value (the smallest sigma)")
        total: Optional[float] = None
        for t in self.terms:
            c = t.contribution(parts[t.part], sigma1)
            total = c if total is None else total + c
        return total

    # ---- from text ------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: Union[str, "Metric"]) -> "Metric":
        """The metric of a preset name, a formula (see the module docstring), or a ``Metric`` (itself).

        Raises:
            ValueError: not text, a syntax error (with its position), an unknown part (listing the
                registered parts and the presets) or a bad weight.
        """
        if isinstance(text, Metric):
            return text
        if not isinstance(text, str):
            raise ValueError(f"metric={text!r}: expected a preset name {list(METRICS)}, a formula ({_EXAMPLE}) "
                             "or a Metric")
        compact = re.sub(r"\s+", "", text)
        if compact in METRIC_PRESETS:
            return METRIC_PRESETS[compact]
        try:
            return cls(tuple(_parse_terms(text)))
        except ValueError as exc:
            raise ValueError(f"metric={text!r}: {exc}; or one of the presets {list(METRICS)}") from None


def _tokens(text: str) -> List[Tuple[str, str, int]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        kind = m.lastgroup
        if kind == "bad":
            raise ValueError(f"unexpected {m.group(kind)!r} at position {m.start(kind)}; expected {_EXAMPLE}")
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    if not out:
        raise ValueError(f"empty formula; expected {_EXAMPLE}")
    return out


def _parse_terms(text: str) -> List[Term]:
    toks = _tokens(text)
    i, terms = 0, []

    def peek(kind: str, value: Optional[str] = None) -> bool:
        return i < len(toks) and toks[i][0] == kind and (value is None or toks[i][1] == value)

    def fail(what: str) -> None:
        where = f"{toks[i][1]!r} at position {toks[i][2]}" if i < len(toks) else "the end"
        raise ValueError(f"expected {what}, got {where} ({_EXAMPLE})")

    while i < len(toks):
        sign = 1.0
        if peek("op", "+") or peek("op", "-"):
            sign = -1.0 if toks[i][1] == "-" else 1.0
            i += 1
        elif terms:
            fail("'+' or '-' between terms")
        weight, scale = 1.0, None
        if peek("num"):
            weight = float(toks[i][1])
            i += 1
            if peek("op", "/"):
                i += 1
                if not (peek("name") and toks[i][1] in _SIGMA1):
                    fail("'sigma1' after '/' (a weight may only be divided by sigma1)")
                scale = "per_sigma1"
                i += 1
            if not peek("op", "*"):
                fail("'*' between a weight and its part")
            i += 1
        if not peek("name") or toks[i][1] in _SIGMA1:
            fail("a score part")
        terms.append(Term(sign * weight, toks[i][1], scale))
        i += 1
    return terms


def _preset(name: str, *terms: Term) -> Metric:
    return Metric(terms, name=name)


#: The named metrics (their values are those of the metric names of earlier versions).
METRIC_PRESETS: Dict[str, Metric] = {m.name: m for m in (
    _preset("accuracy", Term(1.0, "accuracy")),
    _preset("angle", Term(1.0, "angle")),
    _preset("flatness", Term(1.0, "flatness")),
    _preset("angle+flatness", Term(1.0, "angle"), Term(16.0, "flatness", "per_sigma1", mixing=True)),
    _preset("accuracy+flatness", Term(1.0, "accuracy"), Term(16.0, "flatness", "per_sigma1", mixing=True)),
    _preset("angle+accuracy", Term(1.0, "angle"), Term(1.0, "accuracy", mixing=True)),
    # REG-NAS rewards lambda1 * top1 - lambda2 * NFR against a reference member (both fractions)
    _preset("R0", Term(1.0, "accuracy")),
    _preset("R1", Term(-1.0, "nfr")),
    _preset("R2", Term(1.0, "accuracy"), Term(-1.0, "nfr")),
)}
#: The preset names.
METRICS: Tuple[str, ...] = tuple(METRIC_PRESETS)
#: Default mixing weight (gamma) per preset that has one.
DEFAULT_GAMMA: Dict[str, float] = {n: m.gamma for n, m in METRIC_PRESETS.items() if m.gamma is not None}
