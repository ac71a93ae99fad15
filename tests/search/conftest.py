"""Fixtures: toy spaces for the search tests."""

from __future__ import annotations

import pytest

from _toy_space import GeneSpace


@pytest.fixture
def toy_space() -> GeneSpace:
    return GeneSpace(6, 5)


@pytest.fixture
def tiny_space() -> GeneSpace:
    return GeneSpace(2, 2)
