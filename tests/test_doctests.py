"""Every docstring example in raymedic runs and gives the output it shows (seeded, exact)."""

from __future__ import annotations

import doctest
import importlib

import pytest

from tests.test_layering import modules

WITH_EXAMPLES = sorted(m for m, path in modules().items() if ">>> " in path.read_text()) + ["tests.virtual_time"]


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
