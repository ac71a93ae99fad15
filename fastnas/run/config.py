"""The settings of one run: :class:`RunConfig`, and reading/writing them as TOML.

Each setting is declared once (:mod:`fastnas.run.settings`): the data and run settings here, the others
derived from the component config that owns them -- :class:`fastnas.train.TrainConfig` (section
``train``), :class:`fastnas.search.SearchConfig` (``search``), :class:`fastnas.metrics.FlatnessConfig`
(``score``) -- with run defaults where a run differs from the library. A setting's name is its TOML key
(in the section's table, or flat) and, with ``_`` written as ``-``, its command-line flag
(``batch_size`` <-> ``--batch-size``); the CLI builds its flags, help and choices from :data:`SECTIONS`.
``None`` means "choose for me" and never overrides a value from another source (defaults <
``--config FILE.toml`` < flags).

Every setting belongs to a phase of a run (:data:`PHASE_KEYS`): changing it is allowed on ``--resume``
only while its phase has not started, so a resumed run can never mix settings.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from fastnas._hints import did_you_mean
from fastnas.run.settings import Section, Setting, derive_settings, flat_names

__all__ = [
    "RunConfig", "DEFAULT_METRIC", "SECTIONS", "SECTION", "SETTINGS", "METRICS", "SEARCHERS", "NOISE_MODES", "PHASE_KEYS",
    "SESSION_KEYS", "RECIPE_KEYS", "RECIPE_FALLBACK", "LEGACY_VALUES", "parse_sigmas", "load_toml", "dumps_toml",
]

DEVICES = ("auto", "cpu", "cuda")

#: The metric of ``fastnas search`` when none is given, chosen by ``fastnas bench ranking`` on the two
#: ground-truth tables in benchmarks/ranking/ (README, "Ranking quality"): Kendall tau 0.45 on
#: Fashion-MNIST (110 architectures; angle 0.37, params 0.39, the former default angle+flatness 0.32)
#: and 0.28 on digits (100; angle 0.24, params 0.16, angle+flatness 0.08).
DEFAULT_METRIC = "angle + 0.2*accuracy"


def _metrics() -> Tuple[str, ...]:
    from fastnas.metrics.scores import METRICS as presets

    return tuple(presets)


def _check_metric(text: str) -> None:
    from fastnas.metrics import Metric

    metric = Metric.parse(text)  # its ValueError names the metric and the registered parts
    if "reference" in metric.needs:
        raise ValueError(f"--metric {text!r} counts negative flips against a reference model, which a "
                         "single-architecture search does not have; use a metric without nfr (R0 is accuracy)")


def _searchers() -> List[str]:
    from fastnas.search import list_searchers

    return list_searchers()


def _spaces() -> List[str]:
    from fastnas.spaces import list_spaces

    return list_spaces()


#: Train settings a space's supernet recipe (``Space.presets(data).train``) may set, and the values a run
#: takes for a space without one (the GeNAS/DARTS recipe, at the run's higher learning rate). Their run
#: defaults are ``None``: defaults < the space's recipe < ``--config FILE.toml`` < flags.
RECIPE_FALLBACK: Dict[str, Any] = {"lr": 0.05, "lr_min": 0.001, "momentum": 0.9, "nesterov": False,
                                   "weight_decay": 3e-4, "grad_clip": 5.0}
RECIPE_KEYS: Tuple[str, ...] = tuple(RECIPE_FALLBACK)

#: Scores ``--metric`` accepts (GeNAS's names: ABS = angle, FBS = flatness, PBS = accuracy).
METRICS = _metrics()
SEARCHERS = tuple(_searchers())
NOISE_MODES = ("independent", "cumulative", "shared")


def _sections() -> Tuple[Section, ...]:
    from fastnas.metrics.flatness import FlatnessConfig
    from fastnas.spaces import DEFAULT_SPACE
    from fastnas.search import SearchConfig
    from fastnas.train import TrainConfig

    data = Section("data", "data and search space", (
        Setting("space", "str", DEFAULT_SPACE, "search space", choices=_spaces),
        Setting("data", "str", "digits", "dataset: digits, mnist, fashion-mnist, cifar10, cifar100 or a FILE.npz "
                "with arrays x, y[, x_test, y_test]"),
        Setting("data_dir", "str", None, "directory with the dataset files",
                default_text="$FASTNAS_DATA_DIR, system locations"),
        Setting("channels", "int", 16, "supernet channels (the space's C)", minimum=1),
        Setting("cells", "int", 2, "cells of the supernet, in the space's own sense (e.g. cells per stage)",
                minimum=1),
        Setting("backbone", "str", None, "backbone space (NAR): resnet20, resnet18 or FILE.py:ClassName, a residual "
                "network of yours (built with num_classes=/in_channels= where its constructor takes them)",
                default_text="resnet20"),
        Setting("granularity", "str", None, "backbone space: conv (one choice per 3x3 conv of a residual block) or "
                "block (one per residual block)", default_text="conv", choices=("conv", "block")),
        Setting("candidates", "str", None, "backbone space: candidate ops, comma-separated, from conv_3x3, conv_5x5, "
                "sep_conv_3x3, sep_conv_5x5, max_pool_3x3, avg_pool_3x3", default_text="all six"),
        Setting("max_op_params", "str", None, "backbone space: a candidate may have at most the replaced conv's "
                "parameters (original), a multiple of them (a number) or any (none)", default_text="original"),
        Setting("valid_size", "int", 256, "search-validation images used for scoring, 0 for the whole half",
                minimum=0, phase="search"),
        Setting("limit_train", "int", 0, "use only this many supernet-training images (0: all)", minimum=0,
                hidden=True),
    ))
    recipe = "the space's supernet recipe (Space.presets), else "
    train = Section("train", "supernet training", derive_settings(
        TrainConfig, phase="train", exclude=("seed",), rename={"precision": "train_precision"}, overrides={
            "epochs": {"default": 50, "help": "supernet epochs"},
            "lr": {"default": None, "help": "initial learning rate, cosine to --lr-min",
                   "default_text": recipe + f"{RECIPE_FALLBACK['lr']:g}"},
            "lr_min": {"default": None, "default_text": recipe + f"{RECIPE_FALLBACK['lr_min']:g}"},
            "momentum": {"default": None, "default_text": recipe + f"{RECIPE_FALLBACK['momentum']:g}"},
            "nesterov": {"default": None, "help": "Nesterov momentum, true/false",
                         "default_text": recipe + "false"},
            "weight_decay": {"default": None, "default_text": recipe + f"{RECIPE_FALLBACK['weight_decay']:g}"},
            "grad_clip": {"default": None, "help": "gradient-norm clip, 0 to disable",
                          "default_text": recipe + f"{RECIPE_FALLBACK['grad_clip']:g}"},
            "augment": {"default": None, "optional": True, "help": "crop-and-flip augmentation, true/false",
                        "default_text": "the dataset's; on for CIFAR"},
            "sampler": {"help": "paths per supernet step: uniform (SPOS, one architecture shared by all cells), "
                        "per-cell (RLNAS, each cell its own, all-none nodes redrawn), fair (FairNAS, every op of "
                        "every edge once per step), sandwich (a nested family's largest, smallest and 2 random "
                        "members, distilled from the largest)"},
            "precision": {"help": "supernet training precision; bf16 autocast is fast only with avx512_bf16/AMX "
                          "or on a GPU"},
            "channels_last": {"default": True, "help": "train the supernet in channels-last memory format, "
                              "true/false (measured 1.25-2.3x the default layout on CPU, 8-32 px)"},
        }), component=TrainConfig)
    search = Section("search", "search", (
        Setting("searcher", "str", "evolution", "the search algorithm; random scores population x generations "
                "samples", choices=_searchers, phase="search"),
    ) + derive_settings(SearchConfig, phase="search", exclude=("seed",), overrides={
        "population": {"default": 20},
        "generations": {"default": 10, "help": "generations, the random one included"},
        "topk": {"default": None, "default_text": "population / 4, at least 2"},
        "mutations": {"default": None, "default_text": "population / 2"},
        "crossovers": {"default": None, "default_text": "population / 2"},
        "max_params": {"default_text": "none"},
        "max_flops": {"default_text": "none"},
    }), component=SearchConfig)
    score = Section("score", "scores", (
        Setting("metric", "str", DEFAULT_METRIC, "the score to rank candidates by: a preset or a weighted "
                "sum of score parts such as 'angle + 16/sigma1*flatness'", choices=_metrics, check=_check_metric,
                phase="search"),
        Setting("gamma", "float", None, "weight in combined metrics: S + gamma/sigma1 * F, angle + gamma * "
                "accuracy", default_text="16 with flatness, as GeNAS's README; 1 for angle+accuracy",
                phase="search"),
    ) + derive_settings(FlatnessConfig, phase="search", exclude=("seed",), rename={
        "eps": "flatness_eps", "scope": "flatness_scope", "bn_mode": "recal_mode", "bn_batches": "recal_batches",
        "bn_batch_size": "recal_batch_size", "batch_size": "score_batch_size"}, overrides={
        "sigmas": {"default": None, "help": "flatness perturbation levels, positive and increasing",
                   "default_text": "the space's preset for the data, e.g. GeNAS's 2e-3,1e-2,2e-2"},
        "noise": {"default": None, "default_text": "independent; cumulative is the GeNAS code's",
                  "choices": NOISE_MODES},
        "bn_batches": {"default": None, "default_text": "14, GeNAS's ceil(850/64)",
                       "help": "BatchNorm recalibration batches per candidate before accuracy/flatness"},
        "batch_size": {"default_text": "automatic"},
    }), component=FlatnessConfig)
    retrain = Section("retrain", "retraining the winner", (
        Setting("retrain_epochs", "int", 0, "retrain the winner from scratch this many epochs and test it; "
                "0 skips", minimum=0, phase="retrain"),
    ))
    report = Section("report", "report", (
        Setting("truth", "str", None, "ground-truth CSV (architecture, accuracy columns): adds a Kendall-tau "
                "scatter plot", phase="report"),
    ))
    run = Section("run", "run", (
        Setting("device", "str", "auto", "auto | cpu | cuda | cuda:N", phase="session"),
        Setting("threads", "int", 0, "CPU threads for torch; 0 = automatic: 1 for images <= 16 px, where more "
                "threads were measured up to 30x slower on shared cores", minimum=0, phase="session"),
        Setting("seed", "int", 0, "seeds everything: weights, split, batches, sampling, search, noise",
                minimum=0, phase="train"),
        Setting("out", "str", None, "run directory", default_text="runs/<timestamp>", phase="session"),
        Setting("quiet", "bool", False, "no progress bars: log lines only", phase="session", hidden=True),
    ))
    return (data, train, search, score, retrain, report, run)


#: The sections of a run's config, in the order of ``config.toml``; each setting is declared once.
SECTIONS: Tuple[Section, ...] = _sections()
SECTION: Dict[str, Section] = {sec.name: sec for sec in SECTIONS}
SETTINGS: Dict[str, Setting] = flat_names(SECTIONS)


def _legacy_values() -> Dict[str, Any]:
    from fastnas.train.config import LATER_FIELDS

    return {s.name: LATER_FIELDS[s.target or s.name] for s in SECTION["train"].settings
            if (s.target or s.name) in LATER_FIELDS}


#: What a saved ``config.toml`` that lacks a train setting added later was trained with (fastnas 0.1
#: trained uniformly, in fp32, in the default layout), whatever a new run's default is.
LEGACY_VALUES: Dict[str, Any] = _legacy_values()

#: The keys of each phase; a key may change on resume only while its phase has not started.
PHASE_KEYS: Dict[str, Tuple[str, ...]] = {
    phase: tuple(n for n, s in SETTINGS.items() if s.phase == phase) for phase in ("train", "search", "retrain",
                                                                                     "report")}
#: Keys that describe one session, not the run: they may differ on every resume. ``device`` and
#: ``threads`` can change floating-point results in the last bits; keep them for exact resumes.
SESSION_KEYS: Tuple[str, ...] = tuple(n for n, s in SETTINGS.items() if s.phase == "session")


def _search_filled(values: Mapping[str, Any]) -> Dict[str, Any]:
    """``topk``/``mutations``/``crossovers`` decided from the population where they are None."""
    pop = values["population"]
    out = dict(values)
    for key, value in (("topk", min(pop, max(2, pop // 4))), ("mutations", pop // 2), ("crossovers", pop // 2)):
        if out.get(key) is None:
            out[key] = value
    return out


def _train_filled(values: Mapping[str, Any]) -> Dict[str, Any]:
    """The recipe settings still None (a config not yet resolved against its space) at
    :data:`RECIPE_FALLBACK`."""
    return {**values, **{k: v for k, v in RECIPE_FALLBACK.items() if values.get(k) is None}}


class RunConfig:
    """Every setting of a run, grouped in :data:`SECTIONS`; key = TOML key = flag (``_`` as ``-``).

    ``RunConfig(epochs=5, metric="angle")`` takes settings by name; ``config.epochs`` reads one;
    ``config.section("train")`` gives a section's values and :meth:`component` builds the component
    config a section feeds (``TrainConfig``, ``SearchConfig``, ``FlatnessConfig``). Immutable:
    :meth:`replace` returns a changed copy. ``None`` means "choose for me" and never overrides a value
    from another source (defaults < ``--config FILE.toml`` < flags).

    Defaults are sized for the no-argument ``fastnas search``: NAS-Bench-201 on the bundled 8x8 digits,
    finishing within minutes on two CPU cores (see the CLI's documentation for the measurements). The
    settings and their help are listed by ``fastnas search --help``.
    """

    __slots__ = ("_values",)

    def __init__(self, **settings: Any) -> None:
        values = {name: s.default for name, s in SETTINGS.items()}
        for key, value in _flatten(settings).items():
            values[_known(key)] = value
        for name, s in SETTINGS.items():
            values[name] = s.normalise(values[name])
        _validate(values)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(f"RunConfig has no setting {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("RunConfig is immutable; use config.replace(...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunConfig) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._values.items())))

    def __repr__(self) -> str:
        changed = {k: v for k, v in self._values.items() if v != SETTINGS[k].default}
        return "RunConfig(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"

    def section(self, name: str) -> Dict[str, Any]:
        """The values of section ``name`` (``data``, ``train``, ``search``, ``score``, ...)."""
        return {k: self._values[k] for k in SECTION[name].names()}

    def component(self, name: str, **fixed: Any) -> Any:
        """The component config that section ``name`` feeds, with ``fixed`` values on top (e.g. ``seed``).

        ``search`` gets its derived ``topk``/``mutations``/``crossovers`` filled from the population."""
        values = self.section(name)
        if name == "search":
            values = _search_filled(values)
        if name == "train":
            values = _train_filled(values)
        return SECTION[name].build(values, **fixed)

    def to_dict(self) -> Dict[str, Any]:
        """Plain values by setting name (``sigmas`` as a list); ``None`` kept."""
        d = dict(self._values)
        for name, s in SETTINGS.items():
            if s.kind == "floats" and d[name] is not None:
                d[name] = list(d[name])
        return d

    def to_nested(self) -> Dict[str, Dict[str, Any]]:
        """``{section: {key: value}}`` as ``config.toml`` writes it."""
        flat = self.to_dict()
        return {sec.name: {k: flat[k] for k in sec.names()} for sec in SECTIONS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Optional["RunConfig"] = None) -> "RunConfig":
        """``base`` (default: the defaults) updated with the non-``None`` values of ``d``.

        Keys may use ``-`` for ``_``; a section's table (``{"train": {"epochs": 5}}``) is read like its
        keys. Unknown keys raise ``ValueError`` naming close matches.
        """
        values = base.to_dict() if base is not None else {}
        for key, value in _flatten(d).items():
            if value is not None:
                values[_known(key)] = value
        return cls(**values)

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with ``changes`` applied (``None`` values ignored)."""
        return RunConfig.from_dict(changes, base=self)

    def resolved(self, defaults: Mapping[str, Any]) -> "RunConfig":
        """Every "choose for me" value decided (what ``config.toml`` records).

        ``defaults`` gives the values that depend on the data, the space or other layers (``augment``,
        ``sigmas``, ``gamma``, ``noise``, ``recal_batches``, the space's training recipe); they fill only
        settings that are None.
        """
        filled = {**{k: v for k, v in _search_filled(self._values).items() if k in ("topk", "mutations",
                                                                                      "crossovers")}, **defaults}
        changes = {k: v for k, v in filled.items() if self._values[_known(k)] is None and v is not None}
        return self.replace(**changes)

    def uses(self, score: str) -> bool:
        """Whether the metric includes the score part ``score`` (``accuracy``, ``angle``, ``flatness``, ...)."""
        from fastnas.metrics import Metric

        return score in Metric.parse(self.metric).parts


def _flatten(d: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in d.items():
        if key in SECTION and isinstance(value, Mapping):
            out.update(value)
        else:
            out[key] = value
    return out


def _known(key: Any) -> str:
    name = str(key).replace("-", "_")
    if name not in SETTINGS:
        hint = did_you_mean(name, list(SETTINGS), n=3)
        raise ValueError(f"unknown setting {key!r}{hint}")
    return name


def _fail(name: str, value: Any, expected: str) -> None:
    raise ValueError(f"{name.replace('_', '-')}={value!r}: expected {expected}")


def _validate(v: Dict[str, Any]) -> None:
    """Checks across settings; each component config validates its own fields (built once here)."""
    device = v["device"]
    if not (device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit())):
        _fail("device", device, "auto, cpu, cuda or cuda:N")
    if v["seed"] >= 2 ** 32:
        _fail("seed", v["seed"], "an integer in [0, 2**32)")
    if v["gamma"] is not None:  # a formula's weights are in its text: no gamma to set
        from fastnas.metrics import Metric

        Metric.parse(v["metric"]).with_gamma(v["gamma"])
    from fastnas.search import check_searcher_config

    with _setting_names("train"):
        SECTION["train"].build(_train_filled(v), seed=v["seed"])
    with _setting_names("search"):
        check_searcher_config(v["searcher"], SECTION["search"].build(_search_filled(v), seed=0))
    with _setting_names("score"):
        SECTION["score"].build(v, seed=v["seed"])


@contextlib.contextmanager
def _setting_names(section: str) -> Iterator[None]:
    """A component config's ``ValueError`` names its own fields (``FlatnessConfig``'s ``bn_batches=``, its
    ``batch_size=``); re-raised naming the run's settings (``recal_batches=``, ``score_batch_size=``)."""
    renames = {s.target: s.name for s in SECTION[section].settings if s.target}
    try:
        yield
    except ValueError as e:
        if not renames:
            raise
        text = re.sub(r"(?<![\w\-./'\"])([a-z][a-z0-9_]*)=",
                      lambda m: renames.get(m.group(1), m.group(1)) + "=", str(e))
        if text == str(e):
            raise
        raise ValueError(text) from None


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


def load_toml(path: "os.PathLike[str] | str") -> Dict[str, Any]:
    """The settings of a TOML config file: keys flat or in their section's table (``[train]``), or in a
    ``[fastnas]`` table; an unknown table, or a key in another section's table, is a ``ValueError``."""
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
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {os.fspath(path)!r} is not valid TOML: not UTF-8 text ({e})") from None
    except (RecursionError, MemoryError):  # tomllib recurses once per nested array or inline table
        raise ValueError(f"config file {os.fspath(path)!r} is not valid TOML for fastnas: its values are nested "
                         "too deeply") from None
    if isinstance(data.get("fastnas"), dict):
        rest = {k: v for k, v in data.items() if k != "fastnas"}
        data = {**rest, **data["fastnas"]}
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(value, dict):
            flat[key] = value
            continue
        if key not in SECTION:
            hint = did_you_mean(str(key), list(SECTION), n=2, joiner=" or ")
            raise ValueError(f"config file {os.fspath(path)!r}: unknown table [{key}]; expected one of "
                             f"{', '.join(SECTION)}{hint}")
        for name, item in value.items():
            setting = SETTINGS.get(str(name).replace("-", "_"))
            if setting is not None and setting.name not in SECTION[key].names():
                home = next(sec.name for sec in SECTIONS if setting.name in sec.names())
                raise ValueError(f"config file {os.fspath(path)!r}: {name} belongs in [{home}], not [{key}]")
            flat[name] = item
    return flat


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


def dumps_toml(config: RunConfig, header: str = "", notes: Optional[Mapping[str, str]] = None) -> str:
    """``config`` as TOML, one table per section (``[train]``, ...); ``None`` values are left out.
    ``notes`` adds a comment after a key's line (e.g. where its value came from)."""
    lines: List[str] = []
    notes = notes or {}
    if header:
        lines += [f"# {line}" if line else "#" for line in header.splitlines()] + [""]
    for name, values in config.to_nested().items():
        lines.append(f"[{name}]  # {SECTION[name].title}")
        for key, value in values.items():
            if value is not None:
                note = f"  # {notes[key]}" if key in notes else ""
                lines.append(f"{key} = {_toml_value(value)}{note}")
        lines.append("")
    return "\n".join(lines)
