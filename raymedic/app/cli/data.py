"""Commands about models and records: ``train``, ``search``, ``audit`` and ``openapi``.

``train`` and ``search`` run on the cluster ``raymedic up`` started when it runs
(else on an embedded one for the command's lifetime); bad flags and unusable
tables fail before Ray starts. ``audit`` reads the controller's append-only log
from storage and ``openapi`` builds the gateway's document, neither needs a
running service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from cluster.connect import connect_or_start, use_token_auth
from cluster.head import ray_alive
from cluster.runstate import read_run_state
from controllers.audit_query import kinds_in, parse_query, select
from raymedic.app.cli._common import config_from, progress
from raymedic.config import load_config
from raymedic.errors import RaymedicError
from train_jobs.search import format_report, report_json as search_report_json, resolve_search_inputs, search_member

__all__ = ["cmd_train", "cmd_search", "cmd_audit", "cmd_openapi"]


def _use_running_cluster() -> None:
    """Point RAY_ADDRESS at the cluster `raymedic up` started, if it runs, so work goes there."""
    state = read_run_state()
    if not os.environ.get("RAY_ADDRESS") and state and ray_alive(state.ray_address):
        os.environ["RAY_ADDRESS"] = state.ray_address
        if state.started_cluster:
            use_token_auth()


def cmd_train(args: argparse.Namespace) -> int:
    """Train every member (or ``--members``) on a table with Ray Train and register the versions.

    The new versions become champions unless ``--no-promote``; ``raymedic up``
    then serves them. A table that cannot be trained on fails with the fix
    before any cluster starts.

    Returns:
        0 once every member is registered.

    Raises:
        RaymedicError: Bad flags, an unusable table, or a failed Ray Train run.
    """
    # lazy: imports PyTorch (seconds); keeps `raymedic --help` fast
    from train_jobs.train import report_json, resolve_cli_inputs, train_ensemble

    config, table, target, model = resolve_cli_inputs(args)
    _use_running_cluster()  # train on the running cluster
    out = (lambda s: print(s, file=sys.stderr)) if args.json else progress
    # The application's runtime_env: the Ray Train workers import a member's own module from it
    with connect_or_start(log_to_driver=not args.json, runtime_env=load_config(args.config).runtime_env):
        report = train_ensemble(config, table, target=target, model=model, members=args.members,
                                promote=not args.no_promote, progress=out)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        progress(f"trained {len(report.versions)} member(s) of {report.model!r} in {report.wall_s:.1f} s; "
                 f"serve them with `raymedic up --model {report.model}`")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Search one member's hyperparameters with Ray Tune; register the best as its ``challenger``.

    Never promoted: ``raymedic trial`` puts it next to the champion on live traffic.

    Returns:
        0 once the best trial is registered.

    Raises:
        RaymedicError: Bad flags (before Ray starts), an unusable table, or no usable trial.
    """
    config, table, target, model = resolve_search_inputs(args)  # bad flags fail here, before Ray starts
    _use_running_cluster()
    out = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else progress
    # trials' own output would bury the progress lines; the trials get the application's runtime_env
    with connect_or_start(log_to_driver=False, runtime_env=load_config(args.config).runtime_env):
        report = search_member(config, table, target=target, model=model, member=args.member,
                               num_samples=args.trials, max_epochs=args.max_epochs, progress=out)
    print(json.dumps(search_report_json(report), indent=2) if args.json else format_report(report))
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    """The gateway's OpenAPI document (V1 and V2 routes), without a running service.

    Raises:
        RaymedicError: ``--out`` cannot be written.
    """
    # lazy: imports Ray Serve and FastAPI; keeps `raymedic --help` fast
    from serve_apps.gateway import api

    text = json.dumps(api.openapi(), indent=2)
    if args.out:
        try:
            Path(args.out).write_text(text + "\n")
        except OSError as exc:
            raise RaymedicError(f"cannot write {args.out!r}: {exc.strerror}; pass --out with a writable path") from None
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Print the controller's audit trail: what it saw, decided and did, oldest first.

    Read from storage, not from the service, so the trail of a service that is down
    (or was never up on this machine) can still be read.

    ``--kind``, ``--target``, ``--incident``, ``--since`` and ``--limit`` narrow it
    (:mod:`controllers.audit_query`); a bad value is an error naming the forms it takes.

    Returns:
        0, also when there are no records yet or none match.

    Raises:
        RaymedicError: A filter's value is unusable.
    """
    # lazy: both import pyarrow (storage); keeps `raymedic --help` fast
    from controllers.audit import read_audit
    from raymedic.storage import Storage

    query = parse_query(kinds=args.kind, targets=args.target, incident=args.incident, since=args.since,
                        limit=args.limit, now=time.time())  # a bad flag fails before storage is read
    state = run_state_or_config(args)
    trail = read_audit(Storage(state["storage_path"]), state["model"], since=query.since)
    records = select(trail, query)
    for r in records:
        if args.json:
            print(json.dumps(r, default=str))
        else:
            when = time.strftime("%H:%M:%S", time.localtime(r["ts"])) + f".{int(r['ts'] % 1 * 1000):03d}"
            ev = json.dumps(r.get("evidence"), default=str)
            print(f"{when}  {r['kind']:<18} {r['target']:<28} {r.get('action', ''):<10} "
                  f"{r.get('outcome', '')}  {ev[:120]}")
    if not records and not args.json:
        if query.filtered and trail:
            print(f"no audit records match ({len(trail)} in the trail; kinds there: {', '.join(kinds_in(trail))})")
        else:
            print("no audit records yet")
    return 0


def run_state_or_config(args: argparse.Namespace) -> dict[str, str]:
    """Storage and model of the running service, unless ``--config`` names another."""
    state = read_run_state()
    if state and not args.config:
        return {"storage_path": state.storage_path, "model": args.model or state.model}
    _, cfg = config_from(args)
    return {"storage_path": cfg.storage_path, "model": args.model or cfg.model}
