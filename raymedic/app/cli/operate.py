"""The operator's controls: pause/resume, approval mode, retrain, rollback, promote, trial and chaos.

Each is one authenticated call to the gateway's ``/v1/admin/...`` routes
(:func:`raymedic.app.cli._common.admin`), printed as JSON with ``--json`` or as one
line that says what happens next.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket

from raymedic.app.cli._common import admin
from raymedic.app.cli.load import cmd_load
from raymedic.errors import RaymedicError

__all__ = ["cmd_pause", "cmd_resume", "cmd_approve", "cmd_reject", "cmd_mode", "cmd_retrain", "cmd_rollback",
           "cmd_promote", "cmd_trial", "cmd_chaos"]


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause automatic healing: the controller keeps detecting and auditing but takes no action.

    For maintenance or an investigation, when a restart would get in the way.
    """
    out = admin(args, "pause")
    print(json.dumps(out) if args.json else "controller paused: it detects and records, but takes no action")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve a restart the controller proposed in approval mode; it runs on the next step."""
    out = admin(args, "approve", {"incident": args.incident})
    print(json.dumps(out) if args.json else f"{args.incident}: approved; the restart runs on the next step")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    """Reject a proposed restart; the replica is no longer avoided."""
    out = admin(args, "reject", {"incident": args.incident})
    print(json.dumps(out) if args.json else f"{args.incident}: rejected; the replica is no longer avoided")
    return 0


def cmd_mode(args: argparse.Namespace) -> int:
    """Switch between healing on its own (``auto``) and proposing restarts for an operator (``approve``)."""
    out = admin(args, "mode", {"mode": args.mode})
    print(json.dumps(out) if args.json else
          {"auto": "controller heals on its own", "approve": "controller proposes restarts; approve them with "
           "`raymedic approve ID`"}[args.mode])
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    """Ask the controller for a retrain on recent labels now, gated like an automatic one.

    The retrain runs as a Ray job the controller submits, so this returns at once.
    """
    out = admin(args, "retrain", {"reason": args.reason or ""})
    print(json.dumps(out) if args.json else
          "retrain requested: the controller submits a Ray job (see the dashboard's Jobs view), gates the "
          "challengers and promotes those that pass; follow it with `raymedic status`")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Serve the previous version again (every member, or ``--member``), swapped in place."""
    out = admin(args, "rollback", {"members": args.member} if args.member else {})
    print(json.dumps(out) if args.json else
          "rolling back: " + ", ".join(f"{m} → {v}" for m, v in out["champion_now"].items())
          + " (every replica swaps in place; `raymedic status` shows the versions)")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Make any registered version of a member its champion, swapped in place on every replica.

    The operator's counterpart of the controller's own promotions (no live trial, no
    probation: the operator chose it) and of ``raymedic rollback`` (which can only go
    one step back); audited as ``promote`` with who asked, why and the version replaced.
    """
    out = admin(args, "promote", {"member": args.member, "version": args.version, "reason": args.reason or "",
                                  "by": _who()})
    print(json.dumps(out) if args.json else
          f"promoting {out['member']}: {out['previous']} → {out['version']} (every replica swaps in place; "
          "`raymedic status` shows the versions, `raymedic rollback --member "
          f"{out['member']}` goes back)")
    return 0


def _who() -> str:
    """The operator as the audit names them: this user at this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def cmd_trial(args: argparse.Namespace) -> int:
    """Put a registered version on live trial next to its champion (canary or shadow).

    It is promoted only if it holds up on labelled traffic, so a searched
    ``challenger`` reaches users without a blind switch.
    """
    out = admin(args, "trial", {"member": args.member, "version": args.version,
                                **({"mode": args.mode} if args.mode else {})})
    print(json.dumps(out) if args.json else
          f"trial {out['trial']}: {out['member']} {out['version']} now sees {out['share']:.0%} of requests "
          f"next to the champion ({out['mode']}); it is promoted if it holds up on labelled traffic, dropped "
          "otherwise. Follow it with `raymedic status`; `raymedic rollback` ends it")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume automatic healing after ``raymedic pause``."""
    out = admin(args, "resume")
    print(json.dumps(out) if args.json else "controller resumed")
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    """Inject a replica fault (kill, hang, slow, wrong, error, leak, gpu-fault), fill the disk, hog a node's CPU, send a load spike
    (``load``: :mod:`raymedic.app.cli.load`), or clear every injected fault.

    To watch the healing loop work on demand; the gateway offers these routes only
    when chaos is enabled.

    Raises:
        RaymedicError: A flag the fault needs is missing, chaos is off, or the call failed.
    """
    if args.fault == "load":  # client-side traffic, not a fault in the service: no admin route
        return cmd_load(args)
    if args.fault == "clear":
        out = admin(args, "chaos/clear")
    elif args.fault == "disk-fill":
        if getattr(args, "mb", None) is None:
            raise RaymedicError("disk-fill needs --mb N (e.g. --mb 500): how many MB to write under storage_path")
        out = admin(args, "chaos", {"fault": "disk-fill", "mb": args.mb})
    elif args.fault == "cpu-hog":
        if not getattr(args, "node", None):
            raise RaymedicError("cpu-hog needs --node NODE: a node name or node id prefix (see `raymedic status`)")
        body = {"fault": "cpu-hog", "node": args.node}
        if getattr(args, "procs", None) is not None:
            body["procs"] = args.procs
        if getattr(args, "for_s", None) is not None:
            body["for_s"] = args.for_s
        out = admin(args, "chaos", body)
    else:
        if args.member is None:
            raise RaymedicError("--member is required: which ensemble member to hurt (see `raymedic status`)")
        if args.fault == "slow" and args.delay_ms is None:
            raise RaymedicError("slow needs --delay-ms N (e.g. --delay-ms 500)")
        body = {"fault": args.fault, "member": args.member, "replica": args.replica, "delay_ms": args.delay_ms}
        if getattr(args, "mb_per_s", None) is not None:
            body["mb_per_s"] = args.mb_per_s
        if args.fault == "gpu-fault":
            body["kind"] = getattr(args, "kind", None) or "oom"
        out = admin(args, "chaos", body)
    if args.json:
        print(json.dumps(out))
    elif args.fault == "clear":
        print(f"cleared faults on {len(out['cleared'])} replica(s)"
              + (f", removed {len(out['disk_fill_files'])} disk-fill file(s)" if out.get("disk_fill_files") else "")
              + (f", stopped {len(out['cpu_hogs'])} cpu hog(s)" if out.get("cpu_hogs") else ""))
    elif args.fault == "cpu-hog":
        print(f"started {out['procs']} busy process(es) on node {out['node']} for {out['for_s']:g} s; watch the "
              "node with `raymedic status` (`raymedic chaos clear` stops them)")
    elif args.fault == "disk-fill":
        print(f"wrote {out['mb']:g} MB to {out['path']} ({out['free_mb_after']:.0f} MB free now); "
              "watch the disk with `raymedic status`")
    else:
        kind = f" ({out['kind']})" if out.get("kind") else ""
        print(f"injected {out['fault']}{kind} into {out['member']}/{out['replica']}; watch it heal with "
              "`raymedic status`")
    return 0
