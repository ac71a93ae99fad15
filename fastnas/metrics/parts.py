"""Score parts: the named quantities a metric combines, each declaring what it needs.

A *part* computes its value from a :class:`PartContext`, the per-candidate evaluation that the score
function runs once for all parts of a metric. What a part may need (``needs``):

================== ===========================================================================
``"clean"``         the unperturbed evaluation (``EvalResult.clean_loss``/``clean_accuracy``)
``"perturbed"``     the losses at every noise level (``EvalResult.losses``, ``sigmas``)
``"initial_state"`` the supernet's weights before training (an :class:`AngleScorer` over them)
``"reference"``     a reference model's per-sample correctness (negative flips are counted against it)
================== ===========================================================================

Built-in parts:

================== ============ ==============================================================
``accuracy``        clean        top-1 after BatchNorm recalibration (also reports ``loss``)
``loss``            clean        the clean validation loss
``angle``           initial      ``acos(cos(v_0, v_T)) / pi`` of the path (RLNAS, as in GeNAS)
``flatness``        perturbed    GeNAS ``F`` (also reports ``loss@<sigma>`` for every level)
``loss@<sigma>``    perturbed    the mean loss at one level, e.g. ``loss@0.01``
``nfr``             clean,       negative flip rate against the reference (also reports ``rel_nfr``)
                    reference
================== ============ ==============================================================

A new part is one function and its registration::

    @register_score_part("top5", needs=("clean",))
    def top5(ctx):
        ...                      # a float, or {"top5": value, "other_reported_value": ...}

A part returns a float (reported under its name) or a mapping that holds its name (its value) and
any further values to report in ``Score.parts``. A *family* of parts is registered under a name
``"base@<label>"``; its function takes the text after ``@`` as a second argument.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from fastnas._hints import did_you_mean
from fastnas.metrics.flatness import result_from_eval

__all__ = ["NEEDS", "PartContext", "ScorePart", "register_score_part", "list_score_parts", "get_score_part",
           "check_part_name"]

#: What a part can need from the per-candidate evaluation.
NEEDS: Tuple[str, ...] = ("clean", "perturbed", "initial_state", "reference")

_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
#: A part name: an identifier, optionally ``@`` and an argument (a number or an identifier).
PART_NAME = rf"[A-Za-z_]\w*(?:@(?:{_NUMBER}|[A-Za-z_]\w*))?"
_PART_RE = re.compile(PART_NAME)
_FAMILY_RE = re.compile(r"([A-Za-z_]\w*)@<(\w+)>")


@dataclass(frozen=True)
class PartContext:
    """What the parts of one candidate are computed from (each need evaluated once per candidate).

    Attributes:
        arch: the (validated) architecture.
        config: the score settings (a :class:`~fastnas.metrics.flatness.FlatnessConfig`: sigmas, alpha,
            eps, ...), or ``None`` when the metric needs no evaluation.
        result: the evaluator's :class:`~fastnas.metrics.evaluator.EvalResult` (with the clean and/or
            perturbed values the metric needs), or ``None``.
        angle_scorer: an :class:`~fastnas.metrics.angle.AngleScorer` over the initial weights (``None``
            unless a part needs ``"initial_state"``).
        reference_error: the reference's error rate on the validation set (``None`` unless a part needs
            ``"reference"``); the evaluation's ``nfrs``/``clean_nfr`` are counted against it.
    """

    arch: Any
    config: Any = None
    result: Any = None
    angle_scorer: Any = None
    reference_error: Optional[float] = None


@dataclass(frozen=True)
class ScorePart:
    """One registered part (or a member of a family, e.g. ``loss@0.01``).

    Attributes:
        name: the part's name, the key of its value in ``Score.parts``.
        needs: what it needs (a subset of :data:`NEEDS`).
        fn: ``fn(ctx) -> float | Mapping`` (see the module docstring).
        check: ``check(config)``, raising ``ValueError`` when the part cannot be computed with these
            score settings (called once, when the score function is built); ``None``: always fine.
        description: one line for listings.
    """

    name: str
    needs: FrozenSet[str]
    fn: Callable[[PartContext], Any] = field(compare=False)
    check: Optional[Callable[[Any], None]] = field(default=None, compare=False)
    description: str = field(default="", compare=False)

    def __call__(self, ctx: PartContext) -> Dict[str, Any]:
        """The values this part reports: ``{name: value, ...}``."""
        out = self.fn(ctx)
        if isinstance(out, Mapping):
            if self.name not in out:
                raise TypeError(f"score part {self.name!r} returned keys {list(out)}; expected its own name "
                                f"{self.name!r} among them")
            return dict(out)
        return {self.name: out}


@dataclass(frozen=True)
class _Entry:
    needs: FrozenSet[str]
    fn: Callable[..., Any]
    family: Optional[str]  # the argument's label ("sigma") for "base@<sigma>", else None
    canonical: Optional[Callable[[str], str]]
    check: Optional[Callable[..., None]]
    description: str


_REGISTRY: Dict[str, _Entry] = {}


def _check_needs(name: str, needs: Any) -> FrozenSet[str]:
    if isinstance(needs, str):
        needs = (needs,)
    try:
        out = frozenset(needs)
    except TypeError:
        raise ValueError(f"needs={needs!r}: expected a collection of {list(NEEDS)}") from None
    for n in out:
        if n not in NEEDS:
            raise ValueError(f"needs={sorted(map(str, out))!r} of score part {name!r}: unknown need {n!r}"
                             f"{did_you_mean(n, NEEDS, n=1)}; expected a subset of {list(NEEDS)}")
    return out


def register_score_part(name: str, needs: Iterable[str] = (), *, fn: Optional[Callable[..., Any]] = None,
                        canonical: Optional[Callable[[str], str]] = None,
                        check: Optional[Callable[..., None]] = None, description: str = "") -> Any:
    """Registers a score part; a decorator when ``fn`` is not given.

    Args:
        name: the part's name (an identifier), or ``"base@<label>"`` for a family of parts named
            ``base@<argument>`` (e.g. ``"loss@<sigma>"``: ``loss@0.01``, ``loss@0.02``, ...).
        needs: what it needs from the evaluation, a subset of :data:`NEEDS`.
        fn: ``fn(ctx)`` (a family: ``fn(ctx, argument)``), returning a float or a mapping holding the
            part's name (see the module docstring).
        canonical: a family only: ``canonical(argument) -> argument`` giving one spelling per member
            (``"1e-2"`` and ``"0.01"`` are the same level); ``ValueError`` for a bad argument.
        check: ``check(config)`` (a family: ``check(config, argument)``), ``ValueError`` when the part
            cannot be computed with the score settings ``config``.
        description: one line for listings (default: the function's first docstring line).

    Raises:
        ValueError: a bad name or need, or the name is already registered.
    """
    family = None
    m = _FAMILY_RE.fullmatch(name) if isinstance(name, str) else None
    if m:
        base, family = m.group(1), m.group(2)
    elif isinstance(name, str) and re.fullmatch(r"[A-Za-z_]\w*", name):
        base = name
    else:
        raise ValueError(f"name={name!r}: expected an identifier (e.g. 'top1') or a family 'base@<label>' "
                         "(e.g. 'loss@<sigma>')")
    key = f"{base}@" if family else base
    if key in _REGISTRY:
        raise ValueError(f"name={name!r}: a score part of that name is already registered")
    if canonical is not None and not family:
        raise ValueError(f"canonical: only a family of parts ('base@<label>') has arguments, not {name!r}")
    need_set = _check_needs(name, needs)

    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise ValueError(f"fn: expected a callable for score part {name!r}, got {type(f).__name__}")
        doc = description or ((f.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[key] = _Entry(need_set, f, family, canonical, check, doc)
        return f

    return add if fn is None else add(fn)


def list_score_parts(pattern: Optional[str] = None) -> List[str]:
    """The registered part names (families as ``base@<label>``), sorted; ``pattern``: an fnmatch filter."""
    names = sorted(f"{k}<{e.family}>" if e.family else k for k, e in _REGISTRY.items())
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def check_part_name(name: Any) -> str:
    """``name`` if it is spelled like a part name (identifier, optional ``@argument``), else ValueError."""
    if not (isinstance(name, str) and _PART_RE.fullmatch(name)):
        raise ValueError(f"part={name!r}: expected a part name such as 'angle' or 'loss@0.01'")
    return name


def get_score_part(name: str) -> ScorePart:
    """The part ``name`` (a family member like ``loss@0.01`` is built from its family).

    Raises:
        ValueError: no such part, listing the registered ones (with close matches).
    """
    check_part_name(name)
    base, _, arg = name.partition("@")
    key = f"{base}@" if "@" in name else base
    entry = _REGISTRY.get(key)
    if entry is None:
        known = list_score_parts()
        if "@" in name:  # a family: compare the base with the families' bases
            families = [k.split("@")[0] for k in known if "@" in k]
            hint = did_you_mean(base, families, n=2)
            what = f"family {base + '@<...>'!r}"
        else:
            hint, what = did_you_mean(name, known, n=2), repr(name)
        raise ValueError(f"unknown score part {what}{hint}; registered parts: {known}")
    if entry.family is None:
        return ScorePart(name, entry.needs, entry.fn, entry.check, entry.description)
    if entry.canonical is not None:
        try:
            arg = entry.canonical(arg)
        except ValueError as exc:
            raise ValueError(f"score part {name!r}: bad {entry.family} {arg!r} ({exc})") from None
    fn, chk = entry.fn, entry.check

    def member(ctx: PartContext, _fn: Callable[..., Any] = fn, _arg: str = arg) -> Any:
        return _fn(ctx, _arg)

    def member_check(config: Any, _chk: Any = chk, _arg: str = arg) -> None:
        _chk(config, _arg)

    return ScorePart(f"{base}@{arg}", entry.needs, member, member_check if chk is not None else None,
                     entry.description)


# ---- built-in parts --------------------------------------------------------------------------------

def _sigma_key(sigma: float) -> str:
    """The ``Score.parts`` spelling of a level (``loss@0.002``)."""
    return f"{sigma:g}"


@register_score_part("accuracy", needs=("clean",))
def _accuracy(ctx: PartContext) -> Dict[str, Any]:
    """Top-1 (a fraction) after BatchNorm recalibration (SPOS); also reports the clean ``loss``."""
    return {"accuracy": ctx.result.clean_accuracy, "loss": ctx.result.clean_loss}


@register_score_part("loss", needs=("clean",))
def _loss(ctx: PartContext) -> float:
    """Mean cross-entropy of the unperturbed candidate (lower is better: use a negative weight)."""
    return ctx.result.clean_loss


@register_score_part("angle", needs=("initial_state",))
def _angle(ctx: PartContext) -> float:
    """Angle between the path's initial and trained weights, acos(cos)/pi (RLNAS)."""
    return ctx.angle_scorer(ctx.arch)


@register_score_part("flatness", needs=("perturbed",))
def _flatness(ctx: PartContext) -> Dict[str, Any]:
    """GeNAS flatness F of the losses at every level; also reports loss@<sigma> per level."""
    return result_from_eval(ctx.result, ctx.config.alpha, ctx.config.eps).parts()


@register_score_part("nfr", needs=("clean", "reference"))
def _nfr(ctx: PartContext) -> Dict[str, Any]:
    """Negative flip rate: the fraction of validation samples the reference gets right and the candidate
    wrong (REG-NAS; lower is better: use a negative weight); also reports ``rel_nfr`` = NFR /
    ((1 - ER_ref) * ER_new), NaN-free: 0 when the candidate makes no error."""
    nfr = ctx.result.clean_nfr
    denom = (1.0 - ctx.reference_error) * (1.0 - ctx.result.clean_accuracy)
    return {"nfr": nfr, "rel_nfr": nfr / denom if denom > 0 else 0.0}


def _canonical_sigma(arg: str) -> str:
    v = float(arg)
    if not (math.isfinite(v) and v > 0):
        raise ValueError("expected a positive noise level")
    return _sigma_key(v)


def _level(config: Any, arg: str) -> int:
    keys = [_sigma_key(s) for s in config.sigmas]
    if arg not in keys:
        raise ValueError(f"score part 'loss@{arg}': {arg} is not one of the noise levels {list(config.sigmas)}; "
                         f"expected one of {['loss@' + k for k in keys]}")
    return keys.index(arg)


@register_score_part("loss@<sigma>", needs=("perturbed",), canonical=_canonical_sigma, check=_level)
def _loss_at(ctx: PartContext, arg: str) -> float:
    """Mean loss at one noise level (averaged over the samples)."""
    return ctx.result.mean_losses[_level(ctx.config, arg)]
