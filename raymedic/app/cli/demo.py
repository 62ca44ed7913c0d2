"""``raymedic demo``: the whole story on an embedded cluster (see :mod:`raymedic.app.demo`)."""

from __future__ import annotations

import argparse

from raymedic.app.cli._common import progress

__all__ = ["cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    """Train, serve, drive traffic, break replicas and shift the inputs; print what was measured.

    Returns:
        0 when every request succeeded and every injected fault healed, else 1.
    """
    # lazy: imports NumPy and Ray; keeps `raymedic --help` fast
    from raymedic.app.demo import run_demo

    return run_demo(config_path=args.config, port=args.port, requests=args.requests, progress=progress)
