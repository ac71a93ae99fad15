"""Declaring a run's settings once: a :class:`Setting` per option, grouped in :class:`Section` s.

A section either declares its settings here (the data, the run itself) or *derives* them from the
component config that owns them (:class:`fastnas.train.TrainConfig`, the searchers' config,
:class:`fastnas.metrics.FlatnessConfig`): every field of that dataclass becomes a setting with the
same name, type and validation, its help text from the field's ``metadata["help"]`` or the class
docstring's ``Args:``/``Attributes:`` entry. A section may change a field's default for runs, give it
a "choose for me" ``None`` default, rename it for the command line, or hide it. So adding a field to a
component config adds the TOML key and the command-line flag; nothing else needs an edit.

Library code: no argparse here (the CLI builds its flags from :data:`Setting` s).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["Setting", "Section", "derive_settings", "doc_help", "flat_names", "KINDS"]

#: The kinds of values a setting holds (how the CLI parses it, how it is validated and written).
KINDS = ("int", "float", "bool", "str", "floats")


@dataclass(frozen=True)
class Setting:
    """One option of a run: a TOML key and (with ``_`` as ``-``) a command-line flag.

    Attributes:
        name: the key (``batch_size``).
        kind: one of :data:`KINDS`.
        default: the run's default; ``None`` means "choose for me" (the run resolves it).
        help: one-line help text.
        default_text: what the help says the default is when that is not just ``default``.
        optional: ``None`` is a valid value.
        minimum: smallest allowed value of an ``int`` setting (checked here).
        choices: the allowed values, or a function returning them (a registry's list).
        phase: the phase of a run this setting belongs to (``train``, ``search``, ``retrain``,
            ``report``) or ``session`` (may change on every resume).
        hidden: not shown in ``--help`` (tests and smoke runs).
        target: the field name in the component config (default: ``name``).
        check: ``check(value)`` raises ``ValueError`` for a value the owning layer rejects (e.g. a metric
            formula that does not parse); ``choices`` then only list examples in the help.
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    default_text: Optional[str] = None
    optional: bool = False
    minimum: Optional[int] = None
    choices: Any = None
    phase: str = "train"
    hidden: bool = False
    target: Optional[str] = None
    check: Any = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def choice_list(self) -> Optional[List[str]]:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def normalise(self, value: Any) -> Any:
        """The canonical stored value (``1`` -> ``1.0`` for floats, sigmas as a tuple); validates kind,
        range and choices. ``ValueError`` names the setting, the value and what was expected."""
        key = self.name.replace("_", "-")
        if value is None:
            if self.optional or self.default is None:
                return None
            raise ValueError(f"{key}=None: expected a value")
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or (
                    self.minimum is not None and value < self.minimum):
                bound = f" >= {self.minimum}" if self.minimum is not None else ""
                raise ValueError(f"{key}={value!r}: expected an integer{bound}")
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{key}={value!r}: expected a finite number")
            value = float(value)
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{key}={value!r}: expected true or false")
        elif self.kind == "str":
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key}={value!r}: expected a non-empty string")
        elif self.kind == "floats":
            from fastnas.run.config import parse_sigmas  # the one parser of level lists

            value = parse_sigmas(value)
        if self.check is not None:
            self.check(value)
            return value
        options = self.choice_list()
        if options is not None and value not in options:
            from fastnas._hints import did_you_mean

            hint = did_you_mean(str(value), options, n=2, joiner=" or ")
            raise ValueError(f"{key}={value!r} is not known; expected one of {', '.join(options)}{hint}")
        return value


@dataclass(frozen=True)
class Section:
    """A group of settings: a TOML table ``[name]`` and a group of flags titled ``title``.

    ``component`` is the config class the section's settings feed (None for run-only sections);
    :meth:`build` makes it from the section's values.
    """

    name: str
    title: str
    settings: Tuple[Setting, ...]
    component: Optional[type] = None

    def names(self) -> List[str]:
        return [s.name for s in self.settings]

    def build(self, values: Mapping[str, Any], **fixed: Any) -> Any:
        """The component config of ``values`` (settings by name; ``None`` keeps the component's default),
        with ``fixed`` (e.g. the run's seed) on top."""
        if self.component is None:
            raise TypeError(f"section {self.name!r} has no component config")
        fields = {f.name for f in dataclasses.fields(self.component)}
        kwargs = {}
        for s in self.settings:
            target = s.target or s.name
            if target in fields and values.get(s.name) is not None:
                kwargs[target] = values[s.name]
        kwargs.update({k: v for k, v in fixed.items() if v is not None})
        return self.component(**kwargs)


_ARG = re.compile(r"^(\s+)(\w+(?:,\s*\w+)*)(?:\s*\([^)]*\))?:\s*(.*)$")


def doc_help(cls: type) -> Dict[str, str]:
    """``{field: first sentence}`` from the ``Args:``/``Attributes:`` block of ``cls``'s docstring."""
    out: Dict[str, str] = {}
    doc = cls.__doc__ or ""
    in_block, indent, current = False, None, None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Attributes:") or stripped.startswith("Attributes ("):
            in_block, indent, current = True, None, None
            continue
        if not in_block:
            continue
        if not stripped:
            current = None
            continue
        m = _ARG.match(line)
        if m and (indent is None or len(m.group(1)) == indent):
            indent = len(m.group(1))
            for name in m.group(2).split(","):
                out[name.strip()] = m.group(3).strip()
            current = m.group(2)
        elif current is not None and indent is not None and len(line) - len(line.lstrip()) > indent:
            out[current] = (out[current] + " " + stripped).strip()
        elif indent is not None and len(line) - len(line.lstrip()) < indent:
            in_block = False
    return out


def _kind(annotation: Any) -> Tuple[str, bool]:
    """(kind, optional) of a dataclass field annotation (strings, as ``from __future__ import annotations``
    leaves them, or types)."""
    text = annotation if isinstance(annotation, str) else (
        annotation.__name__ if isinstance(annotation, type) else str(annotation))
    text = text.replace("typing.", "")
    optional = "Optional[" in text or "None" in text
    if "Tuple[float" in text or "tuple[float" in text or "Sequence[float" in text:
        return "floats", optional
    for kind in ("bool", "int", "float", "str"):
        if re.search(rf"\b{kind}\b", text):
            return kind, optional
    raise TypeError(f"cannot derive a setting from a field annotated {annotation!r}")


def derive_settings(component: type, *, phase: str, exclude: Sequence[str] = (),
                    overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
                    rename: Optional[Mapping[str, str]] = None) -> Tuple[Setting, ...]:
    """One :class:`Setting` per field of the dataclass ``component`` (in field order).

    Args:
        component: the config dataclass that owns the fields.
        phase: the run phase they belong to.
        exclude: fields the run sets itself (e.g. ``seed``: derived from the run's seed).
        overrides: per field, :class:`Setting` attributes to change (``default``, ``help``,
            ``default_text``, ``optional``, ``hidden``, ``choices``, ``minimum``).
        rename: field -> setting name, where the run's word differs (``bn_batches`` -> ``recal_batches``).
    """
    overrides = dict(overrides or {})
    rename = dict(rename or {})
    helps = doc_help(component)
    hints = typing.get_type_hints(component) if not isinstance(component, str) else {}
    out: List[Setting] = []
    for f in dataclasses.fields(component):
        if f.name in exclude:
            continue
        kind, optional = _kind(hints.get(f.name, f.type))
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple) and kind == "floats":
            default = tuple(default)
        spec: Dict[str, Any] = dict(name=rename.get(f.name, f.name), kind=kind, default=default,
                                    help=f.metadata.get("help", helps.get(f.name, "")), optional=optional,
                                    choices=f.metadata.get("choices"), phase=phase,
                                    target=f.name if f.name in rename else None)
        spec.update(overrides.pop(f.name, {}))
        if spec["default"] is None:
            spec["optional"] = True
        out.append(Setting(**spec))
    if overrides:
        raise TypeError(f"overrides for fields {sorted(overrides)} that {component.__name__} does not have")
    return tuple(out)


def flat_names(sections: Sequence[Section]) -> Dict[str, Setting]:
    """``{name: Setting}`` over all sections; a name may appear in one section only."""
    out: Dict[str, Setting] = {}
    for sec in sections:
        for s in sec.settings:
            if s.name in out:
                raise TypeError(f"setting {s.name!r} is declared in two sections")
            out[s.name] = s
    return out

