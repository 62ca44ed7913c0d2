"""A string-valued Enum base for raymedic's states and outcomes.

States travel as strings: in checkpoints, audit records, JSON answers, metric
labels and f-strings. ``enum.StrEnum`` (Python 3.11) keeps them the same strings
everywhere, but raymedic supports Python 3.10, where a plain ``(str, Enum)``
formats as ``Status.OPEN`` in an f-string. This base behaves like ``StrEnum``:
members compare equal to their values, and ``str()`` and ``format()`` give the value.

>>> class Color(StrEnum):
...     RED = "red"
>>> Color.RED == "red", f"{Color.RED}", Color("red") is Color.RED
(True, 'red', True)
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["StrEnum", "plain"]


class StrEnum(str, enum.Enum):
    """An Enum whose members are their string values wherever a string is expected."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def plain(value: Any) -> Any:
    """``value`` with every Enum member in it (dict keys and values, list and tuple items included)
    replaced by its value.

    Documents that leave the process that made them (checkpoints, audit records, the status answer a
    gateway or the CLI reads over Ray) hold plain strings: reading them must not need our Enum classes.

    >>> class Color(StrEnum):
    ...     RED = "red"
    >>> plain({Color.RED: [Color.RED, 1]}), type(plain(Color.RED)) is str
    ({'red': ['red', 1]}, True)
    """
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value
