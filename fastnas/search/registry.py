"""The searcher registry: factories ``factory(space, config, **kw) -> Searcher`` registered by name.

``config`` is a :class:`~fastnas.search.base.SearchConfig` (what a run gives any searcher), the
searcher's own config class, or None (its defaults). ``**kw`` are the searcher's own extra settings.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from fastnas._hints import did_you_mean
from fastnas.search.base import Searcher

__all__ = ["register_searcher", "create_searcher", "get_searcher", "list_searchers", "SearcherFactory"]

SearcherFactory = Callable[..., Searcher]

_SEARCHERS: Dict[str, SearcherFactory] = {}


def register_searcher(name: str) -> Callable[[SearcherFactory], SearcherFactory]:
    """Decorator registering ``factory(space, config=None, **kw) -> Searcher`` under ``name``."""
    if not (isinstance(name, str) and name):
        raise ValueError(f"name={name!r}: expected a non-empty string")

    def deco(factory: SearcherFactory) -> SearcherFactory:
        _SEARCHERS[name] = factory
        return factory

    return deco


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
