"""How every benchmark reports: one JSON encoding and the raymedic-against-plain-Serve table cells.

Every bench prints its figures twice, as a table for people and as JSON for the
record; both come from here, so the benches agree on how a missing figure, a
ratio and a non-JSON value (a path, a timestamp) look.

>>> ratio(3.0, 2.0), ratio(None, 2.0), ratio(0, 0), ratio(1, 0)
('1.50×', '-', '=', '∞')
>>> versus(2.0, 3.0)
'         2.0        3.0           1.50×'
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PLAIN_SERVE", "RAYMEDIC", "SYSTEMS", "VERSUS_HEADER", "dumps", "ratio", "shown", "versus"]

PLAIN_SERVE = "plain Serve"
RAYMEDIC = "raymedic"
SYSTEMS = (PLAIN_SERVE, RAYMEDIC)
"""The two systems under test, the baseline first: each bench runs them in this order, and the
ratio column is raymedic / plain Serve."""

VERSUS_HEADER = f"{PLAIN_SERVE:>12} {RAYMEDIC:>10} {'raymedic/plain':>15}"
"""The header of the three columns :func:`versus` fills."""


def dumps(report: dict[str, Any]) -> str:
    """A benchmark report as indented JSON; values JSON has no type for are written as ``str``.

    A report is for the record: it must never fail to print over a value such as a
    path in its settings.
    """
    return json.dumps(report, indent=2, default=str)


def ratio(a: Any, b: Any) -> str:
    """``a / b`` as ``"1.50×"``; ``-`` when either is missing, ``=`` for 0/0, ``∞`` for a/0.

    Args:
        a: raymedic's figure.
        b: plain Serve's figure for the same row.
    """
    if a is None or b is None:
        return "-"
    if b == 0:
        return "=" if a == 0 else "∞"
    return f"{a / b:.2f}×"


def shown(value: Any, missing: str = "-") -> str:
    """A figure as a table shows it: ``missing`` where there is none (``never`` for an event that
    did not happen, ``-`` for a figure that does not apply)."""
    return missing if value is None else str(value)


def versus(plain: Any, ours: Any, *, missing: str = "-") -> str:
    """The three columns under :data:`VERSUS_HEADER`: plain Serve's figure, raymedic's and their ratio.

    Args:
        plain: plain Serve's figure (None: none).
        ours: raymedic's figure (None: none).
        missing: What a missing figure shows as (see :func:`shown`).
    """
    return f"{shown(plain, missing):>12} {shown(ours, missing):>10} {ratio(ours, plain):>15}"
