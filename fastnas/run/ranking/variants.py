"""The variants of the ranking benchmark: every score it ranks by, named by what differs from the run's
score settings, and the tables (groups) they are rows of."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fastnas._hints import did_you_mean
from fastnas.run.config import SETTINGS, RunConfig

__all__ = ["ALPHAS", "GAMMAS", "SIGMA_SETS", "COMBINATIONS", "GROUPS", "BASELINES", "Variant", "Plan",
           "plan_variants"]

#: The alpha sweep (GeNAS Table 6): 0 is pure flatness, 1 the GeNAS code's form.
ALPHAS: Tuple[float, ...] = (0.0, 0.1, 0.5, 1.0, 4.0)
#: The gamma sweep of the sums ``S + gamma/sigma1 * F`` (GeNAS Table 8; its README uses 16). With alpha = 1
#: ``F/sigma1`` is about ``1/L_1``, 10-100x the angle, so the sweep reaches down to 1e-3 where the two balance.
GAMMAS: Tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.25, 1.0, 4.0, 16.0, 64.0)
#: Sigma sets (GeNAS Table 5 analogue): GeNAS's NB201 set (2e-3, 1e-2, 2e-2), its README's and CIFAR-100
#: DARTS set (1e-3, 3e-3, 6e-3), its CIFAR-10 DARTS set (1e-5, 5e-5, 1e-4), and two sets of the same
#: shape one step below and above (1e-4 ...; 5e-3 ...). The run's own set is added when it is not here.
#: (The other rows of GeNAS's Table 5 were not at hand when this list was made; ``sigma_sets=`` and the
#: CLI's ``--sigma-sets`` replace it.)
SIGMA_SETS: Tuple[Tuple[float, ...], ...] = (
    (1e-5, 5e-5, 1e-4), (1e-4, 5e-4, 1e-3), (1e-3, 3e-3, 6e-3), (2e-3, 1e-2, 2e-2), (5e-3, 2.5e-2, 5e-2))
#: The sums swept over gamma.
COMBINATIONS: Tuple[str, ...] = ("angle+flatness", "accuracy+flatness")
#: The tables, in report order; each is a group name for ``variants=`` (``default`` always runs).
GROUPS: Tuple[str, ...] = ("parts", "alpha", "sigmas", "noise", "gamma", "baselines", "default")
BASELINES: Tuple[str, ...] = ("params", "flops", "random")
_PARTS: Tuple[Tuple[str, str], ...] = (("accuracy", "accuracy"), ("angle", "angle"), ("flatness", "flatness"),
                                       ("-loss", "-1*loss"))


def _g(x: float) -> str:
    return f"{x:g}"


def _sigma_text(sigmas: Sequence[float]) -> str:
    return "/".join(_g(s) for s in sigmas)


@dataclass(frozen=True)
class Variant:
    """One score the benchmark ranks by.

    Attributes:
        name: its column and key (no commas), e.g. ``flatness(alpha=0)``, ``angle+flatness(gamma=4)``.
        metric: a preset name or formula of :class:`fastnas.metrics.Metric` (``None`` for a baseline).
        gamma: the mixing weight (``None``: the metric's own).
        sigmas, alpha, noise: the flatness settings it is scored with.
        baseline: ``"params"``, ``"flops"`` or ``"random"`` (no supernet needed), else ``None``.
    """

    name: str
    metric: Optional[str] = None
    gamma: Optional[float] = None
    sigmas: Tuple[float, ...] = ()
    alpha: float = 1.0
    noise: str = "independent"
    baseline: Optional[str] = None

    def evaluations(self) -> Tuple[str, ...]:
        """The keys of the per-architecture evaluations its value needs (``angle``, ``clean``,
        ``perturbed[<sigmas> <noise>]``, or the baseline's name)."""
        if self.baseline is not None:
            return (self.baseline,)
        from fastnas.metrics import Metric

        needs = Metric.parse(self.metric).needs
        keys = []
        if "initial_state" in needs:
            keys.append("angle")
        if "clean" in needs:
            keys.append("clean")
        if "perturbed" in needs:
            keys.append(_perturbed_key(self.sigmas, self.noise))
        return tuple(keys)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["sigmas"] = list(self.sigmas)
        return d


def _perturbed_key(sigmas: Sequence[float], noise: str) -> str:
    return f"perturbed[{_sigma_text(sigmas)} {noise}]"


@dataclass(frozen=True)
class Plan:
    """The variants of one benchmark and the tables they appear in.

    Attributes:
        variants: by name, in table order.
        tables: ``{group: [(row label, variant name), ...]}`` (a variant may be a row of several tables).
        default: the name of the variant ``fastnas search`` ranks by by default.
    """

    variants: Dict[str, Variant]
    tables: Dict[str, List[Tuple[str, str]]]
    default: str

    def evaluations(self) -> List[str]:
        """Every evaluation key the variants need, each once, in first-use order."""
        return list(dict.fromkeys(k for v in self.variants.values() for k in v.evaluations()))


def _check_floats(name: str, values: Any, *, minimum: Optional[float] = None) -> Tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={values!r}: expected a sequence of numbers") from None
    if not out:
        raise ValueError(f"{name}={values!r}: expected at least one value")
    for v in out:
        if not math.isfinite(v) or (minimum is not None and v < minimum):
            raise ValueError(f"{name}={values!r}: every value must be finite"
                             + (f" and >= {minimum:g}" if minimum is not None else "") + f", got {v!r}")
    return tuple(dict.fromkeys(out))


def _own_gamma(metric: str) -> Optional[float]:
    from fastnas.metrics import Metric

    return Metric.parse(metric).gamma


def plan_variants(config: RunConfig, *, alphas: Sequence[float] = ALPHAS, gammas: Sequence[float] = GAMMAS,
                  sigma_sets: Optional[Sequence[Sequence[float]]] = None,
                  select: Optional[Sequence[str]] = None) -> Plan:
    """The variants of the benchmark for a run's (resolved) score settings.

    A variant is named by its metric and the settings that differ from the run's reference (its
    ``sigmas``, ``alpha`` and ``noise``; for a sum, from the preset's own ``gamma``): ``flatness`` is the
    run's flatness, ``flatness(alpha=0)``, ``flatness(sigmas=0.001/0.003/0.006)``,
    ``flatness(noise=cumulative)``, ``angle+flatness(gamma=4)``; the parts ``accuracy``, ``angle``,
    ``flatness``, ``-loss``; the baselines ``params``, ``flops``, ``random``. The default metric
    (``SETTINGS["metric"].default``, with the run's gamma when the run uses that metric) is always one.

    Args:
        config: the run's resolved config (its sigmas, alpha, noise, metric and gamma are the reference).
        alphas, gammas: the sweeps (GeNAS Tables 6 and 8).
        sigma_sets: the sigma sets (default :data:`SIGMA_SETS`; the run's set is added when absent).
        select: group names (:data:`GROUPS`) and/or variant names to run (``None``: all); the default
            metric's variant is always included.

    Raises:
        ValueError: a bad sweep value, or an unknown name in ``select`` (with close matches).
    """
    from fastnas.metrics.combine import check_sigmas
    from fastnas.metrics.evaluator import NOISE_MODES

    alphas = _check_floats("alphas", alphas, minimum=0.0)
    gammas = _check_floats("gammas", gammas)
    sets = [check_sigmas(s, name="sigma_sets") for s in (SIGMA_SETS if sigma_sets is None else sigma_sets)]
    if not sets:
        raise ValueError("sigma_sets=[]: expected at least one sigma set")
    ref_sigmas, ref_alpha, ref_noise = tuple(config.sigmas), float(config.alpha), config.noise
    if ref_sigmas not in sets:
        sets.append(ref_sigmas)

    variants: Dict[str, Variant] = {}
    tables: Dict[str, List[Tuple[str, str]]] = {g: [] for g in GROUPS}

    def add(group: str, label: str, base: str, metric: Optional[str], *, gamma: Optional[float] = None,
            sigmas: Tuple[float, ...] = ref_sigmas, alpha: float = ref_alpha, noise: str = ref_noise,
            baseline: Optional[str] = None) -> str:
        changes = []
        own = _own_gamma(metric) if metric is not None else None
        gamma = None if own is None else gamma  # a metric without a mixing weight ignores gamma
        if gamma is not None and gamma != own:
            changes.append(f"gamma={_g(gamma)}")
        if sigmas != ref_sigmas:
            changes.append(f"sigmas={_sigma_text(sigmas)}")
        if alpha != ref_alpha:
            changes.append(f"alpha={_g(alpha)}")
        if noise != ref_noise:
            changes.append(f"noise={noise}")
        name = base + (f"({' '.join(changes)})" if changes else "")
        v = Variant(name, metric, gamma, sigmas, alpha, noise, baseline)
        old = variants.get(name)
        if old is not None and old != v:  # pragma: no cover - names are built from every setting
            raise RuntimeError(f"two variants named {name!r}: {old} and {v}")
        variants[name] = v
        tables[group].append((label, name))
        return name

    for label, metric in _PARTS:
        add("parts", label, label, metric)
    for a in alphas:
        add("alpha", f"alpha={_g(a)}", "flatness", "flatness", alpha=a)
    for s in sets:
        add("sigmas", _sigma_text(s), "flatness", "flatness", sigmas=s)
    for m in NOISE_MODES:
        add("noise", m, "flatness", "flatness", noise=m)
    for combo in COMBINATIONS:
        for g in gammas:
            add("gamma", f"{combo} gamma={_g(g)}", combo, combo, gamma=g)
    for b in BASELINES:
        add("baselines", b, b, None, baseline=b)
    default_metric = SETTINGS["metric"].default
    gamma = config.gamma if config.metric == default_metric else None
    gamma = _own_gamma(default_metric) if gamma is None else gamma
    default = add("default", f"default: {default_metric}", default_metric, default_metric, gamma=gamma)

    if select is not None:
        wanted = {default}
        for token in select:
            token = token.strip()
            if token in ("", "all"):
                wanted |= set(variants) if token == "all" else set()
            elif token in tables:
                wanted |= {n for _, n in tables[token]}
            elif token in variants:
                wanted.add(token)
            else:
                options = list(GROUPS) + list(variants)
                raise ValueError(f"variants: unknown group or variant {token!r}{did_you_mean(token, options)}; "
                                 f"expected groups {list(GROUPS)} or variant names {list(variants)}")
        variants = {n: v for n, v in variants.items() if n in wanted}
        tables = {g: [(lab, n) for lab, n in rows if n in wanted] for g, rows in tables.items()}
    return Plan(variants, {g: rows for g, rows in tables.items() if rows}, default)
