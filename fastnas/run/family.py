"""Designing a model family (REG-NAS): ``a_1 ⊂ a_2 ⊂ ... ⊂ a_K``, one member per budget, few negative flips.

REG-NAS (Duggal et al., ECCV 2022) searches a family of models of growing size in which each member is
an *upgrade* of the one before: more accurate, and wrong on few of the samples the smaller one got
right. A family run:

1. trains the supernet of a nested family space (``nb201_size``, ``elastic_resnet``: spaces with
   ``largest()``, ``smallest()``, ``contains(big, small)``), by default with the sandwich rule;
2. searches the tiers in order of their budgets (``--budgets``, upper limits on params or, with
   ``--budget-kind flops``, on FLOPs). Tier ``k > 1`` ranks candidates by the reward
   ``lambda1 * top1 - lambda2 * NFR`` (both fractions of the search-validation images; NFR against
   member ``k - 1``, the reference), and with the containment constraint (on by default) admits only
   candidates that contain member ``k - 1`` (``space.contains(candidate, member)``, so the member's
   weights are a slice of the candidate's). Tier 1 has no reference: it is ranked by top-1 alone (the
   order of ``lambda1 * top1`` for any ``lambda1 > 0``) -- unless ``--reference ARCH`` names an existing
   model, which then plays member 0. Every member differs from the one before;
3. evaluates every member on the test split after re-estimating its own BatchNorm statistics
   (:func:`fastnas.train.recalibrate_member`; weights inherited from the supernet): top-1, and NFR and
   relative NFR against the member before (:func:`fastnas.metrics.flips.flip_report`);
4. writes ``result.json`` (``"members"``, smallest budget first), ``plots/family.png`` and the exports
   (:mod:`fastnas.run.family_export`).

Default budgets (``--tiers K``, default 3): geometric between the smallest member's cost ``lo`` (the
reference's, with ``--reference``) and the largest member's ``hi``: ``b_k = lo * (hi / lo) ** (k / K)``,
``k = 1..K``, so the last is ``hi`` and every tier may grow by the same factor (params rounded to
integers).

Resume: the search state of the tier in progress is saved after every scored candidate
(``family_tier<k>.json``), a finished tier keeps its member there, so a run killed at any moment
continues with ``--resume`` and ends with a byte-identical ``result.json`` (the timings are in
``state.json``, not in the result).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from fastnas.run.config import RunConfig
from fastnas.run.pipeline import Prepared, Run, prepare, prepare_from_run, recipe_notes
from fastnas.run.rundir import RunDir, read_json, read_settings, write_json_atomic
from fastnas.seeds import derive_seed

__all__ = ["logits_of", "FamilyConfig", "REWARDS", "BUDGET_KINDS", "FAMILY_FILE", "FamilyRun", "FamilyPlan", "prepare_family",
           "prepare_family_from_run", "check_family_space", "default_budgets", "tier_metric", "parse_numbers",
           "is_family_run", "family_summary_lines"]

#: REG-NAS's reward presets ``lambda1 * top1 - lambda2 * NFR``: ``(lambda1, lambda2)``.
REWARDS: Dict[str, Tuple[float, float]] = {"R0": (1.0, 0.0), "R1": (0.0, 1.0), "R2": (1.0, 1.0)}
DEFAULT_REWARD = "R2"
BUDGET_KINDS = ("params", "flops")
DEFAULT_TIERS = 3
#: The family settings of a run directory (beside ``config.toml``).
FAMILY_FILE = "family.json"
_VERSION = 1
_TIER_VERSION = 1


def parse_numbers(flag: str, value: Any) -> Tuple[float, ...]:
    """``"1e4,2e4"`` (or a sequence) as finite numbers; ``ValueError`` naming ``flag`` otherwise."""
    items: Sequence[Any]
    if isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"{flag} {value!r}: expected comma-separated numbers")
    out = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise ValueError
            number = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"{flag} {value!r}: {item!r} is not a number; expected comma-separated numbers "
                             "like 2e4,5e4") from None
        if not math.isfinite(number):
            raise ValueError(f"{flag} {value!r}: {item!r} is not finite; expected finite numbers")
        out.append(number)
    if not out:
        raise ValueError(f"{flag} {value!r}: expected at least one number")
    return tuple(out)


@dataclass(frozen=True)
class FamilyConfig:
    """The settings of a family design (``fastnas family``), besides the run's :class:`RunConfig`.

    Attributes:
        tiers: members of the family (default 3; with ``budgets``, their count).
        budgets: upper limits of the members' cost, strictly increasing (None: :func:`default_budgets`).
        budget_kind: what the budgets limit: ``params`` or ``flops`` (millions of multiply-adds).
        reward: ``R0`` (top-1), ``R1`` (-NFR) or ``R2`` (top-1 - NFR, the default).
        lambdas: ``(lambda1, lambda2)`` of ``lambda1 * top1 - lambda2 * NFR``, finite, >= 0, not both 0
            (None: the reward's).
        constraint: tier ``k`` admits only candidates that contain member ``k - 1``.
        reference: an existing model to upgrade (architecture text): member 0, the reference of tier 1.
    """

    tiers: Optional[int] = None
    budgets: Optional[Tuple[float, ...]] = None
    budget_kind: str = "params"
    reward: Optional[str] = None
    lambdas: Optional[Tuple[float, float]] = None
    constraint: bool = True
    reference: Optional[str] = None

    def __post_init__(self) -> None:
        if self.tiers is not None and (isinstance(self.tiers, bool) or not isinstance(self.tiers, int)
                                       or self.tiers < 1):
            raise ValueError(f"--tiers {self.tiers!r}: expected an integer >= 1")
        if self.budgets is not None:
            budgets = parse_numbers("--budgets", self.budgets)
            for i, b in enumerate(budgets):
                if b <= 0:
                    raise ValueError(f"--budgets {_listed(budgets)}: budget {i + 1} ({b:g}) is not positive")
                if i and b <= budgets[i - 1]:
                    raise ValueError(f"--budgets {_listed(budgets)}: expected strictly increasing budgets, one per "
                                     f"tier, smallest first (budget {i + 1}, {b:g}, is not above {budgets[i - 1]:g})")
            if self.tiers is not None and self.tiers != len(budgets):
                raise ValueError(f"--tiers {self.tiers} but --budgets {_listed(budgets)} gives {len(budgets)} "
                                 "budgets; give one of them (or matching ones)")
            object.__setattr__(self, "budgets", budgets)
        if self.budget_kind not in BUDGET_KINDS:
            raise ValueError(f"--budget-kind {self.budget_kind!r}: expected one of {', '.join(BUDGET_KINDS)}")
        if self.reward is not None and self.reward not in REWARDS:
            from fastnas._hints import did_you_mean

            raise ValueError(f"--reward {self.reward!r}: expected one of {', '.join(REWARDS)} (R0 top-1, R1 -NFR, "
                             f"R2 top-1 - NFR){did_you_mean(str(self.reward), list(REWARDS), n=1)}")
        if self.lambdas is not None:
            lambdas = parse_numbers("--lambdas", self.lambdas)
            shown = _listed(lambdas)
            if len(lambdas) != 2:
                raise ValueError(f"--lambdas {shown}: expected two numbers L1,L2 (the reward L1*top1 - L2*NFR)")
            if min(lambdas) < 0:
                raise ValueError(f"--lambdas {shown}: expected lambdas >= 0 (NFR is subtracted already)")
            if max(lambdas) == 0:
                raise ValueError(f"--lambdas {shown}: both are 0, so every candidate would score 0")
            if self.reward is not None and lambdas != REWARDS[self.reward]:
                raise ValueError(f"--lambdas {shown} and --reward {self.reward} "
                                 f"({_listed(REWARDS[self.reward])}) disagree; give one of them")
            object.__setattr__(self, "lambdas", lambdas)
        if not isinstance(self.constraint, bool):
            raise ValueError(f"--constraint {self.constraint!r}: expected true or false")
        if self.reference is not None and (not isinstance(self.reference, str) or not self.reference.strip()):
            raise ValueError(f"--reference {self.reference!r}: expected an architecture in the space's text form")

    @property
    def weights(self) -> Tuple[float, float]:
        """``(lambda1, lambda2)``: the given lambdas, else the reward's."""
        if self.lambdas is not None:
            return self.lambdas
        return REWARDS[self.reward or DEFAULT_REWARD]

    @property
    def reward_name(self) -> Optional[str]:
        """The preset the lambdas are (``R2``), or None for other lambdas."""
        return next((name for name, w in REWARDS.items() if w == self.weights), None)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("budgets", "lambdas"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FamilyConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown family settings {unknown}; expected {names}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> "FamilyConfig":
        """A copy with the non-None ``changes``."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _budget(value: float, kind: str) -> Any:
    """A budget as ``result.json`` writes it: an int for params, a float for FLOPs."""
    return int(value) if kind == "params" and float(value).is_integer() else float(value)


def _listed(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def check_family_space(space: Any, name: str) -> None:
    """``ValueError`` unless ``space`` is a nested family (``largest()``, ``smallest()``, ``contains()``)."""
    missing = [m for m in ("largest", "smallest", "contains") if not callable(getattr(space, m, None))]
    if missing:
        from fastnas.spaces import create_space, list_spaces

        families = []
        for other in list_spaces():
            try:
                s = create_space(other)
            except (ValueError, TypeError):
                continue
            if all(callable(getattr(s, m, None)) for m in ("largest", "smallest", "contains")):
                families.append(other)
        raise ValueError(f"--space {name!r} has no largest()/smallest()/contains(): fastnas family needs a nested "
                         f"family space whose members share weights ({', '.join(families)})")


def _cost(space: Any, arch: Any, kind: str) -> float:
    return float(space.params(arch)) if kind == "params" else float(space.flops(arch))


def _round_budget(value: float, kind: str) -> float:
    return float(math.floor(value)) if kind == "params" else float(f"{value:.6g}")


def default_budgets(space: Any, tiers: int, kind: str = "params", low_arch: Any = None) -> Tuple[float, ...]:
    """``tiers`` budgets spaced geometrically over ``(cost(low_arch), cost(largest)]``: ``lo * (hi/lo)**(k/K)``.

    ``low_arch``: the smallest member (default) or the reference model; the last budget is the largest
    member's cost exactly (params rounded down to integers, FLOPs to 6 digits).
    """
    low_arch = space.smallest() if low_arch is None else low_arch
    lo, hi = _cost(space, low_arch, kind), _cost(space, space.largest(), kind)
    if not hi > lo:
        raise ValueError(f"the largest member of the space has {hi:g} {kind}, no more than the "
                         f"{'reference' if low_arch != space.smallest() else 'smallest member'} ({lo:g}): "
                         "there is no room for a family; give --budgets")
    out = [_round_budget(lo * (hi / lo) ** (k / tiers), kind) for k in range(1, tiers)] + [hi]
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"--tiers {tiers}: the default budgets between {lo:g} and {hi:g} {kind} are not distinct "
                         f"({_listed(out)}); use fewer tiers or give --budgets")
    return tuple(out)


def tier_metric(weights: Tuple[float, float], has_reference: bool) -> Any:
    """The :class:`~fastnas.metrics.metric.Metric` a tier is ranked by: ``lambda1*accuracy - lambda2*nfr``
    (terms of weight 0 left out), or plain ``accuracy`` without a reference."""
    from fastnas.metrics.metric import Metric, Term

    l1, l2 = weights
    if not has_reference:
        return Metric.parse("accuracy")
    terms = ([Term(l1, "accuracy")] if l1 else []) + ([Term(-l2, "nfr")] if l2 else [])
    return Metric(tuple(terms))


_HEADER_MARK = "family run config"


def is_family_run(path: Any) -> bool:
    """Whether the run directory ``path`` holds a family design: its ``family.json``, or a ``config.toml``
    whose header says so (a run killed between writing the two)."""
    path = Path(path)
    if (path / FAMILY_FILE).is_file():
        return True
    try:
        with open(path / RunDir.CONFIG, encoding="utf-8") as fh:
            return _HEADER_MARK in fh.readline()
    except (OSError, UnicodeDecodeError):
        return False


@dataclass(frozen=True)
class FamilyPlan:
    """A validated family design: its settings, the resolved budgets and the reference (or None)."""

    family: FamilyConfig
    budgets: Tuple[float, ...]
    reference: Any

    def to_dict(self, space: Any) -> Dict[str, Any]:
        kind = self.family.budget_kind
        return {"version": _VERSION, "settings": self.family.to_dict(), "budgets": [_budget(b, kind) for b in self.budgets],
                "lambdas": list(self.family.weights), "reward": self.family.reward_name,
                "reference": None if self.reference is None else space.format(self.reference)}


def _plan(family: FamilyConfig, space: Any, config: RunConfig) -> FamilyPlan:
    """Checks ``family`` against the space and resolves the budgets (writes nothing)."""
    check_family_space(space, config.space)
    for key in ("max_params", "max_flops"):
        if getattr(config, key) is not None:
            raise ValueError(f"--{key.replace('_', '-')} {getattr(config, key):g}: fastnas family takes its "
                             "limits from --budgets (one per tier)")
    kind = family.budget_kind
    reference = None
    if family.reference is not None:
        try:
            reference = space.parse(family.reference)
        except ValueError as e:
            raise ValueError(f"--reference {family.reference!r} is not an architecture of the space "
                             f"{config.space!r}: {e}") from None
    if family.budgets is None:
        budgets = default_budgets(space, family.tiers or DEFAULT_TIERS, kind, reference)
    else:
        budgets = family.budgets
        smallest = _cost(space, space.smallest(), kind)
        if budgets[0] < smallest:
            raise ValueError(f"--budgets {_listed(budgets)}: the first budget is below the smallest member's {kind} "
                             f"({smallest:g}; space {config.space!r}), so no architecture fits it")
        if reference is not None and budgets[0] < _cost(space, reference, kind):
            raise ValueError(f"--budgets {_listed(budgets)}: the first budget is below the {kind} of --reference "
                             f"({_cost(space, reference, kind):g}); a member must be larger than the model it upgrades")
    return FamilyPlan(family=family, budgets=tuple(budgets), reference=reference)


def prepare_family(config: RunConfig, family: FamilyConfig) -> Tuple[Prepared, FamilyPlan]:
    """Validates a new family run and loads its data; writes nothing. The run's ``metric`` is set to
    ``accuracy`` (tier 1's; the others' reward is in ``family.json``)."""
    from fastnas.spaces import create_space, list_spaces

    if config.space in list_spaces():  # before the data and the sampler are checked: the first thing to say
        check_family_space(create_space(config.space), config.space)
    prepared = prepare(config.replace(metric="accuracy"))
    return prepared, _plan(family, prepared.space, prepared.config)


def prepare_family_from_run(path: str, given: Optional[Dict[str, Any]] = None,
                            family_given: Optional[Dict[str, Any]] = None) -> Tuple[Prepared, FamilyPlan]:
    """Validates continuing the family run in ``path``; family settings may change only before the first
    tier's search has started. Writes nothing."""
    run_dir = RunDir(path)
    if run_dir.is_run() and not is_family_run(path):
        raise ValueError(f"--resume {path}: this run is not a family design (no {FAMILY_FILE}); continue it with "
                         f"fastnas search --resume {path}")
    prepared = prepare_from_run(path, given)
    if not (run_dir / FAMILY_FILE).is_file():  # killed before it was written: nothing has run yet
        return prepared, _plan(FamilyConfig(**(family_given or {})), prepared.space, prepared.config)
    family = read_settings(run_dir / FAMILY_FILE, "family settings", _VERSION, FamilyConfig.from_dict)
    changes = {k: v for k, v in (family_given or {}).items() if v is not None}
    if changes:
        new = family.replace(**changes)
        if new != family and prepared.state["phases"].get("search") is not None:
            differ = [f.name for f in dataclasses.fields(FamilyConfig) if getattr(new, f.name) != getattr(family, f.name)]
            flag = "--" + differ[0].replace("_", "-")
            raise ValueError(f"cannot change {flag} when resuming {path}: the family's search has started (run has "
                             f"{getattr(family, differ[0])!r}); start a new run instead")
        family = new
    return prepared, _plan(family, prepared.space, prepared.config)


class FamilyRun(Run):
    """Executes a family design: train, search the tiers, evaluate the members, report and export.

    Events (besides :class:`~fastnas.run.pipeline.Run`'s ``phase`` and ``train:*``): ``family:tier``
    (``tier``, ``tiers``, ``budget``, ``kind``, ``metric``, ``reference``), ``search:start`` (``total``,
    ``done``, ``desc``), ``search:candidate`` (``n_scored`` counted over all tiers), ``search:generation``,
    ``family:member`` (``tier``, ``tiers``, ``arch``, ``score``), ``report:written``.
    """

    def __init__(self, prepared: Prepared, plan: FamilyPlan, progress: Any = None) -> None:
        super().__init__(prepared, progress)
        self.plan = plan
        self.members: List[Any] = []
        self.tier_records: List[Dict[str, Any]] = []

    def tier_path(self, k: int) -> Path:
        return self.dir / f"family_tier{k}.json"

    def start(self) -> None:
        notes = recipe_notes(self.config, self.state)
        if not self.p.resumed:
            import fastnas

            self.dir.create(self.config, header=f"fastnas {fastnas.__version__} {_HEADER_MARK} (the family "
                            f"settings are in {FAMILY_FILE}); resume with: fastnas family --resume <this directory>",
                            notes=notes)
        else:
            self.dir.save_config(self.config, header=f"fastnas {_HEADER_MARK} (resumed)", notes=notes)
        self.dir.write_json(self.dir / FAMILY_FILE, self.plan.to_dict(self.space))
        self.state["sessions"] = int(self.state.get("sessions", 0)) + 1
        self.timer.add("data", self.p.data_seconds)
        self.dir.save_state(self.state)
        self.world.barrier()

    # ---- the tiers

    def design(self) -> List[Any]:
        """Searches every tier (or reads the finished ones); returns the members, smallest budget first."""
        from fastnas.search import create_searcher, run_search

        c, space, plan = self.config, self.space, self.plan
        self.progress("phase", {"name": "search", "status": "start"})
        if self.state["phases"].get("search") != "done":
            self._mark("search", "started")
        weights = plan.family.weights
        previous = plan.reference
        members: List[Any] = []
        offset = 0
        for k, budget in enumerate(plan.budgets, start=1):
            metric = tier_metric(weights, previous is not None)
            path = self.tier_path(k)
            scfg = c.component("search", seed=derive_seed(c.seed, "family-search", k) % (2 ** 31),
                               **{f"max_{plan.family.budget_kind}": budget})
            settings = json.loads(json.dumps(scfg.to_dict()))
            ref_text = None if previous is None else space.format(previous)
            saved = read_json(path, f"tier {k} state") if path.exists() else None
            if saved is not None:
                _check_tier(saved, path, k, c.searcher, settings, ref_text, str(metric))
            if saved is not None and saved.get("member") is not None:
                member = space.parse(saved["member"])
                members.append(member)
                self.tier_records.append(saved)
                offset += int(saved["n_scored"])
                previous = member
                continue
            self.progress("family:tier", {"tier": k, "tiers": len(plan.budgets), "budget": budget,
                                          "kind": plan.family.budget_kind, "metric": str(metric), "reference": ref_text})
            searcher = create_searcher(c.searcher, space, scfg)
            if saved is not None:
                searcher.load_state_dict(saved["state"])
            searcher.admissible = _admissible(space, previous, plan.family.constraint)
            score_fn = self._tier_score_fn(metric, previous)
            record = {"version": _TIER_VERSION, "tier": k, "budget": _budget(budget, plan.family.budget_kind),
                      "metric": str(metric),
                      "reference": ref_text, "searcher": c.searcher, "config": settings, "member": None}

            def save() -> None:
                self.dir.write_json(path, {**record, "state": searcher.state_dict()})

            def callback(event: str, info: Dict[str, Any], base: int = offset) -> None:
                if event == "candidate":
                    self.progress("search:candidate", {"record": info["record"], "n_scored": base + info["n_scored"],
                                                       "total": searcher.total, "generation": info["generation"]})
                    save()
                elif event == "generation":
                    self.progress("search:generation", {"generation": info["generation"], "best": info["best"],
                                                        "generations": searcher.planned_rounds or "?"})

            self.progress("search:start", {"total": searcher.total, "done": searcher.n_scored,
                                           "desc": f"tier {k}/{len(plan.budgets)}"})
            t0 = time.perf_counter()
            result = run_search(searcher, score_fn, callback=callback, world=self.world)
            elapsed = time.perf_counter() - t0
            self.timer.add("recalibration", score_fn.recal_seconds)
            self.timer.add("scoring", score_fn.seconds - score_fn.recal_seconds)
            self.timer.add("search_other", max(0.0, elapsed - score_fn.seconds))
            best = result.best
            if best is None or best.flagged:
                what = (f"contains member {k - 1} ({ref_text}) and " if plan.family.constraint and previous is not None
                        else "")
                raise ValueError(f"--budgets: tier {k} found no architecture that {what}has at most {budget:g} "
                                 f"{plan.family.budget_kind} (other than member {k - 1}); raise budget {k} or use "
                                 "--no-constraint")
            record.update(member=best.text, score=best.score, parts=dict(best.parts), n_scored=len(result.history),
                          generations=result.generations)
            self.dir.write_json(path, {**record, "state": searcher.state_dict()})
            self.dir.save_state(self.state)  # the timings of this tier
            self.tier_records.append(record)
            members.append(best.arch)
            offset += len(result.history)
            previous = best.arch
            self.progress("family:member", {"tier": k, "tiers": len(plan.budgets), "arch": best.text,
                                            "score": best.score})
        self.members = members
        self._mark("search", "done")
        self.world.barrier()
        self.progress("phase", {"name": "search", "status": "end"})
        return members

    def _tier_score_fn(self, metric: Any, reference: Any) -> Any:
        """A fresh score function per tier (so a resumed tier scores exactly as an uninterrupted one)."""
        from fastnas.metrics import make_score_fn
        from fastnas.run.scoring import TimedScoreFn, flatness_config

        needs_ref = "reference" in metric.needs
        fn = make_score_fn(metric, self.supernet, self.space, valid=self.p.valid, calib_x=self.p.train[0],
                           flatness_config=flatness_config(self.config), device=self.device,
                           reference=reference if needs_ref else None)
        return TimedScoreFn(fn)

    # ---- evaluation and report

    def recalibration_batches(self) -> Any:
        from fastnas.data import Batches
        from fastnas.run.scoring import flatness_config

        f = flatness_config(self.config)
        x = self.p.train[0].to(self.device)
        return Batches(x, None, f.bn_batch_size, order_seed=derive_seed(self.config.seed, "family-recal"),
                       num_batches=f.bn_batches)

    def evaluate(self) -> List[Dict[str, Any]]:
        """Every member (and the reference) on the test split, after recalibrating its own BatchNorm:
        ``{"arch", "params", "flops", "top1", "nfr", "rel_nfr", ...}`` plus the module (key ``"module"``)."""
        from fastnas.metrics.flips import flip_report
        from fastnas.train import recalibrate_member

        space = self.space
        x, y = self.p.dataset.test_x, self.p.dataset.test_y
        chain = ([self.plan.reference] if self.plan.reference is not None else []) + list(self.members)
        rows: List[Dict[str, Any]] = []
        previous_logits = None
        for i, arch in enumerate(chain):
            net = recalibrate_member(self.supernet, arch, self.recalibration_batches())
            logits = logits_of(net, x, self.device)
            top1 = float((logits.argmax(1) == y).double().mean())
            row: Dict[str, Any] = {"arch": space.format(arch), "params": int(space.params(arch)),
                                   "flops": float(space.flops(arch)), "top1": top1, "nfr": None, "rel_nfr": None,
                                   "pfr": None, "negative_flips": None, "module": net}
            if previous_logits is not None:
                report = flip_report(previous_logits, logits, y)
                row.update(nfr=report.nfr, rel_nfr=report.rel_nfr, pfr=report.pfr,
                           negative_flips=report.negative_flips)
            rows.append(row)
            previous_logits = logits
        return rows

    def report(self) -> Optional[Dict[str, Any]]:
        """Evaluates the members, writes ``result.json``, ``plots/family.png`` and ``export/`` (rank 0; the
        other ranks wait for it and return ``None``)."""
        from fastnas.run.family_export import export_family
        from fastnas.run.plots import plot_family

        if not self.dir.writes:
            self.world.barrier()
            return None

        self.progress("phase", {"name": "report", "status": "start"})
        t0 = time.perf_counter()
        rows = self.evaluate()
        reference_row = rows.pop(0) if self.plan.reference is not None else None
        plan, space = self.plan, self.space
        members = []
        for k, (row, tier) in enumerate(zip(rows, self.tier_records), start=1):
            before = self.plan.reference if k == 1 else self.members[k - 2]
            members.append({"tier": k, **{key: v for key, v in row.items() if key != "module"},
                            "budget": _budget(plan.budgets[k - 1], plan.family.budget_kind),
                            "search_score": tier["score"],
                            "contains_previous": None if before is None else bool(space.contains(self.members[k - 1],
                                                                                                  before))})
        export_dir = self.dir.path / "export"
        files = export_family(self.supernet, space, self.members, [r["module"] for r in rows], export_dir)
        c = self.config
        result = {
            "kind": "family", "space": c.space, "data": self.p.dataset.name,
            "reward": plan.family.reward_name, "lambdas": list(plan.family.weights),
            "constraint": plan.family.constraint, "budget_kind": plan.family.budget_kind,
            "budgets": [_budget(b, plan.family.budget_kind) for b in plan.budgets], "tiers": len(plan.budgets),
            "reference": None if reference_row is None else {k: v for k, v in reference_row.items() if k != "module"},
            "members": members,
            "evaluation": {"split": "test", "images": int(self.p.dataset.test_y.shape[0]),
                           "bn": "recalibrated per member (fastnas.train.recalibrate_member)"},
            "search": [{"tier": t["tier"], "metric": t["metric"], "reference": t["reference"],
                        "n_scored": t["n_scored"], "generations": t["generations"], "searcher": t["searcher"]}
                       for t in self.tier_records],
            "sampler": c.sampler, "export": {k: str(Path(v).relative_to(self.dir.path)) for k, v in files.items()},
        }
        plots = self.dir.path / self.dir.PLOTS
        plots.mkdir(parents=True, exist_ok=True)
        plot_family(members, plots / "family.png", reference=result["reference"],
                    title=f"{c.space} on {self.p.dataset.name}: {_reward_text(plan.family)}")
        write_json_atomic(self.dir / self.dir.RESULT, result)
        self.timer.add("report", time.perf_counter() - t0)
        self._mark("report", "done")
        self.world.barrier()
        self.progress("report:written", {"path": str(self.dir / self.dir.RESULT)})
        self.progress("phase", {"name": "report", "status": "end"})
        return result

    def execute(self, *, search: bool = True) -> Optional[Dict[str, Any]]:
        self.start()
        self.train()
        if not search:
            return None
        self.design()
        return self.report()


def _check_tier(saved: Any, path: Path, k: int, searcher: str, settings: Dict[str, Any], reference: Optional[str],
                metric: str) -> None:
    """``ValueError`` unless the saved tier state belongs to this tier of this run."""
    if not isinstance(saved, dict) or saved.get("version") != _TIER_VERSION or saved.get("tier") != k \
            or not isinstance(saved.get("state"), dict):
        raise ValueError(f"tier state {str(path)!r} is not a fastnas family tier state (version {_TIER_VERSION}); "
                         "delete it to search that tier again")
    for key, now in (("searcher", searcher), ("config", settings), ("reference", reference), ("metric", metric)):
        if saved.get(key) != now:
            raise ValueError(f"tier state {str(path)!r} was made with another {key} ({saved.get(key)!r}, now {now!r}); "
                             "start a new run instead")


def _admissible(space: Any, previous: Any, constraint: bool) -> Any:
    """The tier's extra admission rule: not the previous member and (constraint) containing it."""
    if previous is None:
        return None

    def admissible(arch: Any) -> bool:
        if arch == previous:
            return False
        return not constraint or bool(space.contains(arch, previous))
    return admissible


def logits_of(net: torch.nn.Module, x: torch.Tensor, device: Any = "cpu", batch: int = 512) -> torch.Tensor:
    """``net``'s logits on ``x`` in eval mode, batch by batch, on the CPU."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out.append(net(x[i:i + batch].to(device)).float().cpu())
    return torch.cat(out)


def _reward_text(family: FamilyConfig) -> str:
    l1, l2 = family.weights
    name = family.reward_name
    text = f"{l1:g}*top1 - {l2:g}*NFR"
    return f"{name} = {text}" if name else text


def family_summary_lines(result: Mapping[str, Any], state: Mapping[str, Any], run_path: str) -> List[str]:
    """The table ``fastnas family`` prints at the end: one line per member."""
    lines = [f"family of {len(result['members'])} members ({result['space']} on {result['data']}; reward "
             f"{_reward_text(FamilyConfig(lambdas=tuple(result['lambdas'])))}, containment "
             f"{'on' if result['constraint'] else 'off'}; test split, {result['evaluation']['images']} images):"]
    kind = result["budget_kind"]
    lines.append(f"  {'k':>2}  {'params':>9}  {'MFLOPs':>8}  {'top1':>7}  {'NFR':>6}  {'rel NFR':>7}  "
                 f"{'budget (' + kind + ')':>16}  arch")

    def pct(v: Any) -> str:
        return "-" if v is None else ("nan" if isinstance(v, str) or not math.isfinite(v) else f"{100 * v:.2f}%")

    def ratio(v: Any) -> str:
        return "-" if v is None else ("nan" if isinstance(v, str) or not math.isfinite(v) else f"{v:.3f}")
    rows = ([("ref", result["reference"], None)] if result.get("reference") else []) + \
        [(str(m["tier"]), m, m["budget"]) for m in result["members"]]
    for label, m, budget in rows:
        b = "-" if budget is None else f"{budget:,.0f}" if kind == "params" else f"{budget:.4g}"
        lines.append(f"  {label:>2}  {m['params']:>9,}  {m['flops']:>8.3f}  {pct(m['top1']):>7}  {pct(m['nfr']):>6}  "
                     f"{ratio(m['rel_nfr']):>7}  {b:>16}  {m['arch']}")
    if not result["constraint"]:
        nested = [m["contains_previous"] for m in result["members"] if m["contains_previous"] is not None]
        lines.append(f"  (no containment constraint: {sum(nested)} of {len(nested)} members contain the one before)")
    t = state.get("timings", {})
    total = sum(float(v) for v in t.values())
    parts = ", ".join(f"{k} {float(v):.0f} s" for k, v in t.items())
    lines.append(f"time {total:.0f} s in {state.get('sessions', 1)} session(s) ({parts})")
    lines.append(f"written: {run_path}/result.json, {run_path}/plots/family.png, {run_path}/export/ "
                 "(member<k>.py/.pt standalone; family.py + family.pt: the members sharing one set of weights)")
    return lines
