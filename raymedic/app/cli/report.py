"""``raymedic report``: a post-mortem page (HTML, Markdown and PNGs) of one incident or of a period."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cluster.runstate import raymedic_home
from controllers.audit_query import parse_since
from raymedic.app.cli.data import run_state_or_config
from raymedic.errors import RaymedicError

__all__ = ["cmd_report", "default_out_dir"]


def default_out_dir() -> Path:
    """Where reports go without ``--out``: beside the run file, not in the working directory."""
    return raymedic_home() / "reports"


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report of ``INCIDENT_ID``, or of every incident ``--since`` (default 24h), and print its paths.

    Read from storage (the audit and the controller's series), so it needs no cluster:
    it works on a running service and after ``raymedic down``.

    Raises:
        RaymedicError: Both an incident and --since, a bad --since or --margin, no audit, an unknown incident
            (the message lists those there are) or a period without one.
    """
    # lazy: storage and the report import pyarrow and matplotlib; keeps `raymedic --help` fast
    from raymedic.app.report import build_report
    from raymedic.storage import Storage

    if args.incident and args.since:
        raise RaymedicError("give an incident id or --since, not both: `raymedic report inc-000003` reports one "
                            "incident, `raymedic report --since 24h` every incident of the period")
    if args.margin <= 0:
        raise RaymedicError(f"--margin {args.margin:g} shows nothing around the incident: give minutes > 0 "
                            "(default 5)")
    now = time.time()
    since = parse_since(args.since or "24h", now=now) if not args.incident else None
    state = run_state_or_config(args)
    files = build_report(Storage(state["storage_path"]), state["model"], out_dir=args.out or default_out_dir(),
                         incident=args.incident, since=since, now=now, margin_s=args.margin * 60.0)
    print(f"report: {files.html}")
    print(f"markdown: {files.markdown} ({len(files.images)} image(s) beside it)")
    return 0
