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

__all__ = ["StrEnum"]


class StrEnum(str, enum.Enum):
    """An Enum whose members are their string values wherever a string is expected."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)
