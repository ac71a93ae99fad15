"""One run, end to end: data, supernet training, search, retraining, report.

:func:`prepare` validates everything and loads the data *before* anything is written, so bad input
never leaves a half-made run directory; :class:`Run` then executes the phases. Each phase records in
``state.json`` that it started and that it is done; every phase can be resumed after a kill:

* train: :func:`fastnas.train.train_supernet` resumes from its end-of-epoch checkpoint;
* search: the searcher (evolution, random, exhaustive, any registered one) resumes from its state,
  saved after every scored candidate: only the candidates not yet scored are scored;
* retrain: resumes from its end-of-epoch checkpoint;
* report: is recomputed from the saved files.

All randomness derives from ``config.seed`` (weights, split, batch order, sampling, search, noise), so a
resumed run ends with the same ``result.json`` (timings aside) as an uninterrupted one on the same device
with the same thread count. Library code: progress goes to the ``progress(event, info)`` callback.

Under torchrun (:mod:`fastnas.distributed`) every rank runs the same phases in step: each rank scores
its share of every generation (the history is that of one process), only rank 0 writes the run
directory and reports progress, and the ranks meet at a barrier after each phase. A world size that
does not divide ``--batch-size`` is refused by :func:`prepare` while training remains to be done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch

from fastnas import distributed
from fastnas.run.config import PHASE_KEYS, RECIPE_FALLBACK, RECIPE_KEYS, SESSION_KEYS, SETTINGS, RunConfig
from fastnas.seeds import derive_seed, derive_seed as derived_seed  # derived_seed: old name, used by Run.search
from fastnas.run.rundir import RunDir, read_json

__all__ = ["Prepared", "Run", "prepare", "prepare_from_run", "resolve_device", "merge_resume",
           "default_out", "ProgressFn", "space_recipe", "recipe_notes"]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, Dict[str, Any]], None]
Pair = Tuple[torch.Tensor, torch.Tensor]

_SEARCH_STATE_VERSION = 2  # 2: the searcher's own state_dict (ask/tell); 1: evolution state or replayed records


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a device is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: torch reports no CUDA device; use --device cpu or auto")
    return dev


def default_out(root: str = "runs") -> str:
    """``runs/<YYYYmmdd-HHMMSS>``, with a suffix if that exists (under torchrun: rank 0's start time, the
    same directory on every rank)."""
    stamp = datetime.datetime.fromtimestamp(distributed.start_time()).strftime("%Y%m%d-%H%M%S")
    path = Path(root) / stamp
    k = 2
    while path.exists():
        path = Path(root) / f"{stamp}-{k}"
        k += 1
    return str(path)


def _with_changes(saved: RunConfig, changes: Dict[str, Any]) -> RunConfig:
    """``saved`` with ``changes`` (``None`` values ignored), its default-filled gamma re-chosen for a new metric.

    ``config.toml`` records the resolved gamma (16 for ``angle+flatness``); when ``--metric`` changes
    and gamma is not given, that filled-in value belongs to the old metric, so the new metric's own
    default replaces it (``None`` for a formula, whose weights are in its text). A gamma the user set
    (one that differs from the old metric's default) is kept, and checked against the new metric.
    """
    from fastnas.metrics import DEFAULT_GAMMA

    values = saved.to_dict()
    values.update({k.replace("-", "_"): v for k, v in changes.items() if v is not None})
    if changes.get("gamma") is None and values["metric"] != saved.metric \
            and saved.gamma == DEFAULT_GAMMA.get(saved.metric):
        values["gamma"] = DEFAULT_GAMMA.get(values["metric"])
    return RunConfig(**values)


def merge_resume(saved: RunConfig, given: Dict[str, Any], state: Dict[str, Any], run_path: str) -> RunConfig:
    """The config to continue a run with: ``saved`` updated by the explicitly ``given`` settings.

    A setting may differ from the saved one only if it describes the session (device, threads,
    quiet) or if the phase it belongs to has not started yet; otherwise ``ValueError`` names it.
    """
    changed = {}
    for key, value in given.items():
        if value is None:
            continue
        key = key.replace("-", "_")
        if key == "out":
            if Path(value).resolve() != Path(run_path).resolve():
                raise ValueError(f"--out {value} differs from --resume {run_path}; give only --resume")
            continue
        changed[key] = value
    merged = _with_changes(saved, changed)
    phase_of = {k: phase for phase, keys in PHASE_KEYS.items() for k in keys}
    for key in changed:
        if key in SESSION_KEYS or getattr(merged, key) == getattr(saved, key):
            continue
        phase = phase_of.get(key)
        if phase is not None and state["phases"].get(phase) is not None:
            raise ValueError(f"cannot change {key.replace('_', '-')} when resuming {run_path}: its "
                             f"{phase} phase has started (run has {getattr(saved, key)!r}, given "
                             f"{getattr(merged, key)!r}); start a new run instead")
    return merged.replace(out=str(run_path))


@dataclasses.dataclass
class Prepared:
    """A validated run, its data loaded; nothing written yet.

    ``config`` has every setting decided; ``given`` holds what the user gave (and the true defaults),
    with the decided values of the phases that had started, as ``config.toml`` records it; ``saved`` is
    what ``config.toml`` held before this session (``None`` for a new run).
    """

    config: RunConfig
    run_dir: RunDir
    resumed: bool
    state: Dict[str, Any]
    dataset: Any
    space: Any
    train: Pair
    valid: Pair
    valid_full: Pair
    device: torch.device
    data_seconds: float
    given: Optional[RunConfig] = None
    saved: Optional[RunConfig] = None


def _subset(pair: Pair, n: int, seed: int, purpose: str) -> Pair:
    x, y = pair
    if n <= 0 or n >= y.shape[0]:
        return pair
    g = torch.Generator().manual_seed(derive_seed(seed, purpose))
    idx = torch.randperm(y.shape[0], generator=g)[:n].sort().values
    return x[idx], y[idx]


def _check_limits(config: RunConfig, space: Any) -> None:
    """``--max-params`` / ``--max-flops`` below every architecture of an enumerable space: an error now.

    Spaces that enumerate (``size()`` up to 100,000 architectures) are checked exactly; for others the
    searcher reports architectures it cannot place as before.
    """
    limits = [(k, kind, getattr(config, k)) for k, kind in (("max_params", "params"), ("max_flops", "flops"))
              if getattr(config, k) is not None]
    size = getattr(space, "size", None)
    n = size() if limits and callable(size) else None
    if n is None or n > 100_000:
        return
    for key, kind, limit in limits:
        low = min(getattr(space, kind)(a) for a in space.enumerate())
        if limit < low:
            raise ValueError(f"--{key.replace('_', '-')} {limit:g}: the smallest architecture of the space "
                             f"{config.space!r} at this size has {low:g} {kind}, so none fits; raise the limit")


def space_kwargs(config: RunConfig, dataset: Any) -> Dict[str, Any]:
    """``create_space`` arguments: the generic size keywords (each space maps them onto its own names) and
    the backbone settings where given (only a backbone space takes them; ``create_space`` says so)."""
    kwargs = {"channels": config.channels, "cells": config.cells, "num_classes": dataset.num_classes,
              "in_channels": dataset.in_channels, "resolution": dataset.resolution}
    kwargs.update({k: getattr(config, key) for k, key in (("backbone", "backbone"), ("granularity", "granularity"),
                                                          ("candidates", "candidates"),
                                                          ("max_params", "max_op_params"))
                   if getattr(config, key) is not None})
    return kwargs


def _load(config: RunConfig, run_dir: RunDir, resumed: bool, state: Dict[str, Any],
          saved: Optional[RunConfig] = None, dataset: Any = None, space: Any = None) -> Prepared:
    from fastnas.data import load_dataset, split_for_search
    from fastnas.ops import check_env_backend
    from fastnas.spaces import create_space, list_spaces

    check_env_backend()  # a mistyped FASTNAS_BACKEND fails here, not after the supernet has trained

    if config.space not in list_spaces():
        create_space(config.space)  # raises the registry's ValueError with close matches
    given_space = space
    device = distributed.local_device(resolve_device(config.device))
    if config.truth is not None and not Path(config.truth).is_file():
        raise ValueError(f"--truth {config.truth!r}: no such file (expected a CSV with an arch and an accuracy "
                         "column, e.g. the table of fastnas groundtruth)")
    t0 = time.perf_counter()
    if dataset is None:
        dataset = load_dataset(config.data, data_dir=config.data_dir, seed=config.seed)
    from fastnas.spaces.base import SpaceArgumentError

    try:
        if given_space is None:
            space = create_space(config.space, **space_kwargs(config, dataset))
    except SpaceArgumentError as e:
        given_keys = [k for k in ("backbone", "granularity", "candidates", "max_op_params")
                      if getattr(config, k) is not None]
        if given_keys:
            raise ValueError(f"space {config.space!r} does not take " + ", ".join(SETTINGS[k].flag for k in given_keys)
                             + " (settings of the backbone space: --space backbone, or fastnas refine)") from None
        raise e
    except ValueError as e:
        raise ValueError(f"space {config.space!r} cannot take {dataset.name!r} "
                         f"({dataset.in_channels}x{dataset.resolution}x{dataset.resolution}): {e}") from None
    _check_limits(config, space)
    from fastnas.search import check_searcher_space

    check_searcher_space(config.searcher, space)  # e.g. enas on a space without choices: refused before training
    split = split_for_search(dataset, seed=config.seed)
    train = _subset(split.supernet_train, config.limit_train, config.seed, "limit-train")
    valid_full = split.search_valid
    if config.limit_train:
        valid_full = _subset(valid_full, config.limit_train, config.seed, "limit-valid")
    if config.valid_size > valid_full[1].shape[0]:
        raise ValueError(f"--valid-size {config.valid_size}: the search-validation half of {dataset.name!r} has "
                         f"only {valid_full[1].shape[0]} images; ask for at most that many (0 uses all of them)")
    valid = _subset(valid_full, config.valid_size, config.seed, "valid-subset")
    recipe = space_recipe(config, space)
    if not resumed:  # which settings the space's recipe decided: recorded in state.json and config.toml
        state["recipe"] = {"space": config.space, "data": config.data,
                           "values": {k: v for k, v in recipe.items() if getattr(config, k) is None}}
    given = config
    config = config.resolved({**_defaults(config, dataset), **RECIPE_FALLBACK, **recipe})
    from fastnas.train import supernet_plan

    supernet_plan(config.sampler, space, config.seed)  # a sampler the space lacks fails before anything runs
    _check_world(config, state)
    return Prepared(config=config, run_dir=run_dir, resumed=resumed, state=state, dataset=dataset, space=space,
                    train=train, valid=valid, valid_full=valid_full, device=device,
                    data_seconds=time.perf_counter() - t0, given=given, saved=saved)


def _check_world(config: RunConfig, state: Dict[str, Any]) -> None:
    """Under torchrun each rank trains on ``batch_size / world`` images of every step: while a training phase
    remains (the supernet's, or the retraining's), the world size must divide the batch size."""
    size = distributed.world().size
    phases = state.get("phases", {})
    training = phases.get("train") != "done" or (config.retrain_epochs > 0 and phases.get("retrain") != "done")
    if size == 1 or not training or config.batch_size % size == 0:
        return
    b = config.batch_size
    below, above = b // size * size, (b // size + 1) * size
    choices = f"{below} or {above}" if below > 0 else f"{above}"
    raise ValueError(f"--batch-size {b} is not divisible by the world size {size} (the processes torchrun "
                     f"started): each rank trains on batch-size / {size} images per step; give a multiple of "
                     f"{size}, e.g. {choices}")


def space_recipe(config: RunConfig, space: Any) -> Dict[str, Any]:
    """The space's supernet training recipe for the run's data (``space.presets(data).train``), checked:
    it may set only :data:`~fastnas.run.config.RECIPE_KEYS`."""
    recipe = dict(space.presets(config.data).train)
    unknown = sorted(k for k in recipe if k not in RECIPE_KEYS)
    if unknown:
        raise ValueError(f"space {config.space!r}: its training recipe (presets().train) sets {unknown}; a recipe "
                         f"may set only {list(RECIPE_KEYS)}")
    return recipe


def recipe_notes(config: RunConfig, state: Dict[str, Any]) -> Dict[str, str]:
    """``{setting: comment}`` for the settings whose value came from the space's recipe (``state.json``
    records them; a setting changed since, on a resume before training, is no longer the recipe's)."""
    record = state.get("recipe") or {}
    values = record.get("values") or {}
    where = f"from the {record.get('space')} space's recipe"
    return {k: where for k, v in values.items() if k in RECIPE_KEYS and getattr(config, k) == v}


def _defaults(config: RunConfig, dataset: Any) -> Dict[str, Any]:
    """The defaults that depend on the data, the space and the metrics layer."""
    from fastnas.metrics import DEFAULT_GAMMA, FlatnessConfig
    from fastnas.run.scoring import default_sigmas

    base = FlatnessConfig()
    return {"augment": bool(dataset.augment), "sigmas": default_sigmas(config.space, config.data),
            "gamma": DEFAULT_GAMMA.get(config.metric), "noise": base.noise, "recal_batches": base.bn_batches}


def prepare(config: RunConfig, *, dataset: Any = None, space: Any = None) -> Prepared:
    """Validates a new run (``config.out`` must be absent or empty) and loads its data; writes nothing.

    ``dataset`` (a :class:`fastnas.data.Dataset`) and ``space`` replace what ``config.data`` and
    ``config.space`` name (library callers with tensors or a model object, e.g. :func:`fastnas.refine`)."""
    out = config.out or default_out()
    config = config.replace(out=out)
    run_dir = RunDir(out)
    run_dir.check_usable_for_new_run()
    return _load(config, run_dir, False, RunDir.new_state(), dataset=dataset, space=space)


def prepare_from_run(path: str, given: Optional[Dict[str, Any]] = None, *, read_only: bool = False,
                     dataset: Any = None, space: Any = None) -> Prepared:
    """Validates continuing the run in ``path`` with the ``given`` settings; writes nothing.

    With ``read_only=True`` (scoring, exporting, retraining other architectures) any setting may be
    overridden for this session: nothing of the run itself will change.
    """
    run_dir = RunDir(path)
    saved = run_dir.load_config()
    state = run_dir.load_state()
    if read_only:
        changes = {k.replace("-", "_"): v for k, v in (given or {}).items() if k != "out"}
        config = _with_changes(saved, changes)
    else:
        config = merge_resume(saved, dict(given or {}), state, str(path))
    prepared = _load(config, run_dir, True, state, saved=None if read_only else saved, dataset=dataset, space=space)
    if prepared.config.augment != saved.augment and state["phases"].get("train") is not None:
        raise ValueError(f"run {path!r}: augment changed since the supernet was trained")
    _check_files(prepared)
    return prepared


def _check_files(p: Prepared) -> None:
    """Loads each checkpoint/state a resume will read, so a corrupt one fails before anything runs; the
    ``ValueError`` names every file that cannot be read, not only the first."""
    from fastnas.run.retrain import RETRAIN_KIND
    from fastnas.train import CHECKPOINT_KIND, INIT_KIND, load_checkpoint

    d = p.run_dir
    checks = [(d.SUPERNET, lambda: load_checkpoint(d / d.SUPERNET, expected_kind=CHECKPOINT_KIND)),
              (d.SUPERNET_INIT, lambda: load_checkpoint(d / d.SUPERNET_INIT, expected_kind=INIT_KIND)),
              (d.SEARCH_STATE, lambda: _read_search_state(d)),
              (d.RETRAIN, lambda: load_checkpoint(d / d.RETRAIN, expected_kind=RETRAIN_KIND))]
    problems = []
    for name, check in checks:
        if (d / name).exists():
            try:
                check()
            except ValueError as e:
                problems.append(str(e))
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        raise ValueError(f"run {str(d.path)!r} has {len(problems)} unreadable files: "
                         + "; ".join(f"({i}) {msg}" for i, msg in enumerate(problems, start=1)))


def _read_search_state(d: RunDir) -> Dict[str, Any]:
    path = str(d / d.SEARCH_STATE)
    data = read_json(d / d.SEARCH_STATE, "search state")
    if not isinstance(data, dict) or "version" not in data or "searcher" not in data:
        raise ValueError(f"search state {path!r} is not a fastnas search state")
    if data["version"] != _SEARCH_STATE_VERSION:
        raise ValueError(f"search state {path!r} has version {data['version']!r}, written by another fastnas "
                         f"(this one reads version {_SEARCH_STATE_VERSION}); delete that file to search again "
                         f"from the start (the trained supernet is kept), or start a new run")
    if not isinstance(data.get("state"), dict) or not isinstance(data.get("config"), dict):
        raise ValueError(f"search state {path!r} is not a fastnas search state (no searcher state or settings)")
    return data


class _Timer:
    """Seconds per phase, accumulated across sessions in ``state["timings"]``.

    The phase in progress is written to ``state.json`` as it goes (:meth:`tick`: at every checkpoint, and
    otherwise at most every :attr:`FLUSH_SECONDS`), so the time of a session killed mid-phase still counts
    after ``--resume``; at most the seconds since the last write are lost.
    """

    FLUSH_SECONDS = 5.0

    def __init__(self, state: Dict[str, Any], save: Callable[[], None]) -> None:
        self.state = state
        self.save = save
        self.done: Dict[str, float] = {k: float(v) for k, v in state.setdefault("timings", {}).items()}
        self.live: Dict[str, float] = {}  # what the phase in progress has spent so far in this session
        self._phase: Optional[Tuple[str, float]] = None
        self._flushed = time.monotonic()

    def _sync(self) -> None:
        keys = list(self.done) + [k for k in self.live if k not in self.done]
        self.state["timings"] = {k: self.done.get(k, 0.0) + self.live.get(k, 0.0) for k in keys}

    def add(self, name: str, seconds: float) -> None:
        self.done[name] = self.done.get(name, 0.0) + float(seconds)
        self._sync()

    def tick(self, live: Optional[Dict[str, float]] = None, *, force: bool = False) -> None:
        """Updates the time of the phase in progress (``live``: its parts' seconds so far, else the
        seconds since :meth:`phase` began) and writes ``state.json`` if ``force`` or it is due."""
        if live is not None:
            self.live = {k: float(v) for k, v in live.items()}
        elif self._phase is not None:
            self.live = {self._phase[0]: time.perf_counter() - self._phase[1]}
        self._sync()
        now = time.monotonic()
        if force or now - self._flushed >= self.FLUSH_SECONDS:
            self._flushed = now
            self.save()

    def commit(self) -> None:
        """Adds the phase in progress to the finished time (its end)."""
        for k, v in self.live.items():
            self.done[k] = self.done.get(k, 0.0) + v
        self.live = {}
        self._sync()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._phase = (name, time.perf_counter())
        try:
            yield
        except BaseException:
            self.tick(force=True)  # Ctrl-C or an error: the time spent so far still counts
            raise
        finally:
            self.tick()
            self._phase = None
            self.commit()


class Run:
    """Executes the phases of a prepared run; ``progress(event, info)`` receives everything to show.

    Events: ``phase`` (``name``, ``status`` "start"/"end"), ``train:<trainer event>`` (see
    :func:`fastnas.train.train_supernet`), ``search:start`` (``total``), ``search:candidate``
    (``record``, ``n_scored``, ``total``), ``search:generation`` (``generation``, ``best``),
    ``retrain:<event>``, ``report:written`` (``path``).
    """

    def __init__(self, prepared: Prepared, progress: Optional[ProgressFn] = None) -> None:
        self.p = prepared
        self.config = prepared.config
        self.space = prepared.space
        self.dir = prepared.run_dir
        self.state = prepared.state
        self.device = prepared.device
        self.world = distributed.world()
        self.progress = progress or (lambda event, info: None)
        self.timer = _Timer(self.state, lambda: self.dir.save_state(self.state))
        self.supernet: Any = None
        self.initial_state: Optional[Dict[str, torch.Tensor]] = None
        self.train_result: Any = None
        self.search_result: Any = None
        self.score_stats: Dict[str, Any] = {}
        self.retrain_result: Optional[Dict[str, Any]] = None

    # ---- bookkeeping

    def _mark(self, phase: str, status: str) -> None:
        self.state["phases"][phase] = status
        self.dir.save_state(self.state)

    def recorded(self, phases: Iterable[str]) -> RunConfig:
        """What ``config.toml`` records: the settings given (and the true defaults), and the values decided
        for the "choose for me" settings of ``phases`` -- a phase's are decided when it starts, so a
        setting derived from another one (``mutations`` from ``population``) is never frozen before
        its phase has begun, and a resume may still change what it derives from."""
        given = self.p.given or self.config
        phases = set(phases)
        fill = {k: v for k, v in self.config.to_dict().items()
                if getattr(given, k) is None and SETTINGS[k].phase in phases}
        return given.replace(**fill)

    def _notes(self, record: RunConfig) -> Dict[str, str]:
        """A comment for each recorded value that fastnas chose: the space's recipe, or the default's rule."""
        given = self.p.given or self.config
        notes = {k: f"default: {SETTINGS[k].default_text}" for k in SETTINGS
                 if getattr(given, k) is None and getattr(record, k) is not None and SETTINGS[k].default_text}
        notes.update(recipe_notes(record, self.state))
        return notes

    def _started(self, *also: str) -> set:
        return {p for p, status in self.state["phases"].items() if status is not None} | set(also)

    def save_config(self, *starting: str) -> bool:
        """Writes ``config.toml`` if what it records changed (``starting``: phases about to start); the
        header comment of the file is kept. Returns whether it was written."""
        record = self.recorded(self._started(*starting))
        return self.dir.save_config(record, header=None, notes=self._notes(record))

    def finished_result(self) -> Optional[Dict[str, Any]]:
        """The saved result of a finished run that this session changes nothing of (only session settings
        such as ``--device`` or ``--threads`` differ), else ``None``."""
        saved = self.p.saved
        if not self.p.resumed or saved is None or self.state["phases"].get("report") != "done" \
                or not (self.dir / self.dir.RESULT).is_file():
            return None
        now = self.recorded(self._started()).to_dict()
        before = saved.to_dict()
        if any(now[k] != before[k] for k in now if k not in SESSION_KEYS):
            return None
        return read_json(self.dir / self.dir.RESULT, "result")

    def start(self) -> None:
        """Creates the run directory (new runs) and counts the session."""
        if not self.p.resumed:
            import fastnas
            record = self.recorded(self._started("train"))
            self.dir.create(record, header=f"fastnas {fastnas.__version__} run config; "
                                           "resume with: fastnas search --resume <this directory>",
                            notes=self._notes(record))
        else:
            self.save_config("train")
        self.state["sessions"] = int(self.state.get("sessions", 0)) + 1
        self.timer.add("data", self.p.data_seconds)
        self.dir.save_state(self.state)
        self.world.barrier()  # the run directory exists before any rank goes on

    def _timed_progress(self, phase: str) -> ProgressFn:
        """The progress callback of a training phase: forwards its events and keeps the phase's time in
        ``state.json`` current (written with every end-of-epoch checkpoint, and every few seconds)."""

        def progress(event: str, info: Dict[str, Any]) -> None:
            if event in ("step", "epoch"):
                self.timer.tick(force=event == "epoch")
            self.progress(f"{phase}:{event}", info)

        return progress

    # ---- phases

    def build_supernet(self) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.config.seed, "supernet-init"))
            net = self.space.supernet()
        return net.to(self.device)

    def train_config(self) -> Any:
        c = self.config
        return c.component("train", seed=c.seed, augment=bool(c.augment))

    def train(self) -> None:
        """Trains the supernet (or loads the finished checkpoint)."""
        from fastnas.data import Batches
        from fastnas.train import train_supernet

        c = self.config
        self.progress("phase", {"name": "train", "status": "start"})
        self._mark("train", "done" if self.state["phases"].get("train") == "done" else "started")
        self.supernet = self.build_supernet()
        batch_fn = None
        if c.augment:
            x, y = self.p.train
            fill = self.p.dataset.pad_fill

            def batch_fn(epoch: int):
                return Batches(x, y, c.batch_size, seed=derive_seed(c.seed, "supernet-batches"), epoch=epoch,
                               augment=True, fill=fill)

        with self.timer.phase("train"):
            self.train_result = train_supernet(
                self.supernet, self.space, *((None, None) if batch_fn else self.p.train), self.train_config(),
                device=self.device, checkpoint_path=self.dir / self.dir.SUPERNET, resume=True,
                progress=self._timed_progress("train"), batch_fn=batch_fn, controller=self.make_controller())
        self.initial_state = self.train_result.initial_state
        self._mark("train", "done")
        self.world.barrier()  # rank 0's last checkpoint is in place before any rank goes on
        self.progress("phase", {"name": "train", "status": "end"})

    def make_controller(self) -> Any:
        """What picks the training paths instead of ``config.sampler`` and learns between epochs (NAR's
        controller, :class:`fastnas.run.refine.RefineRun`), or ``None``; called once ``self.supernet`` exists."""
        return None

    def load_trained(self) -> None:
        """Loads the trained supernet and its initial weights from the run directory."""
        from fastnas.train import CHECKPOINT_KIND, INIT_KIND, load_checkpoint

        if self.state["phases"].get("train") != "done":
            raise ValueError(f"run {str(self.dir.path)!r} has no trained supernet yet; continue it with "
                             f"fastnas search --resume {self.dir.path}")
        self.supernet = self.build_supernet()
        payload = load_checkpoint(self.dir / self.dir.SUPERNET, expected_kind=CHECKPOINT_KIND)
        init = load_checkpoint(self.dir / self.dir.SUPERNET_INIT, expected_kind=INIT_KIND,
                               expected_fingerprint=payload.get("fingerprint"))
        try:
            self.supernet.load_state_dict(payload["model"])
        except RuntimeError as e:
            raise ValueError(f"checkpoint {str(self.dir / self.dir.SUPERNET)!r} does not fit this run's "
                             f"supernet ({str(e).splitlines()[0]})") from None
        self.supernet.to(self.device)
        self.initial_state = init["model"]

    def score_fn(self, config: Optional[RunConfig] = None) -> Any:
        from fastnas.run.scoring import build_score_fn

        return build_score_fn(config or self.config, self.supernet, self.space, valid=self.p.valid,
                              calib_x=self.p.train[0], initial_state=self.initial_state, device=self.device)

    def make_searcher(self, search_config: Any) -> Any:
        """The run's searcher, new (a saved state is loaded into it after)."""
        from fastnas.search import create_searcher

        return create_searcher(self.config.searcher, self.space, search_config)

    def search(self) -> None:
        """Runs (or continues) the search; the searcher's state is saved after every scored candidate."""
        import json

        from fastnas.search import SearchConfig, run_search

        def searcher_config(c: RunConfig) -> SearchConfig:
            """What the run gives its searcher (each searcher reads the settings it needs)."""
            return c.component("search", seed=derived_seed(c.seed, "search") % (2 ** 31))

        c = self.config
        self.progress("phase", {"name": "search", "status": "start"})
        if self.state["phases"].get("search") != "done":
            self._mark("search", "started")
        self.save_config()  # the search's "choose for me" values are decided now
        path = self.dir / self.dir.SEARCH_STATE
        saved = _read_search_state(self.dir) if path.exists() else None
        if saved is not None and saved["searcher"] != c.searcher:
            raise ValueError(f"search state {str(path)!r} is of searcher {saved['searcher']!r}, not {c.searcher!r}")
        scfg = searcher_config(c)
        settings = json.loads(json.dumps(scfg.to_dict()))  # as the saved state holds them
        if saved is not None and saved["config"] != settings:
            differ = sorted(k for k in set(settings) | set(saved["config"])
                            if settings.get(k) != saved["config"].get(k))
            raise ValueError(f"search state {str(path)!r} was made with other search settings {differ} (saved "
                             f"{ {k: saved['config'].get(k) for k in differ} }, now "
                             f"{ {k: settings.get(k) for k in differ} }); start a new run instead")
        searcher = self.make_searcher(scfg)
        if saved is not None:
            searcher.load_state_dict(saved["state"])
        score_fn = self.score_fn()
        t_search = time.perf_counter()
        total, rounds = searcher.total, searcher.planned_rounds

        def save() -> None:
            self.dir.write_json(path, {"version": _SEARCH_STATE_VERSION, "searcher": c.searcher, "config": settings,
                                       "state": searcher.state_dict()})

        def seconds() -> Dict[str, float]:
            elapsed = time.perf_counter() - t_search
            return {"recalibration": score_fn.recal_seconds, "scoring": score_fn.seconds - score_fn.recal_seconds,
                    "search_other": max(0.0, elapsed - score_fn.seconds)}

        def callback(event: str, info: Dict[str, Any]) -> None:
            if event == "candidate":
                self.progress("search:candidate", {"record": info["record"], "n_scored": info["n_scored"],
                                                   "total": total, "generation": info["generation"]})
                save()  # after the last candidate of a round it holds the closed round too
                self.timer.tick(seconds())
            elif event == "generation":
                self.progress("search:generation", {"generation": info["generation"], "best": info["best"],
                                                    "generations": rounds if rounds is not None else "?"})

        self.progress("search:start", {"total": total, "done": searcher.n_scored})
        try:
            result = run_search(searcher, score_fn, callback=callback, world=self.world)
            save()
        except BaseException:
            self.timer.tick(seconds(), force=True)  # Ctrl-C or an error: the time spent so far still counts
            raise
        self.timer.tick(seconds())
        self.timer.commit()
        self.score_stats = score_fn.stats()
        route = (self.score_stats.get("score_fn") or {}).get("evaluator") or {}
        if route.get("route") is not None:  # a session that scored nothing keeps the earlier one
            self.state["scoring"] = {"route": route["route"], "route_reason": route.get("route_reason")}
        self.search_result = result
        self._mark("search", "done")
        self.world.barrier()
        self.progress("phase", {"name": "search", "status": "end"})

    def retrain(self) -> None:
        """Retrains the winner from scratch (``retrain_epochs > 0``) and tests it."""
        c = self.config
        if c.retrain_epochs <= 0:
            return
        self.progress("phase", {"name": "retrain", "status": "start"})
        self._mark("retrain", "done" if self.state["phases"].get("retrain") == "done" else "started")
        arch = self.search_result.best.arch
        with self.timer.phase("retrain"):
            self.retrain_result = self.retrain_arch(arch, self.dir / self.dir.RETRAIN)
        self._mark("retrain", "done")
        self.world.barrier()
        self.progress("phase", {"name": "retrain", "status": "end"})

    def retrain_arch(self, arch: Any, checkpoint: Optional[Path], epochs: Optional[int] = None) -> Dict[str, Any]:
        from fastnas.run.retrain import retrain

        c = self.config
        x = torch.cat([self.p.train[0], self.p.valid_full[0]])
        y = torch.cat([self.p.train[1], self.p.valid_full[1]])
        build: Dict[str, Any] = {}  # build(arch) is the network of the space's own sizes (channels, cells)
        return retrain(self.space, arch, (x, y), (self.p.dataset.test_x, self.p.dataset.test_y),
                       epochs=epochs or c.retrain_epochs, batch_size=c.batch_size, lr=c.lr, lr_min=0.0,
                       momentum=c.momentum, weight_decay=c.weight_decay, grad_clip=c.grad_clip,
                       augment=bool(c.augment), fill=self.p.dataset.pad_fill, seed=c.seed, device=self.device,
                       build_kwargs=build, checkpoint_path=checkpoint,
                       progress=self._timed_progress("retrain"))

    def report(self) -> Optional[Dict[str, Any]]:
        """Writes history.csv, result.json and the plots; returns the result (rank 0; ``None`` on the others,
        which wait for it)."""
        from fastnas.run.report import write_report

        if not self.dir.writes:
            self.world.barrier()
            return None
        self.progress("phase", {"name": "report", "status": "start"})
        t0 = time.perf_counter()
        result = write_report(self, timed_report_seconds=lambda: time.perf_counter() - t0)
        self._mark("report", "done")
        self.world.barrier()
        self.progress("phase", {"name": "report", "status": "end"})
        return result

    def execute(self, *, search: bool = True) -> Optional[Dict[str, Any]]:
        """All phases (``search=False``: supernet training only); returns the result (None without search).

        A finished run resumed without a change to its settings is left as it is (nothing is written):
        the ``run:finished`` event (``path``) says so and its saved result is returned."""
        if search:
            done = self.finished_result()
            if done is not None:
                self.progress("run:finished", {"path": str(self.dir.path)})
                return done
        self.start()
        self.train()
        if not search:
            return None
        self.search()
        self.retrain()
        return self.report()

