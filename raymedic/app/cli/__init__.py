"""The ``raymedic`` command line.

Each sub-command is a thin function over :mod:`raymedic.app.service`, the registry and
the gateway's HTTP API; every failure the user can fix prints ``error: ...`` with
the fix and exits 2, never a traceback.

This module holds the parser and :func:`main`; the commands live by group:
:mod:`~raymedic.app.cli.up` (up, down), :mod:`~raymedic.app.cli.status`,
:mod:`~raymedic.app.cli.operate` (pause, resume, approve, reject, mode, retrain,
rollback, promote, trial, chaos), :mod:`~raymedic.app.cli.data` (train, search, audit,
openapi), :mod:`~raymedic.app.cli.report`, :mod:`~raymedic.app.cli.bench` and
:mod:`~raymedic.app.cli.demo`; what they share is in :mod:`~raymedic.app.cli._common`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from raymedic.app.cli.bench import cmd_bench
from raymedic.app.cli.data import cmd_audit, cmd_openapi, cmd_search, cmd_train
from raymedic.app.cli.demo import cmd_demo
from raymedic.app.cli.operate import (cmd_approve, cmd_chaos, cmd_mode, cmd_pause, cmd_promote, cmd_reject,
                                      cmd_resume, cmd_retrain, cmd_rollback, cmd_trial)
from raymedic.app.cli.report import cmd_report
from raymedic.app.cli.status import cmd_status
from raymedic.app.cli.up import cmd_down, cmd_up
from raymedic.errors import RaymedicError
from raymedic.keys import (CHAOS_FAULTS, GPU_FAULT_KINDS, INFRA_BENCH_FAULTS, NODE_FAULTS, REPLICA_BENCH_FAULTS,
                           STORAGE_FAULTS)
from raymedic.logs import configure
from train_jobs.search import add_arguments as search_arguments
from train_jobs.train_flags import add_arguments as train_arguments

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    """Every sub-command with its flags; each sets ``fn``, the function :func:`main` calls.

    Every sub-command takes ``--config``. Building it imports no Ray, PyTorch or
    pyarrow (the command modules load those when they run), so ``--help`` is instant.
    """
    p = argparse.ArgumentParser(prog="raymedic", description="Self-healing ensemble serving on Ray.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        sp.add_argument("--config", help="raymedic/Serve YAML config (default: cluster/raymedic.yaml)")
        return sp

    up = add("up", cmd_up, "Start or join Ray, deploy the service, return once it answers.")
    up.add_argument("--model", help="Model(s) to serve, comma-separated, the first the default of routes without "
                    "a model (default: every model with champions in the registry, the config's first).")
    up.add_argument("--storage-path", help="Override the config's storage_path.")
    up.add_argument("--chaos", action="store_true", help="Enable the chaos admin routes.")
    up.add_argument("--port", type=int, help="HTTP port (default: the config's http_options.port).")
    up.add_argument("--ray-port", type=int, help="GCS port of a local cluster (default 6379; with --nodes a "
                    "free port).")
    up.add_argument("--dashboard-port", type=int, help="Ray dashboard port (default 8265; with --nodes a free "
                    "port).")
    up.add_argument("--nodes", type=int, help="Start a real N-node Ray cluster on this machine (a head and N-1 "
                    "workers, each its own raylet) and spread the members over it; `down` stops exactly it.")
    up.add_argument("--cpus-per-node", type=int, default=4, help="With --nodes: logical CPUs per node (default 4).")
    up.add_argument("--gpu-nodes", type=int, default=0, help="With --nodes: how many workers are GPU workers "
                    "(default 0); members with num_gpus > 0 land only there.")
    up.add_argument("--gpus-per-node", type=int, default=1, help="With --nodes: logical GPUs per GPU worker "
                    "(default 1).")
    up.add_argument("--timeout", type=float, default=300.0, help="Seconds to wait for the service.")

    add("down", cmd_down, "Delete the service and stop the local cluster `up` started.")

    st = add("status", cmd_status, "Members, versions, weights, replica states, incidents.")
    st.add_argument("--json", action="store_true", help="Print GET /v1/status as JSON.")
    st.add_argument("--url", help="Gateway URL (default: from `raymedic up`, else the config).")
    st.add_argument("--timeout", type=float, default=10.0)

    st.add_argument("--incidents", type=int, default=10, help="Incidents to list (default 10).")
    st.add_argument("--model", help="The model to show, on a service of several (default: the first of "
                    "GET /v1/models).")

    def admin(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--url", help="Gateway URL (default: from `raymedic up`, else the config).")
        sp.add_argument("--json", action="store_true", help="Print the answer as JSON.")
        sp.add_argument("--model", help="The model to act on, on a service of several (default: the first of "
                        "GET /v1/models).")
        return sp

    admin(add("pause", cmd_pause, "Pause automatic healing (detection and audit go on)."))
    admin(add("resume", cmd_resume, "Resume automatic healing."))
    ap = admin(add("approve", cmd_approve, "Approve a restart the controller proposed (approval mode)."))
    ap.add_argument("incident", help="Incident id, from `raymedic status`.")
    rj = admin(add("reject", cmd_reject, "Reject a proposed restart (approval mode)."))
    rj.add_argument("incident", help="Incident id, from `raymedic status`.")
    mo = admin(add("mode", cmd_mode, "auto: heal on its own; approve: propose restarts for an operator."))
    mo.add_argument("mode", choices=["auto", "approve"])
    rt = admin(add("retrain", cmd_retrain, "Retrain on recent labelled data now (a Ray job), gated like "
                   "an automatic retrain."))
    rt.add_argument("--reason", help="Why (recorded in the audit log and the versions' metadata).")
    rb = admin(add("rollback", cmd_rollback, "Serve the previous version again (every member, or --member)."))
    rb.add_argument("--member", action="append", help="Only this member (repeatable).")
    pr = admin(add("promote", cmd_promote, "Make any registered version of a member its champion (swapped in "
                   "place on every replica, audited)."))
    pr.add_argument("--member", required=True, help="Ensemble member.")
    pr.add_argument("--version", required=True, help="Version id (v0003) or alias (previous, challenger); the "
                    "error for an unknown one lists those there are.")
    pr.add_argument("--reason", help="Why (recorded in the audit log).")
    tr = admin(add("trial", cmd_trial, "Put a registered version (default: the member's 'challenger', e.g. "
                   "from `raymedic search`) on live trial next to its champion; promoted only if it holds up."))
    tr.add_argument("--member", required=True, help="Ensemble member.")
    tr.add_argument("--version", default="challenger", help="Version id or alias (default: challenger).")
    tr.add_argument("--mode", choices=["canary", "shadow"], help="canary: its answers are served on the "
                    "trial share; shadow: mirrored, never served (default: rollout.mode in the config).")
    ch = admin(add("chaos", cmd_chaos, "Inject a replica fault (needs chaos enabled and the admin token)."))
    ch.add_argument("fault", choices=[*CHAOS_FAULTS, *STORAGE_FAULTS, *NODE_FAULTS, "load", "clear"],
                    help="kill: SIGKILL; hang: block inference; slow: add latency; wrong: wrong answers; "
                         "error: every call raises; leak: allocate and hold memory (--mb-per-s); "
                         "gpu-fault: a GPU fault double, inference raises what torch raises (--kind); "
                         "disk-fill: write --mb MB under storage_path/chaos/disk-fill (no --member); "
                         "cpu-hog: busy processes on --node for --for seconds (no --member); "
                         "load: open-loop traffic at --rps for --for seconds, one line per second (no token); "
                         "clear: remove all injected faults (free a leak's memory, delete disk-fill files)")
    ch.add_argument("--member", help="Ensemble member to hurt.")
    ch.add_argument("--replica", help="Replica id (default: the member's first running replica).")
    ch.add_argument("--delay-ms", type=float, help="Added latency for slow.")
    ch.add_argument("--mb", type=float, help="Size for disk-fill, MB (refused above 4096 MB, or above the free "
                    "space less 512 MB / 2%% of the disk).")
    ch.add_argument("--rps", type=float, help="Rate for load, requests per second (at most 1000).")
    ch.add_argument("--for", dest="for_s", type=float, metavar="SECONDS",
                    help="How long load (at most 600) or cpu-hog (default 120, at most 600) runs, seconds.")
    ch.add_argument("--kind", choices=list(GPU_FAULT_KINDS),
                    help="gpu-fault: oom (torch.cuda.OutOfMemoryError, default), device-lost or ecc (RuntimeError "
                         "'CUDA error: ...'; the replica's GPU health reading reports it as NVML would).")
    ch.add_argument("--node", help="Node for cpu-hog: its name or a node id prefix, as `raymedic status` "
                    "shows them.")
    ch.add_argument("--procs", type=int, help="Busy processes for cpu-hog (default: the node's logical CPUs; "
                    "at most 16).")
    ch.add_argument("--mb-per-s", type=float, help="Leak rate for leak, MB per second (default 5: a limit "
                    "300 MB above the replica's memory is reached in a minute; a leak holds at most "
                    "1.5 × the member's memory_limit_mb, and never more than 2 GB).")

    oa = add("openapi", cmd_openapi, "Print the gateway's OpenAPI document (also served at GET /openapi.json).")
    oa.add_argument("--out", help="Write it to this file instead of stdout.")
    au = add("audit", cmd_audit, "The controller's audit trail (what it saw, decided and did).")
    au.add_argument("--json", action="store_true", help="One JSON object per line.")
    au.add_argument("--model", help="Model (default: the running service's).")
    au.add_argument("--kind", action="append", metavar="KIND", help="Only records of this kind or kinds starting "
                    "with it (repeatable or a comma list: --kind restart,promote; --kind detected: every detection).")
    au.add_argument("--target", action="append", metavar="TARGET", help="Only records about this target: a member, "
                    "a replica, a model, or a path of them (mlp, mlp/REPLICA; repeatable or a comma list).")
    au.add_argument("--incident", metavar="ID", help="Only records of this incident (or retrain, trial record id).")
    au.add_argument("--since", metavar="WHEN", help="Only records since then: seconds back (3600), a duration "
                    "(30m, 2h, 1d) or an ISO time (2026-11-22T08:00, local time without a zone).")
    au.add_argument("--limit", type=int, default=200, help="At most this many of those that match, the newest "
                    "(default 200).")

    rp = add("report", cmd_report, "A post-mortem of one incident or of a period: an HTML page (plots embedded, "
             "no network needed to view it) and Markdown with PNGs, read from storage (no cluster needed).")
    rp.add_argument("incident", nargs="?", help="Incident id (from `raymedic status` or `raymedic audit`); "
                    "without one, every incident since --since.")
    rp.add_argument("--since", metavar="WHEN", help="The period: seconds back (3600), a duration (30m, 2h, 1d) "
                    "or an ISO time (default 24h).")
    rp.add_argument("--out", metavar="DIR", help="Write the report into DIR/<model>-<incident or period>/ "
                    "(default: $RAYMEDIC_HOME/reports).")
    rp.add_argument("--model", help="Model (default: the running service's).")
    rp.add_argument("--margin", type=float, default=5.0, metavar="MINUTES",
                    help="Minutes of plots before and after an incident (default 5).")

    train_arguments(add("train", cmd_train, "Train every member on a table with Ray Train and register champions."))
    search_arguments(add("search", cmd_search, "Search one member's hyperparameters with Ray Tune (Optuna + "
                         "ASHA); register the best as its 'challenger', not promoted."))

    be = add("bench", cmd_bench, "Recovery and speed figures, raymedic against plain Ray Serve in the same run.")
    be.add_argument("scenario", choices=["replica-faults", "infra-faults", "saturation", "controller-step", "drift",
                                         "tensor-drift", "durability"])
    be.add_argument("--rps", type=float, default=None,
                    help="replica-faults: open-loop request rate (default 50, the rate the targets are set for; "
                         "`bench saturation` shows where each system stops keeping up on this machine). "
                         "drift: the row rate that turns rows into seconds (default 25).")
    be.add_argument("--rates", default="20,35,50,70",
                    help="saturation: comma list of request rates to step through (default 20,35,50,70).")
    be.add_argument("--seconds", type=float, default=15.0, help="saturation: load per rate (default 15 s).")
    be.add_argument("--profile", action="store_true",
                    help="saturation: also time each stage of raymedic's requests in its gateway (parse, "
                         "validate, fan-out, combine, log, telemetry, encode; gateway.profile) and print a "
                         "table per rate: µs mean/p50/p99 and share of the end-to-end latency, beside plain "
                         "Serve's latency in the same run.")
    be.add_argument("--seeds", type=int, default=None,
                    help="drift: seeds, each its own reference, no-drift control and stream per scenario "
                         "(default 30, ~1 min on 2 cores). tensor-drift: the same on 8x8 digits (default 5, "
                         "~3 min on 2 cores).")
    be.add_argument("--deadline", type=float, default=2.0, help="Client deadline in seconds (default 2).")
    be.add_argument("--fault-seconds", type=float, default=None,
                    help="Load after each injection (default 20; infra-faults 60, the leak reaching its limit "
                         "two thirds of the way in).")
    be.add_argument("--slow-ms", type=float, default=500.0, help="Latency added by the slow fault.")
    be.add_argument("--faults", default=None,
                    help=f"Comma list of faults to run (replica-faults: {','.join(REPLICA_BENCH_FAULTS)}; "
                         f"infra-faults: {','.join(INFRA_BENCH_FAULTS)}; default: all).")
    be.add_argument("--memory-limit-mb", type=float, default=None,
                    help="infra-faults: the leaking member's memory_limit_mb when the config sets none "
                         "(default 900: a few hundred MB above a replica's usual memory).")
    be.add_argument("--disk-fill-mb", type=float, default=None,
                    help="infra-faults: how much disk-fill writes under storage_path (default 1024).")
    be.add_argument("--spike-rps", type=float, default=None,
                    help="infra-faults: the spike's base rate; the spike sends 3x it for half the window "
                         "(default 55: 165 req/s overloads the fixed baseline on a 2-core machine).")
    be.add_argument("--kills", type=int, default=None,
                    help="durability: gateway replicas SIGKILLed right after a 2xx feedback, one after another "
                         "(default 5; each waits for Serve's replacement, 10-20 s on 2 cores).")
    be.add_argument("--controller-kills", type=int, default=None,
                    help="durability: controller SIGKILLs (through its failpoints) right after it decides a "
                         "restart, right after it submits a retrain and in the middle of a promotion, this "
                         "many each, before the gateway kills; duplicate actions and missing records counted "
                         "from the audit (default 3; 0 skips; 10-60 s each on 2 cores).")
    be.add_argument("--port", type=int, default=8011, help="HTTP port for the benchmark's service.")
    be.add_argument("--data", help="replica-faults, saturation: your table (Parquet or CSV) to train the config's "
                                   "model on in the bench's own registry and replay rows of (default: the "
                                   "built-in synthetic table); needs --target.")
    be.add_argument("--target", help="The label column of --data.")
    be.add_argument("--members", type=int, default=50, help="controller-step: members.")
    be.add_argument("--replicas", type=int, default=10, help="controller-step: replicas per member.")
    be.add_argument("--live", action="store_true",
                    help="drift: stream through a deployed service on an embedded cluster (HTTP, delayed "
                         "feedback, the controller's detectors and healing loop), one seed.")
    be.add_argument("--rows-per-s", type=float, default=50.0, help="drift --live: rows sent per second.")
    be.add_argument("--seed", type=int, default=7,
                    help="drift --live: the streams' seed (default 7); run several to see the spread.")
    be.add_argument("--control-rows", type=int, default=None,
                    help="drift --live: unchanged labelled rows of the no-drift control (default 3000); "
                         "tensor-drift: unchanged rows per seed (default 200000).")
    be.add_argument("--reference-rows", type=int, default=None,
                    help="drift: rows of each seed's reference, the fixed model's training set and the error "
                         "CUSUM's cross-validated baseline (default 4800: the shipped synthetic model's training "
                         "split); run a few sizes to see what the reference's own sampling noise costs.")
    be.add_argument("--live-scenarios", help="drift --live: comma list of 'mean +0.5 sd', 'mean +1 sd', 'sd x2', "
                                             "'concept 60 deg' (default: all).")
    be.add_argument("--json", action="store_true", help="Print only the JSON report.")

    de = add("demo", cmd_demo, "The main job: an embedded local cluster, training, serving, live traffic.")
    de.add_argument("--port", type=int, default=8000, help="HTTP port for the demo service.")
    de.add_argument("--requests", type=int, default=300, help="Requests of demo traffic.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the sub-command, turn a fixable error into ``error: ...`` and exit code 2.

    Logging is configured here, once per process (``$RAYMEDIC_LOG_LEVEL``, default
    WARNING). Ctrl-C exits 130, as a shell expects, without a traceback.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code: the command's own (0 on success), 2 for a
        :class:`~raymedic.errors.RaymedicError`, 130 when interrupted.
    """
    configure()
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except RaymedicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

