"""The settings of one run: :class:`RunConfig`, and reading/writing them as TOML.

One frozen dataclass holds every setting of ``fastnas search``. Its field names are the TOML keys and,
with ``_`` written as ``-``, the command-line flags (``batch_size`` <-> ``--batch-size``), so a config
file and the command line say the same things in the same words. ``None`` means "choose for me" and
never overrides a value from another source (defaults < ``--config FILE.toml`` < flags).

Fields fall into groups by the phase of a run they affect (:data:`PHASE_KEYS`): changing a field is
allowed on ``--resume`` only while its phase has not started, so a resumed run can never mix settings.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from fastnas._hints import did_you_mean

__all__ = [
    "RunConfig", "METRICS", "SEARCHERS", "NOISE_MODES", "PHASE_KEYS", "SESSION_KEYS",
    "parse_sigmas", "load_toml", "dumps_toml",
]

#: Scores ``--metric`` accepts (GeNAS's names: ABS = angle, FBS = flatness, PBS = accuracy).
METRICS = ("accuracy", "angle", "flatness", "angle+flatness", "accuracy+flatness", "angle+accuracy")
SEARCHERS = ("evolution", "random", "exhaustive")
NOISE_MODES = ("independent", "cumulative", "shared")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run; field = TOML key = flag (``_`` as ``-``).

    Defaults are sized for the no-argument ``fastnas search``: NAS-Bench-201 on the bundled 8x8 digits,
    finishing within minutes on two CPU cores (see the CLI's documentation for the measurements).

    Attributes (data and space):
        space: search space name (``nb201``, ``darts``).
        data: dataset name (``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``) or a
            ``.npz`` path.
        data_dir: where dataset files are (None: ``$FASTNAS_DATA_DIR`` and system locations).
        channels: supernet channels (NB201 ``C``, DARTS ``C``).
        cells: NB201 cells per stage ``N``; DARTS total cells ``layers``.
        valid_size: images of the search-validation half used to score candidates (0: all of it).
        limit_train: use only this many supernet-training images (for tests and smoke runs; 0: all).

    Attributes (supernet training, SPOS):
        epochs, batch_size, lr, lr_min, momentum, weight_decay, grad_clip: as in
            :class:`fastnas.train.TrainConfig`.
        augment: crop-and-flip augmentation (None: the dataset's default, on for CIFAR).

    Attributes (search):
        searcher: ``evolution``, ``random`` (``population * generations`` samples) or ``exhaustive``.
        metric: one of :data:`METRICS`.
        population, generations, topk, mutations, crossovers, mutate_prob: evolution settings
            (None: ``topk = max(2, population // 4)``, ``mutations = crossovers = population // 2``).
        max_params, max_flops: limits on candidates (None: none).

    Attributes (scores):
        sigmas: flatness perturbation levels, positive and strictly increasing (None: GeNAS's preset
            for the space: NB201 2e-3,1e-2,2e-2; DARTS 1e-5,5e-5,1e-4, or 1e-3,3e-3,6e-3 on CIFAR-100).
        alpha: weight of the ``|L_1 / sigma_1|`` term of the flatness score.
        gamma: weight of the second score in combined metrics: ``S + gamma / sigma_1 * F`` for
            ``*+flatness``, ``angle + gamma * accuracy`` (None: 16, 16 and 1 as in fastnas.metrics).
        noise: how levels draw noise: ``independent``, ``cumulative`` (GeNAS code) or ``shared``
            (None: the flatness default).
        samples: noise samples per level (averaged).
        recal_batches: BatchNorm recalibration batches (of 64 images) per candidate before accuracy
            and flatness (None: the metrics default, GeNAS's 14).

    Attributes (retraining and the run):
        retrain_epochs: train the winner from scratch this many epochs and test it (0: skip).
        truth: ground-truth CSV (architecture, accuracy) for the Kendall-tau plot.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        threads: CPU threads for torch (0: automatic; 1 for small images, where more threads on
            shared cores were measured 30x slower).
        seed: seeds everything (weights, data split and order, sampling, search, noise).
        out: run directory (None: ``runs/<timestamp>``).
        quiet: no progress bars; log lines only.
    """

    # data and space
    space: str = "nb201"
    data: str = "digits"
    data_dir: Optional[str] = None
    channels: int = 16
    cells: int = 2
    valid_size: int = 256
    limit_train: int = 0
    # supernet training
    epochs: int = 50
    batch_size: int = 64
    lr: float = 0.05
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    augment: Optional[bool] = None
    # search
    searcher: str = "evolution"
    metric: str = "angle+flatness"
    population: int = 20
    generations: int = 10
    topk: Optional[int] = None
    mutations: Optional[int] = None
    crossovers: Optional[int] = None
    mutate_prob: float = 0.1
    max_params: Optional[float] = None
    max_flops: Optional[float] = None
    # scores
    sigmas: Optional[Tuple[float, ...]] = None
    alpha: float = 1.0
    gamma: Optional[float] = None
    noise: Optional[str] = None
    samples: int = 1
    recal_batches: Optional[int] = None
    # retraining and the run
    retrain_epochs: int = 0
    truth: Optional[str] = None
    device: str = "auto"
    threads: int = 0
    seed: int = 0
    out: Optional[str] = None
    quiet: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (``sigmas`` as a list); ``None`` kept."""
        d = dataclasses.asdict(self)
        d["sigmas"] = list(self.sigmas) if self.sigmas is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Optional["RunConfig"] = None) -> "RunConfig":
        """``base`` (default: the defaults) updated with the non-``None`` values of ``d``.

        Keys may use ``-`` for ``_``. Unknown keys raise ``ValueError`` naming close matches.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        values = base.to_dict() if base is not None else {}
        for key, value in d.items():
            name = str(key).replace("-", "_")
            if name not in names:
                hint = did_you_mean(name, names, n=3)
                raise ValueError(f"unknown setting {key!r}{hint}")
            if value is not None:
                values[name] = value
        return cls(**values)

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with ``changes`` applied (``None`` values ignored)."""
        return RunConfig.from_dict(changes, base=self)

    def resolved(self, defaults: Mapping[str, Any]) -> "RunConfig":
        """Every "choose for me" value decided (what ``config.toml`` records).

        ``defaults`` gives the values that depend on the data or other layers (``augment``,
        ``sigmas``, ``gamma``, ``noise``, ``recal_batches``); they fill only fields that are None.
        """
        pop = self.population
        filled: Dict[str, Any] = {
            "topk": max(2, min(pop, pop // 4)), "mutations": pop // 2, "crossovers": pop // 2, **defaults}
        changes = {k: v for k, v in filled.items() if getattr(self, k) is None and v is not None}
        return dataclasses.replace(self, **changes)

    def uses(self, score: str) -> bool:
        """Whether the metric includes ``score`` (``accuracy``, ``angle`` or ``flatness``)."""
        return score in self.metric.split("+")


def _fail(name: str, value: Any, expected: str) -> None:
    raise ValueError(f"{name.replace('_', '-')}={value!r}: expected {expected}")


def _choice(name: str, value: Any, options: Sequence[str]) -> None:
    if value not in options:
        hint = did_you_mean(str(value), list(options), n=2, joiner=" or ")
        raise ValueError(f"{name.replace('_', '-')}={value!r} is not known; expected one of "
                         f"{', '.join(options)}{hint}")


def _validate(c: RunConfig) -> None:
    def integer(name: str, minimum: int, optional: bool = False) -> None:
        v = getattr(c, name)
        if optional and v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            _fail(name, v, f"an integer >= {minimum}")

    def number(name: str, ok, expected: str, optional: bool = False) -> None:
        v = getattr(c, name)
        if optional and v is None:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            _fail(name, v, expected)
        object.__setattr__(c, name, float(v))  # 1 and 1.0 give the same saved config

    for name in ("space", "data", "searcher", "metric", "device"):
        if not isinstance(getattr(c, name), str) or not getattr(c, name):
            _fail(name, getattr(c, name), "a non-empty string")
    for name in ("data_dir", "truth", "out", "noise"):
        v = getattr(c, name)
        if v is not None and (not isinstance(v, str) or not v):
            _fail(name, v, "a non-empty string")
    _choice("metric", c.metric, METRICS)
    _choice("searcher", c.searcher, SEARCHERS)
    if c.noise is not None:
        _choice("noise", c.noise, NOISE_MODES)
    if not (c.device in DEVICES or (c.device.startswith("cuda:") and c.device[5:].isdigit())):
        _fail("device", c.device, "auto, cpu, cuda or cuda:N")
    for name in ("channels", "cells", "epochs", "batch_size", "population", "generations", "samples"):
        integer(name, 1)
    for name in ("valid_size", "limit_train", "retrain_epochs", "threads", "seed"):
        integer(name, 0)
    if c.seed >= 2 ** 32:
        _fail("seed", c.seed, "an integer in [0, 2**32)")
    integer("topk", 1, optional=True)
    integer("mutations", 0, optional=True)
    integer("crossovers", 0, optional=True)
    integer("recal_batches", 1, optional=True)
    number("lr", lambda v: v > 0, "a number > 0")
    number("lr_min", lambda v: 0 <= v <= c.lr, f"a number in [0, lr={c.lr}]")
    number("momentum", lambda v: v >= 0, "a number >= 0")
    number("weight_decay", lambda v: v >= 0, "a number >= 0")
    number("grad_clip", lambda v: v >= 0, "a number >= 0 (0 disables clipping)")
    number("mutate_prob", lambda v: 0 <= v <= 1, "a probability in [0, 1]")
    number("alpha", lambda v: v >= 0, "a number >= 0")
    number("gamma", lambda v: True, "a finite number", optional=True)
    number("max_params", lambda v: v > 0, "a number > 0", optional=True)
    number("max_flops", lambda v: v > 0, "a number > 0", optional=True)
    for name in ("quiet",):
        if not isinstance(getattr(c, name), bool):
            _fail(name, getattr(c, name), "true or false")
    if c.augment is not None and not isinstance(c.augment, bool):
        _fail("augment", c.augment, "true or false")
    if c.sigmas is not None:
        object.__setattr__(c, "sigmas", parse_sigmas(c.sigmas))
    if c.topk is not None and c.topk > c.population:
        _fail("topk", c.topk, f"at most population={c.population}")
    m = c.mutations if c.mutations is not None else c.population // 2
    x = c.crossovers if c.crossovers is not None else c.population // 2
    if m + x > c.population:
        raise ValueError(f"mutations={m} + crossovers={x} exceeds population={c.population}")


def parse_sigmas(value: Any) -> Tuple[float, ...]:
    """Perturbation levels from ``"2e-3,1e-2,2e-2"`` or a sequence; positive, finite, strictly increasing."""
    from fastnas.metrics.combine import check_sigmas

    if isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
        try:
            levels = [float(s) for s in items]
        except ValueError:
            raise ValueError(f"sigmas={value!r}: expected comma-separated numbers like '2e-3,1e-2,2e-2'") from None
        return check_sigmas(levels, shown=value)
    if isinstance(value, (list, tuple)):
        return check_sigmas(value)
    raise ValueError(f"sigmas={value!r}: expected comma-separated numbers like '2e-3,1e-2,2e-2'")


#: The keys of each phase; a key may change on resume only while its phase has not started.
PHASE_KEYS: Dict[str, Tuple[str, ...]] = {
    "train": ("space", "data", "data_dir", "channels", "cells", "limit_train", "epochs", "batch_size",
              "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "augment", "seed"),
    "search": ("valid_size", "searcher", "metric", "population", "generations", "topk", "mutations",
               "crossovers", "mutate_prob", "max_params", "max_flops", "sigmas", "alpha", "gamma",
               "noise", "samples", "recal_batches"),
    "retrain": ("retrain_epochs",),
    "report": ("truth",),
}

#: Keys that describe one session, not the run: they may differ on every resume. ``device`` and
#: ``threads`` can change floating-point results in the last bits; keep them for exact resumes.
SESSION_KEYS: Tuple[str, ...] = ("device", "threads", "out", "quiet")

def load_toml(path: "os.PathLike[str] | str") -> Dict[str, Any]:
    """The key/value pairs of a TOML config file (flat; a ``[fastnas]`` table is also accepted)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {os.fspath(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {os.fspath(path)!r} is not valid TOML: {e}") from None
    if isinstance(data.get("fastnas"), dict):
        rest = {k: v for k, v in data.items() if k != "fastnas"}
        data = {**rest, **data["fastnas"]}
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)  # sections are only for grouping: [search] metric = ...
        else:
            flat[key] = value
    return flat


_GROUP_TITLES = {"train": "data, space and supernet training", "search": "search and scores",
                 "retrain": "retraining the winner", "report": "report", "session": "this session"}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        out = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{out}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps_toml(config: RunConfig, header: str = "") -> str:
    """``config`` as a flat TOML text, grouped by phase with comments; ``None`` values are left out."""
    d = config.to_dict()
    lines: List[str] = []
    if header:
        lines += [f"# {line}" if line else "#" for line in header.splitlines()] + [""]
    groups = dict(PHASE_KEYS)
    groups["session"] = SESSION_KEYS
    for group, keys in groups.items():
        lines.append(f"# -- {_GROUP_TITLES[group]}")
        for key in keys:
            if d[key] is not None:
                lines.append(f"{key} = {_toml_value(d[key])}")
        lines.append("")
    return "\n".join(lines)
