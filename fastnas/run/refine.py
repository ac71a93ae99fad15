"""NAR's backbone refinement as a run: ``fastnas refine`` and :func:`fastnas.refine`.

A refine run is a :class:`~fastnas.run.pipeline.Run` over a backbone space (:mod:`fastnas.spaces.backbone`:
any residual network, skip connections kept, one operator choice per 3x3 conv or per residual block) with
the ENAS controller in the loop:

* **train** -- alternating, as in ENAS: a child epoch of shared-weight training, each minibatch on one
  path drawn from the current policy (``PreTrain``, NAR's ``-RP``: uniform paths for the first
  ``pretrain_epochs`` epochs and no controller update), then ``controller_steps`` REINFORCE updates of
  ``samples`` architectures each, rewarded on a validation minibatch. The controller, its Adam and its
  baseline are saved in the same end-of-epoch checkpoint as the shared weights, so a run killed anywhere
  (``kill -9``) resumes from the last epoch end and ends bit-identical to an uninterrupted one (CPU).
* **search** -- the derived architecture: ``derive`` architectures sampled from the trained policy, each
  scored by the reward on the whole validation subset; the best wins. The baselines ``searcher="random"``
  and ``"evolution"`` train the same shared weights with uniform paths for the same epochs and then score
  as many validation images as the controller saw (its updates' minibatches plus the derive step), so the
  three are compared at an equal budget.
* **retrain** -- the winner (and with ``retrain_base``, the unrefined backbone: same recipe and seed)
  trained from scratch and tested; **report** -- ``result.json`` with ``ops`` (NAR's list, 0 keeps the
  original conv), ``op_names``, ``params``/``base_params``, ``flops``/``base_flops`` (millions of
  multiply-adds), the controller's trace, and plots of its reward, entropy and op probabilities.

Rewards: ``batch-accuracy`` (default, NAR/ENAS: top-1 on a validation minibatch, BatchNorm on batch
statistics, nothing of the supernet changed), or any fastnas metric (``flatness``, ``accuracy +
flatness``, REG-NAS's ``R2`` with the base backbone as the reference, ...), evaluated on the minibatch.
``flops_penalty`` subtracts ``w * flops / base_flops``; ``--max-flops`` makes a larger architecture
infeasible (reward 0 in an update, never derived).
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from fastnas.run.config import RunConfig
from fastnas.run.pipeline import Prepared, Run, prepare, prepare_from_run
from fastnas.run.rundir import RunDir, read_settings
from fastnas.seeds import derive_seed

__all__ = ["RefineConfig", "RefineRun", "RefineResult", "RefinePolicy", "prepare_refine", "prepare_refine_from_run",
           "is_refine_run", "refine", "refine_summary_lines", "REFINE_FILE", "REWARD_BATCH_ACCURACY", "batch_stats"]

REFINE_FILE = "refine.json"
_VERSION = 1
REWARD_BATCH_ACCURACY = "batch-accuracy"
SEARCHERS = ("enas", "random", "evolution")
_HEADER_MARK = "refine run config"


@dataclass(frozen=True)
class RefineConfig:
    """The refinement's own settings, besides the run's :class:`~fastnas.run.config.RunConfig` (which holds
    the backbone, data, training and retraining settings). Saved in ``refine.json``.

    Attributes:
        searcher: ``enas`` (the controller), or the baselines ``random`` / ``evolution``.
        pretrain_epochs: NAR's PreTrain (``-RP``): uniform random paths for this many epochs before the
            controller picks them and learns.
        controller_steps: controller updates after each child epoch.
        samples: architectures sampled per update (REINFORCE's batch).
        hidden, temperature, tanh_constant, entropy_weight, baseline_decay, controller_lr: the controller
            (:class:`fastnas.search.enas.ENASConfig`; the ENAS code's values).
        reward: ``batch-accuracy`` or a fastnas metric text (module docstring).
        reward_batch: validation images per controller update.
        flops_penalty: the reward loses ``flops_penalty * flops / base_flops``.
        derive: architectures sampled from the trained policy and scored on the validation subset.
        retrain_base: also retrain and test the unrefined backbone (with ``retrain_epochs``).
    """

    searcher: str = "enas"
    pretrain_epochs: int = 0
    controller_steps: int = 10
    samples: int = 20
    hidden: int = 64
    temperature: float = 5.0
    tanh_constant: float = 2.5
    entropy_weight: float = 1e-4
    baseline_decay: float = 0.99
    controller_lr: float = 3.5e-4
    reward: str = REWARD_BATCH_ACCURACY
    reward_batch: int = 128
    flops_penalty: float = 0.0
    derive: int = 20
    retrain_base: bool = False

    def __post_init__(self) -> None:
        if self.searcher not in SEARCHERS:
            from fastnas._hints import did_you_mean

            raise ValueError(f"--searcher {self.searcher!r}: fastnas refine takes {', '.join(SEARCHERS)} (enas: the "
                             f"controller; random, evolution: the baselines){did_you_mean(str(self.searcher), SEARCHERS, n=1)}")
        from fastnas.search.base import check_float, check_int

        check_int("pretrain_epochs", self.pretrain_epochs, 0)
        for name in ("controller_steps", "samples", "hidden", "reward_batch", "derive"):
            check_int(name, getattr(self, name), 1)
        for name in ("temperature", "tanh_constant", "controller_lr"):
            check_float(name, getattr(self, name), low=0.0, low_open=True)
        check_float("entropy_weight", self.entropy_weight, low=0.0)
        check_float("baseline_decay", self.baseline_decay, low=0.0, high=1.0, high_open=True)
        check_float("flops_penalty", self.flops_penalty, low=0.0)
        if not isinstance(self.retrain_base, bool):
            raise ValueError(f"--retrain-base {self.retrain_base!r}: expected true or false")
        if not isinstance(self.reward, str) or not self.reward.strip():
            raise ValueError(f"--reward {self.reward!r}: expected {REWARD_BATCH_ACCURACY} or a metric")
        if self.reward != REWARD_BATCH_ACCURACY:
            from fastnas.metrics import Metric

            try:
                Metric.parse(self.reward)
            except ValueError as e:
                raise ValueError(f"--reward {self.reward!r}: expected {REWARD_BATCH_ACCURACY} (NAR's) or a fastnas "
                                 f"metric: {e}") from None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RefineConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown refine settings {unknown}; expected {names}")
        return cls(**d)

    def replace(self, **changes: Any) -> "RefineConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def controller_identity(self) -> Dict[str, Any]:
        """What the training phase depends on (part of the supernet checkpoint's fingerprint)."""
        keys = ("searcher", "pretrain_epochs", "controller_steps", "samples", "hidden", "temperature",
                "tanh_constant", "entropy_weight", "baseline_decay", "controller_lr", "reward", "reward_batch",
                "flops_penalty")
        return {k: getattr(self, k) for k in keys}


# ---- rewards ------------------------------------------------------------------------------------------------

class batch_stats:
    """Context manager: ``model`` in training mode (BatchNorm on the batch's statistics) with every buffer
    (running statistics, counters) restored on exit, so an evaluation changes nothing of it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self) -> torch.nn.Module:
        self.was_training = self.model.training
        self.saved = [(b, b.detach().clone()) for b in self.model.buffers()]
        self.model.train()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for b, v in self.saved:
                b.copy_(v)
        self.model.train(self.was_training)


def batch_accuracy(supernet: torch.nn.Module, arch: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 of ``arch`` on ``(x, y)``, BatchNorm on the batch's statistics (ENAS/NAR's reward)."""
    with batch_stats(supernet), torch.no_grad():
        return float((supernet(x, arch).argmax(1) == y).float().mean())


class Reward:
    """``reward(arch, (x, y)) -> float``: the refine run's reward of ``arch`` on one validation batch
    (``batch-accuracy``, or the fastnas metric's score), minus the FLOPs penalty; 0 for an architecture
    over ``max_flops``. ``fresh()`` is called after the shared weights changed (score caches).
    ``initial_state``: the supernet's initial weights (for the angle), or a function returning them."""

    def __init__(self, refine: RefineConfig, config: RunConfig, supernet: Any, space: Any, calib_x: torch.Tensor,
                 initial_state: Any, device: torch.device) -> None:
        self.refine, self.config, self.supernet, self.space = refine, config, supernet, space
        self.calib_x, self.initial_state, self.device = calib_x, initial_state, device
        self.base_flops = float(space.flops(space.original()))
        self.max_flops = config.max_flops
        self._fns: Dict[int, Any] = {}

    def fresh(self) -> None:
        self._fns = {}

    def feasible(self, arch: Any) -> bool:
        return self.max_flops is None or self.space.flops(arch) <= self.max_flops

    def _metric_fn(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        from fastnas.metrics import Metric, make_score_fn
        from fastnas.run.scoring import flatness_config

        key = id(x)
        fn = self._fns.get(key)
        if fn is None:
            metric = Metric.parse(self.refine.reward)
            reference = self.space.original() if "reference" in metric.needs else None
            initial = self.initial_state() if callable(self.initial_state) else self.initial_state
            fn = make_score_fn(self.refine.reward, self.supernet, self.space, valid=(x, y), calib_x=self.calib_x,
                               initial_state=initial, flatness_config=flatness_config(self.config),
                               gamma=self.config.gamma, device=self.device, reference=reference)
            self._fns = {key: fn}
        return fn

    def __call__(self, arch: Any, batch: Tuple[torch.Tensor, torch.Tensor]) -> float:
        if not self.feasible(arch):
            return 0.0
        from fastnas.train.sync_batchnorm import local_batchnorm

        x, y = batch
        with local_batchnorm(self.supernet):  # under torchrun each rank rewards its own share: no collective
            if self.refine.reward == REWARD_BATCH_ACCURACY:
                value = batch_accuracy(self.supernet, arch, x, y)
            else:
                score = self._metric_fn(x, y)(arch)
                value = float(getattr(score, "value", score))
        if self.refine.flops_penalty:
            value -= self.refine.flops_penalty * float(self.space.flops(arch)) / self.base_flops
        return value


# ---- the controller in the training loop ------------------------------------------------------------------

class RefinePolicy:
    """The controller plug of :func:`fastnas.train.train_supernet`: ``sample(step)`` draws the path of a
    training step from the policy (uniform during PreTrain), ``epoch_end(epoch)`` runs the controller's
    updates and returns its whole state for the checkpoint, ``load_state`` takes it back.

    Every draw is a function of ``(seed, step)`` or ``(seed, epoch, update)`` and the controller's weights,
    so a resumed run draws what an uninterrupted one drew.
    """

    def __init__(self, space: Any, refine: RefineConfig, seed: int, reward: Reward,
                 valid: Tuple[torch.Tensor, torch.Tensor], steps_per_epoch: int, device: torch.device,
                 progress: Optional[Callable[[str, Dict[str, Any]], None]] = None) -> None:
        from fastnas.search.enas import ENASController, space_choices

        self.space, self.refine, self.seed, self.reward = space, refine, seed, reward
        self.valid, self.steps_per_epoch, self.device = valid, steps_per_epoch, device
        self.progress = progress or (lambda event, info: None)
        self.choices = space_choices(space)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "controller-init"))
            self.controller = ENASController(self.choices, refine.hidden, refine.temperature, refine.tanh_constant)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=refine.controller_lr)
        self.baseline: Optional[float] = None
        self.trace: List[Dict[str, Any]] = []  # one entry per controller update
        self.epochs: List[Dict[str, Any]] = []  # one entry per epoch: greedy arch and its op probabilities

    # ---- the plug's protocol

    def identity(self) -> Dict[str, Any]:
        return {"refine": self.refine.controller_identity(), "choices": list(self.choices)}

    def sample(self, step: int) -> Any:
        rng = random.Random(derive_seed(self.seed, "refine-path", step))
        if step < self.refine.pretrain_epochs * self.steps_per_epoch:
            return self.space.sample(rng)
        with torch.no_grad():
            index = self.controller.sample(1, rng)[0][0]
        return self.space.from_choices(index)

    def _batch(self, epoch: int, update: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = self.valid
        n = y.shape[0]
        k = min(self.refine.reward_batch, n)
        g = torch.Generator().manual_seed(derive_seed(self.seed, "reward-batch", epoch, update))
        idx = torch.randperm(n, generator=g)[:k]
        return x[idx].to(self.device), y[idx].to(self.device)

    def epoch_end(self, epoch: int) -> Dict[str, Any]:
        from fastnas.search.enas import reinforce_step

        r = self.refine
        if epoch >= r.pretrain_epochs:
            self.reward.fresh()
            for update in range(r.controller_steps):
                rng = random.Random(derive_seed(self.seed, "controller-sample", epoch, update))
                with torch.no_grad():
                    samples, _, _ = self.controller.sample(r.samples, rng)
                batch = self._batch(epoch, update)
                archs = [self.space.from_choices(i) for i in samples]
                rewards = self._rewards(archs, batch)
                stats = reinforce_step(self.controller, self.optimizer, samples, rewards, baseline=self.baseline,
                                       entropy_weight=r.entropy_weight, baseline_decay=r.baseline_decay)
                self.baseline = stats["baseline"]
                best = max(range(len(archs)), key=lambda i: rewards[i])
                entry = {"epoch": epoch, "update": len(self.trace), **stats,
                         "best": self.space.format(archs[best]), "best_reward": rewards[best],
                         "feasible": sum(self.reward.feasible(a) for a in archs)}
                self.trace.append(entry)
            greedy, probs = self.controller.greedy()
            self.epochs.append({"epoch": epoch, "greedy": self.space.format(self.space.from_choices(greedy)),
                                "probs": probs})
            last = self.trace[-r.controller_steps:]
            self.progress("refine:controller", {
                "epoch": epoch, "reward": sum(t["reward"] for t in last) / len(last),
                "entropy": last[-1]["entropy"], "baseline": self.baseline, "greedy": self.epochs[-1]["greedy"]})
        return self.state()

    def _rewards(self, archs: Sequence[Any], batch: Tuple[torch.Tensor, torch.Tensor]) -> List[float]:
        """The rewards of ``archs``; under torchrun rank r computes ``archs[r::world]`` and every rank gets all
        of them (the controller is seeded identically on every rank and takes the same step)."""
        from fastnas import distributed

        w = distributed.world()
        if w.size == 1:
            return [self.reward(a, batch) for a in archs]
        mine = {i: self.reward(archs[i], batch) for i in range(w.rank, len(archs), w.size)}
        merged: Dict[int, float] = {}
        for part in w.all_gather_object(mine):
            merged.update(part)
        return [merged[i] for i in range(len(archs))]

    def state(self) -> Dict[str, Any]:
        return {"version": _VERSION, "controller": self.controller.state_dict(),
                "optimizer": self.optimizer.state_dict(), "baseline": self.baseline,
                "trace": [dict(t) for t in self.trace], "epochs": [dict(e) for e in self.epochs]}

    def load_state(self, d: Mapping[str, Any]) -> None:
        if not isinstance(d, Mapping) or d.get("version") != _VERSION:
            raise ValueError(f"controller state of version {d.get('version') if isinstance(d, Mapping) else d!r}; "
                             f"this fastnas reads {_VERSION}")
        self.controller.load_state_dict(d["controller"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.baseline = d["baseline"]
        self.trace = [dict(t) for t in d["trace"]]
        self.epochs = [dict(e) for e in d["epochs"]]

    def controller_evaluations(self) -> int:
        """Validation images the controller's updates forward in the whole training."""
        return len(self.trace) * self.refine.samples * min(self.refine.reward_batch, self.valid[1].shape[0])


def planned_controller_images(refine: RefineConfig, epochs: int, valid_n: int) -> int:
    """Validation images the controller's updates will forward in ``epochs`` of training."""
    updates = max(0, epochs - refine.pretrain_epochs) * refine.controller_steps
    return updates * refine.samples * min(refine.reward_batch, valid_n)


def baseline_budget(refine: RefineConfig, epochs: int, valid_n: int) -> int:
    """Architectures a baseline (random, evolution) scores on the validation subset of ``valid_n`` images:
    the derive step's plus as many as the controller's updates forward images (rounded up)."""
    return refine.derive + -(-planned_controller_images(refine, epochs, valid_n) // max(1, valid_n))


# ---- preparing a run ---------------------------------------------------------------------------------------

def is_refine_run(path: Any) -> bool:
    return (Path(path) / REFINE_FILE).is_file()


def _search_settings(refine: RefineConfig, config: RunConfig, valid_n: int) -> Dict[str, Any]:
    """The run's searcher, population and generations for the refinement's searcher (module docstring)."""
    if refine.searcher == "enas":
        return {"searcher": "enas", "population": refine.derive, "generations": 1}
    budget = baseline_budget(refine, config.epochs, valid_n)
    if refine.searcher == "random":
        return {"searcher": "random", "population": budget, "generations": 1}
    population = max(4, min(refine.derive, budget))
    return {"searcher": "evolution", "population": population, "generations": max(1, -(-budget // population))}


def _check_space(space: Any) -> None:
    from fastnas.search.enas import space_choices

    if not callable(getattr(space, "from_choices", None)) or not callable(getattr(space, "original", None)):
        raise ValueError(f"space {getattr(space, 'name', type(space).__name__)!r}: fastnas refine needs a backbone "
                         "space (space.original(), choices(), from_choices())")
    space_choices(space)


def prepare_refine(config: RunConfig, refine: RefineConfig, *, dataset: Any = None,
                   space: Any = None) -> Tuple[Prepared, RefineConfig]:
    """Validates a new refine run and loads its data; writes nothing. ``config.space`` is ``backbone``."""
    valid_n = config.valid_size
    config = config.replace(space="backbone", metric="accuracy")
    prepared = prepare(config.replace(**_search_settings(refine, config, max(1, valid_n))), dataset=dataset,
                       space=space)
    return _finish(prepared, refine)


def _finish(prepared: Prepared, refine: RefineConfig) -> Tuple[Prepared, RefineConfig]:
    _check_space(prepared.space)
    valid_n = prepared.valid[1].shape[0]
    settings = _search_settings(refine, prepared.config, valid_n)
    if any(getattr(prepared.config, k) != v for k, v in settings.items()):  # the subset was smaller than asked
        prepared.config = prepared.config.replace(**settings)
        if prepared.given is not None:
            prepared.given = prepared.given.replace(**settings)
    if prepared.config.sampler != "uniform":
        raise ValueError(f"--sampler {prepared.config.sampler}: fastnas refine trains one path per step (uniform "
                         "during PreTrain and for the baselines, the controller's otherwise); leave --sampler unset")
    return prepared, refine


def prepare_refine_from_run(path: str, given: Optional[Dict[str, Any]] = None,
                            refine_given: Optional[Dict[str, Any]] = None, *, dataset: Any = None,
                            space: Any = None) -> Tuple[Prepared, RefineConfig]:
    """Validates continuing the refine run in ``path``; refine settings may change only before training has
    started. Writes nothing."""
    run_dir = RunDir(path)
    if run_dir.is_run() and not is_refine_run(path):
        raise ValueError(f"--resume {path}: this run is not a refinement (no {REFINE_FILE}); continue it with "
                         f"fastnas search --resume {path}")
    prepared_saved = run_dir.load_config() if run_dir.is_run() else None
    if prepared_saved is not None and str(prepared_saved.backbone or "").startswith("python:") and space is None:
        raise ValueError(f"--resume {path}: this run refined a model object given to fastnas.refine() "
                         f"({prepared_saved.backbone[7:]}); continue it from Python with the same model and data")
    if (run_dir / REFINE_FILE).is_file():
        refine = read_settings(run_dir / REFINE_FILE, "refine settings", _VERSION, RefineConfig.from_dict)
    else:
        refine = RefineConfig()
    state = run_dir.load_state()
    changes = {k: v for k, v in (refine_given or {}).items() if v is not None}
    if changes:
        new = refine.replace(**changes)
        if new != refine and state["phases"].get("train") is not None:
            differ = [f.name for f in dataclasses.fields(RefineConfig) if getattr(new, f.name) != getattr(refine, f.name)]
            flag = "--" + differ[0].replace("_", "-")
            raise ValueError(f"cannot change {flag} when resuming {path}: its training has started (run has "
                             f"{getattr(refine, differ[0])!r}); start a new run instead")
        refine = new
    prepared = prepare_from_run(path, given, dataset=dataset, space=space)
    return _finish(prepared, refine)


# ---- the run -----------------------------------------------------------------------------------------------

class RefineRun(Run):
    """Executes a refinement (module docstring). Events besides :class:`~fastnas.run.pipeline.Run`'s:
    ``refine:controller`` (``epoch``, ``reward``, ``entropy``, ``baseline``, ``greedy``) after each epoch's
    controller updates, ``refine:base`` (``status``) around the base backbone's retraining."""

    def __init__(self, prepared: Prepared, refine: RefineConfig, progress: Any = None) -> None:
        super().__init__(prepared, progress)
        self.refine = refine
        self.policy: Optional[RefinePolicy] = None
        self.base_result: Optional[Dict[str, Any]] = None

    def start(self) -> None:
        import fastnas

        if not self.p.resumed:
            record = self.recorded(self._started("train"))
            self.dir.create(record, header=f"fastnas {fastnas.__version__} {_HEADER_MARK} (the controller settings "
                            f"are in {REFINE_FILE}); resume with: fastnas refine --resume <this directory>",
                            notes=self._notes(record))
        else:
            self.save_config("train")
        self.dir.write_json(self.dir / REFINE_FILE, {"version": _VERSION, "settings": self.refine.to_dict()})
        self.state["sessions"] = int(self.state.get("sessions", 0)) + 1
        self.timer.add("data", self.p.data_seconds)
        self.dir.save_state(self.state)
        self.world.barrier()  # the run directory exists before any rank goes on

    def _reward(self, initial_state: Any = None) -> Reward:
        return Reward(self.refine, self.config, self.supernet, self.space, self.p.train[0], initial_state,
                      self.device)

    def _steps_per_epoch(self) -> int:
        c = self.config
        n = self.p.train[1].shape[0]
        return n // c.batch_size if c.drop_last else -(-n // c.batch_size)

    def make_controller(self) -> Optional[RefinePolicy]:
        """The controller of the alternating training (enas); the baselines train uniform paths (None)."""
        if self.refine.searcher != "enas":
            return None
        reward = self._reward(self._initial_state_file)
        self.policy = RefinePolicy(self.space, self.refine, self.config.seed, reward, self.p.valid,
                                   self._steps_per_epoch(), self.device, progress=self.progress)
        return self.policy

    def _initial_state_file(self) -> Any:
        from fastnas.train import INIT_KIND, load_checkpoint

        return load_checkpoint(self.dir / self.dir.SUPERNET_INIT, expected_kind=INIT_KIND)["model"]

    def load_trained(self) -> None:
        super().load_trained()
        if self.refine.searcher == "enas":
            from fastnas.train import CHECKPOINT_KIND, load_checkpoint

            payload = load_checkpoint(self.dir / self.dir.SUPERNET, expected_kind=CHECKPOINT_KIND)
            self.make_controller()
            if "extra" not in payload:
                raise ValueError(f"checkpoint {str(self.dir / self.dir.SUPERNET)!r} holds no controller state")
            self.policy.load_state(payload["extra"])

    def make_searcher(self, search_config: Any) -> Any:
        from fastnas.search import create_searcher

        if self.refine.searcher != "enas":
            return create_searcher(self.config.searcher, self.space, search_config)
        r = self.refine
        searcher = create_searcher("enas", self.space, search_config, hidden=r.hidden, temperature=r.temperature,
                                   tanh_constant=r.tanh_constant, entropy_weight=r.entropy_weight,
                                   baseline_decay=r.baseline_decay, lr=r.controller_lr,
                                   infeasible_reward=None)
        searcher.controller.load_state_dict(self.policy.controller.state_dict())
        searcher.baseline = self.policy.baseline
        return searcher

    def score_fn(self, config: Optional[RunConfig] = None) -> Any:
        """The reward on the whole validation subset (in batches of ``reward_batch``), as a search score."""
        from fastnas.run.scoring import TimedScoreFn

        reward = self._reward(self.initial_state)
        x, y = self.p.valid
        k = self.refine.reward_batch
        batches = [(x[i:i + k].to(self.device), y[i:i + k].to(self.device)) for i in range(0, y.shape[0], k)]
        sizes = [b[1].shape[0] for b in batches]

        def fn(arch: Any) -> float:
            return math.fsum(reward(arch, b) * n for b, n in zip(batches, sizes)) / sum(sizes)

        return TimedScoreFn(fn)

    def retrain(self) -> None:
        super().retrain()
        c = self.config
        if c.retrain_epochs <= 0 or not self.refine.retrain_base:
            return
        self.progress("refine:base", {"status": "start"})
        with self.timer.phase("retrain"):
            self.base_result = self.retrain_arch(self.space.original(), self.dir / "retrain_base.pt")
        self.progress("refine:base", {"status": "end"})

    def extra_result(self, result: Mapping[str, Any]) -> Dict[str, Any]:
        """NAR's fields of ``result.json`` (written in the same file as the rest, by rank 0)."""
        from fastnas.run import plots

        space = self.space
        arch = self.search_result.best.arch
        base = space.original()
        flops, base_flops = float(space.flops(arch)), float(space.flops(base))
        params, base_params = int(space.params(arch)), int(space.params(base))
        written = dict(result.get("plots") or {})
        plot_dir = self.dir / self.dir.PLOTS
        trace = self.policy.trace if self.policy is not None else []
        epochs = self.policy.epochs if self.policy is not None else []
        if trace:
            for name, fn in (("controller", lambda: plots.plot_controller(trace, plot_dir / "controller.png")),
                             ("op_probabilities", lambda: plots.plot_op_probabilities(
                                 epochs, space, plot_dir / "op_probabilities.png"))):
                try:
                    fn()
                    written[name] = f"{self.dir.PLOTS}/{name}.png"
                except Exception as e:  # noqa: BLE001  (a plot must not lose the result; the warning says why)
                    import logging

                    logging.getLogger(__name__).warning("plot %s failed: %s: %s", name, type(e).__name__, e)
        return {
            "ops": list(arch), "op_names": space.describe(arch), "sites": space.site_ops(arch),
            "params": params, "base_params": base_params, "flops": flops, "base_flops": base_flops,
            "flops_reduction": 1.0 - flops / base_flops if base_flops else None,
            "params_reduction": 1.0 - params / base_params if base_params else None,
            "base_arch": space.format(base),
            "base_test_accuracy": self.base_result["test_accuracy"] if self.base_result else None,
            "base_retrain": self.base_result,
            "refine": {**self.refine.to_dict(), "granularity": space.granularity, "genes": len(space.gene_ops),
                       "candidates": list(space.candidates), "backbone": space.backbone or space.model_name,
                       "controller_updates": len(trace),
                       "controller_images": self.policy.controller_evaluations() if self.policy else 0,
                       "trace": trace, "epochs": epochs},
            "plots": written,
            "search": {**result["search"], "metric": self.refine.reward},
        }


def refine_summary_lines(result: Mapping[str, Any], run_path: str) -> List[str]:
    """What ``fastnas refine`` prints at the end."""
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    r = result["refine"]
    lines = [f"refined {r['backbone']} ({r['granularity']} granularity, {r['genes']} genes, searcher {r['searcher']}, "
             f"reward {r['reward']}):",
             f"  ops {result['arch']}  ({', '.join(result['op_names'])})",
             f"  FLOPs {result['flops']:.2f}M of {result['base_flops']:.2f}M ({pct(result['flops_reduction'])} fewer), "
             f"params {result['params']:,} of {result['base_params']:,} ({pct(result['params_reduction'])} fewer)"]
    if result.get("test_accuracy") is not None:
        line = f"  test accuracy {pct(result['test_accuracy'])} (retrained {result['retrain']['epochs']} epochs)"
        if result.get("base_test_accuracy") is not None:
            line += f"; the base backbone, same recipe: {pct(result['base_test_accuracy'])}"
        lines.append(line)
    lines.append(f"  run directory {run_path}: result.json, plots/, export with fastnas export --run {run_path} --out net.py")
    return lines


# ---- the library entry point -------------------------------------------------------------------------------

@dataclass
class RefineResult:
    """What :func:`fastnas.refine` returns.

    Attributes:
        model: the refined standalone network (a ``torch.fx.GraphModule`` on the base model's graph), with
            the shared weights inherited, or retrained when ``retrain_epochs > 0``; eval mode, on the CPU.
        ops: NAR's op list (0 keeps the original conv, ``i`` is candidate ``i``); op_names the names.
        params, base_params: parameters of the refined and of the base model.
        flops, base_flops: their multiply-adds (millions) on one input.
        result: the whole ``result.json``; run_dir: where the run is (``None`` for a temporary one).
    """

    model: torch.nn.Module
    ops: List[int]
    op_names: List[str]
    params: int
    base_params: int
    flops: float
    base_flops: float
    result: Dict[str, Any]
    run_dir: Optional[str]


def _data_pair(data: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0], data[1]
    if isinstance(data, torch.utils.data.DataLoader):
        xs, ys = [], []
        for item in data:
            if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                raise ValueError("data: the DataLoader must yield (images, labels) batches")
            xs.append(torch.as_tensor(item[0]))
            ys.append(torch.as_tensor(item[1]))
        if not xs:
            raise ValueError("data: the DataLoader yielded no batch")
        return torch.cat(xs), torch.cat(ys)
    raise ValueError(f"data={type(data).__name__}: expected an (images, labels) pair of tensors or a DataLoader")


def refine(model: torch.nn.Module, data: Any, *, granularity: str = "conv", candidates: Optional[Sequence[str]] = None,
           max_params: Any = "original", searcher: str = "enas", epochs: int = 10, batch_size: int = 64,
           lr: Optional[float] = None, pretrain_epochs: int = 0, reward: str = REWARD_BATCH_ACCURACY,
           max_flops: Optional[float] = None, retrain_epochs: int = 0, valid_size: int = 256,
           test: Any = None, seed: int = 0, device: str = "auto", out: Optional[str] = None, resume: bool = False,
           progress: Any = None, **controller: Any) -> RefineResult:
    """Refines the operators of ``model`` (any ``nn.Module`` torch.fx traces, with residual blocks) on ``data``.

    ``data`` is ``(x, y)`` (images ``(N, C, H, W)``, labels ``(N,)``) or a DataLoader of such batches; fastnas
    splits it in two halves, shared-weight training and controller validation (``valid_size`` images of
    it score each candidate). ``test`` (a pair) is held out for ``retrain_epochs``' test accuracy (default:
    a fifth of ``data``). ``controller`` takes the :class:`RefineConfig` settings (``controller_steps``,
    ``samples``, ``derive``, ...). The run goes to ``out`` (kept; ``resume=True`` continues it with the same
    model and data), else to a temporary directory removed at the end.

    Returns:
        A :class:`RefineResult`: ``.model``, ``.ops``, ``.op_names``, ``.params``, ``.base_params``,
        ``.flops``, ``.base_flops``.
    """
    import shutil
    import tempfile

    from fastnas.data import from_tensors
    from fastnas.spaces.backbone import BackboneSpace

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model={type(model).__name__}: expected a torch.nn.Module")
    x, y = _data_pair(data)
    tx, ty = _data_pair(test) if test is not None else (None, None)
    dataset = from_tensors(x, y, tx, ty, name="tensors", seed=seed)
    example = dataset.train_x[:1]
    space = BackboneSpace(model, example.to(next(iter(model.parameters()), torch.empty(0)).device),
                          granularity=granularity, candidates=candidates, max_params=max_params)
    if space.num_classes is not None and space.num_classes != dataset.num_classes:
        raise ValueError(f"model {type(model).__name__} gives {space.num_classes} outputs per image; data has "
                         f"{dataset.num_classes} classes")
    rcfg = RefineConfig(searcher=searcher, pretrain_epochs=pretrain_epochs, reward=reward, **controller)
    temp = None
    if out is None:
        if resume:
            raise ValueError("resume=True needs out= (the run directory to continue)")
        temp = tempfile.mkdtemp(prefix="fastnas-refine-")
        out = str(Path(temp) / "run")
    settings = dict(out=out, epochs=epochs, batch_size=batch_size, lr=lr, max_flops=max_flops,
                    retrain_epochs=retrain_epochs, valid_size=valid_size, seed=seed, device=device, quiet=True,
                    backbone=f"python:{type(model).__name__}", granularity=granularity, data="tensors")
    try:
        if resume:
            prepared, rcfg = prepare_refine_from_run(out, {k: v for k, v in settings.items()
                                                           if k in ("device",)}, rcfg.to_dict(),
                                                     dataset=dataset, space=space)
        else:
            prepared, rcfg = prepare_refine(RunConfig(**{k: v for k, v in settings.items() if v is not None}), rcfg,
                                            dataset=dataset, space=space)
        run = RefineRun(prepared, rcfg, progress=progress)
        result = run.execute()
        if run.supernet is None:
            run.load_trained()
        arch = space.parse(result["arch"])
        net = _retrained(run, arch) if run.retrain_result is not None else _inherited(run, arch)
        net = net.cpu().eval()
        return RefineResult(model=net, ops=list(result["ops"]), op_names=list(result["op_names"]),
                            params=int(result["params"]), base_params=int(result["base_params"]),
                            flops=float(result["flops"]), base_flops=float(result["base_flops"]), result=result,
                            run_dir=None if temp else out)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _retrained(run: RefineRun, arch: Any) -> torch.nn.Module:
    """``arch`` with the weights of the run's retraining (its last checkpoint)."""
    from fastnas.run.retrain import RETRAIN_KIND
    from fastnas.train import load_checkpoint

    net = run.space.build(arch)
    net.load_state_dict(load_checkpoint(run.dir / run.dir.RETRAIN, expected_kind=RETRAIN_KIND)["model"])
    return net


def _inherited(run: RefineRun, arch: Any) -> torch.nn.Module:
    """``arch`` extracted from the trained supernet, BatchNorm recalibrated on the training half."""
    from fastnas.data import Batches

    x = run.p.train[0]
    batches = Batches(x, None, run.config.batch_size, order_seed=derive_seed(run.config.seed, "export-recal"),
                      num_batches=min(100, -(-x.shape[0] // run.config.batch_size)))
    run.supernet.recalibrate(arch, (xb.to(run.device) for xb, _ in batches))
    return run.supernet.extract(arch)
