"""The searcher registry: factories ``factory(space, config, **kw) -> Searcher`` registered by name.

``config`` is a :class:`~fastnas.search.base.SearchConfig` (what a run gives any searcher), the
searcher's own config class, or None (its defaults). ``**kw`` are the searcher's own extra settings.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from fastnas._hints import did_you_mean
from fastnas.search.base import Searcher

__all__ = ["register_searcher", "create_searcher", "get_searcher", "list_searchers", "check_searcher_config",
           "check_searcher_space", "SearcherFactory"]

SearcherFactory = Callable[..., Searcher]

_SEARCHERS: Dict[str, SearcherFactory] = {}
_CHECKS: Dict[str, Callable[[Any], Any]] = {}
_SPACE_CHECKS: Dict[str, Callable[[Any], Any]] = {}


def register_searcher(name: str, *, check: Optional[Callable[[Any], Any]] = None,
                      space_check: Optional[Callable[[Any], Any]] = None
                      ) -> Callable[[SearcherFactory], SearcherFactory]:
    """Decorator registering ``factory(space, config=None, **kw) -> Searcher`` under ``name``.

    ``check(search_config)`` raises ``ValueError`` for settings the searcher cannot run with (e.g.
    evolution's ``topk > population``), and ``space_check(space)`` for a space it cannot search (the ENAS
    controller needs ``space.choices()``), so a run can refuse them before it trains anything."""
    if not (isinstance(name, str) and name):
        raise ValueError(f"name={name!r}: expected a non-empty string")

    def deco(factory: SearcherFactory) -> SearcherFactory:
        _SEARCHERS[name] = factory
        if check is not None:
            _CHECKS[name] = check
        if space_check is not None:
            _SPACE_CHECKS[name] = space_check
        return factory

    return deco


def check_searcher_config(name: str, config: Any) -> None:
    """Validates ``config`` (a :class:`~fastnas.search.base.SearchConfig`) for searcher ``name`` without a
    space; ``ValueError`` names the setting."""
    get_searcher(name)
    check = _CHECKS.get(name)
    if check is not None:
        check(config)


def check_searcher_space(name: str, space: Any) -> None:
    """``ValueError`` if searcher ``name`` cannot search ``space`` (before anything is trained)."""
    get_searcher(name)
    check = _SPACE_CHECKS.get(name)
    if check is not None:
        check(space)


def list_searchers() -> List[str]:
    """The registered names, sorted."""
    return sorted(_SEARCHERS)


def get_searcher(name: str) -> SearcherFactory:
    """The factory registered under ``name`` (``ValueError`` with close matches if unknown)."""
    if name not in _SEARCHERS:
        hint = did_you_mean(name, list(_SEARCHERS), n=3)
        raise ValueError(f"searcher={name!r} is not a known searcher; expected one of "
                         f"{list_searchers()}{hint}")
    return _SEARCHERS[name]


def create_searcher(name: str, space: Any, config: Any = None, **kwargs: Any) -> Searcher:
    """A new searcher ``name`` over ``space``: ``get_searcher(name)(space, config, **kwargs)``.

    Raises:
        ValueError: ``name`` is unknown (the message lists close matches) or a setting is invalid.
        TypeError: the factory did not return a :class:`~fastnas.search.base.Searcher`.
    """
    searcher = get_searcher(name)(space, config, **kwargs)
    if not isinstance(searcher, Searcher):
        raise TypeError(f"searcher factory {name!r} returned a {type(searcher).__name__}: expected a Searcher "
                        "(ask/tell/done/state_dict/load_state_dict/result)")
    return searcher
