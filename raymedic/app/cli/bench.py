"""``raymedic bench``: pick the scenario, check its flags, run it, print the table or the JSON.

The scenarios themselves live in :mod:`raymedic.bench`; each is imported only when
it runs (they load NumPy and SciPy, most of them Ray), so ``raymedic --help`` stays
instant. With ``--json`` stdout carries the report alone: progress lines, and
whatever Ray's own processes print meanwhile, go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, Callable, Iterator

from raymedic.app.cli._common import progress
from raymedic.bench.report import dumps
from raymedic.errors import RaymedicError
from raymedic.keys import INFRA_BENCH_FAULTS, REPLICA_BENCH_FAULTS

__all__ = ["cmd_bench"]

MAX_CONTROLLER_KILLS = 10
"""Most controller kills per point: each after-detect kill is a replica restart, and the controller allows
``controller.max_restarts`` (10) per ``restart_window_s``; more would measure the cap, not the kill."""


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Ray's own workers print notices to this process's stdout (e.g. while Serve shuts down);
    keep stdout for a JSON report alone by pointing fd 1 at stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _to_stderr(msg: str) -> None:
    """Progress while stdout carries a JSON report."""
    print(msg, file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run one benchmark scenario and print its figures (a table, or ``--json``).

    ``replica-faults`` and ``saturation`` measure raymedic against plain Ray Serve in
    the same run on an embedded cluster; ``controller-step``, ``drift`` and
    ``tensor-drift`` are pure code; ``drift --live`` streams through a deployed service; ``durability``
    SIGKILLs the controller at its three kill points (counting duplicate actions and missing audit records) and
    gateway replicas right after a 2xx feedback (counting what the logs kept). Flags are checked
    before anything starts.

    Returns:
        0 once the figures are printed.

    Raises:
        RaymedicError: A flag is out of range; the message gives a valid example.
    """
    if args.rps is not None and not args.rps > 0:
        raise RaymedicError(f"--rps {args.rps:g}: give a positive rate, e.g. 50")
    _bench_table(args)  # a --data/--target mistake is refused before anything starts
    if getattr(args, "profile", False) and args.scenario != "saturation":
        raise RaymedicError(f"--profile times raymedic's request stages under bench saturation's load; bench "
                            f"{args.scenario} does not take it: raymedic bench saturation --profile")
    if args.scenario == "drift" and args.live:  # the same kind of streams through a deployed service
        return _live_drift(args)
    if args.scenario == "drift":  # pure NumPy/SciPy: no cluster, no Serve
        return _drift(args)
    if args.scenario == "tensor-drift":  # pure NumPy/SciPy on scikit-learn's digits
        return _tensor_drift(args)
    if args.scenario == "saturation":
        return _saturation(args)
    if args.scenario == "controller-step":
        return _controller_step(args)
    if args.scenario == "infra-faults":
        return _infra_faults(args)
    if args.scenario == "durability":
        return _durability(args)
    return _replica_faults(args)


def _live_drift(args: argparse.Namespace) -> int:
    # lazy: imports Ray and NumPy; keeps `raymedic --help` fast
    from raymedic.bench import live

    names = tuple(n.strip() for n in args.live_scenarios.split(",")) if args.live_scenarios else \
        live.LiveDriftSettings().scenarios
    settings = live.LiveDriftSettings(rows_per_s=args.rows_per_s, scenarios=names,
                                      control_rows=3000 if args.control_rows is None else args.control_rows,
                                      seed=args.seed)
    if args.json:
        with _stdout_to_stderr():
            report = live.run_live_drift(config_path=args.config, port=args.port, settings=settings,
                                         progress=_to_stderr)
        print(dumps(report))
    else:
        report = live.run_live_drift(config_path=args.config, port=args.port, settings=settings, progress=progress)
        print(live.format_live_table(report))
    return 0


def _drift(args: argparse.Namespace) -> int:
    # lazy: imports NumPy and SciPy; keeps `raymedic --help` fast
    from raymedic.bench import drift

    sizes = {} if args.reference_rows is None else {"reference_rows": args.reference_rows}
    settings = drift.DriftBenchSettings(seeds=30 if args.seeds is None else args.seeds, rows_per_s=args.rps or 25.0,
                                        **sizes)
    report = drift.run_drift_bench(settings, progress=_to_stderr if args.json else progress)
    print(dumps(report) if args.json else drift.format_table(report))
    return 0


def _tensor_drift(args: argparse.Namespace) -> int:
    # lazy: imports NumPy, SciPy and scikit-learn; keeps `raymedic --help` fast
    from raymedic.bench import tensor_drift

    defaults = tensor_drift.TensorBenchSettings()
    settings = tensor_drift.TensorBenchSettings(
        seeds=defaults.seeds if args.seeds is None else args.seeds,
        control_rows=defaults.control_rows if args.control_rows is None else args.control_rows)
    report = tensor_drift.run_tensor_drift_bench(settings, progress=_to_stderr if args.json else progress)
    print(dumps(report) if args.json else tensor_drift.format_table(report))
    return 0


def _saturation(args: argparse.Namespace) -> int:
    try:
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        rates = []
    if not rates or any(r <= 0 for r in rates):
        raise RaymedicError(f"--rates {args.rates!r}: give a comma list of positive request rates, e.g. 20,35,50")
    # lazy: imports Ray and NumPy; keeps `raymedic --help` fast
    from raymedic.bench import saturation

    def run(report_progress: saturation.Progress) -> dict:
        return saturation.run_saturation(config_path=args.config, port=args.port, rates=rates,
                                         duration_s=args.seconds, deadline_s=args.deadline,
                                         progress=report_progress, data=_bench_table(args),
                                         profile=args.profile)

    if args.json:
        with _stdout_to_stderr():
            report = run(_to_stderr)
        print(dumps(report))
    else:
        report = run(progress)
        print()
        print(saturation.format_saturation(report))
    return 0


def _controller_step(args: argparse.Namespace) -> int:
    # lazy: imports NumPy, pandas and SciPy; keeps `raymedic --help` fast
    from raymedic.bench import controller_step

    out = controller_step.run_controller_step(members=args.members, replicas=args.replicas)
    print(dumps(out) if args.json else controller_step.format_step(out))
    return 0


def _fault_list(args: argparse.Namespace, known: tuple[str, ...]) -> tuple[str, ...]:
    """``--faults`` as a tuple of known names (default: all of ``known``).

    Raises:
        RaymedicError: a name this bench does not run; the message lists those it does.
    """
    if args.faults is None:
        return known
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    bad = [f for f in faults if f not in known]
    if bad or not faults:
        raise RaymedicError(f"unknown fault(s) {bad}: --faults takes a comma list of {','.join(known)}")
    return faults


def _replica_faults(args: argparse.Namespace) -> int:
    faults = _fault_list(args, REPLICA_BENCH_FAULTS)
    # lazy: imports Ray and NumPy; keeps `raymedic --help` fast
    from raymedic.bench import faults as bench

    settings = bench.BenchSettings(rps=args.rps or bench.BenchSettings.rps, deadline_s=args.deadline,
                                   fault_s=args.fault_seconds or bench.BenchSettings.fault_s, slow_ms=args.slow_ms,
                                   faults=faults)

    def run(report_progress: Any) -> dict[str, Any]:
        return bench.run_replica_faults(config_path=args.config, port=args.port, settings=settings,
                                        progress=report_progress, data=_bench_table(args))

    return _run_and_print(args, run, bench.format_table)


def _infra_faults(args: argparse.Namespace) -> int:
    faults = _fault_list(args, INFRA_BENCH_FAULTS)
    for flag, value in (("--fault-seconds", args.fault_seconds), ("--memory-limit-mb", args.memory_limit_mb),
                        ("--disk-fill-mb", args.disk_fill_mb), ("--spike-rps", args.spike_rps)):
        if value is not None and not value > 0:
            raise RaymedicError(f"{flag} {value:g}: give a positive number, e.g. {flag} 60")
    if args.fault_seconds is not None and "leak" in faults and args.fault_seconds < 30:
        raise RaymedicError(f"--fault-seconds {args.fault_seconds:g} is too short for the leak: raymedic needs "
                            "20 s of memory readings for a slope and the leak reaches its limit 2/3 of the way "
                            "in; give at least 30 (default 60), or --faults disk-fill")
    if args.fault_seconds is not None and "spike" in faults and args.fault_seconds < 30:
        raise RaymedicError(f"--fault-seconds {args.fault_seconds:g} is too short for the spike: it lasts half "
                            "the window and a new replica takes 10-15 s to start here; give at least 30 "
                            "(default 60)")
    # lazy: imports Ray and psutil; keeps `raymedic --help` fast
    from raymedic.bench import infra

    d = infra.InfraSettings()
    settings = infra.InfraSettings(rps=args.rps or d.rps, deadline_s=args.deadline,
                                   fault_s=args.fault_seconds or d.fault_s,
                                   memory_limit_mb=args.memory_limit_mb or d.memory_limit_mb,
                                   disk_fill_mb=args.disk_fill_mb or d.disk_fill_mb,
                                   spike_rps=args.spike_rps or d.spike_rps, faults=faults)

    def run(report_progress: Any) -> dict[str, Any]:
        return infra.run_infra_faults(config_path=args.config, port=args.port, settings=settings,
                                      progress=report_progress, data=_bench_table(args))

    return _run_and_print(args, run, infra.format_infra_table)


def _durability(args: argparse.Namespace) -> int:
    if args.kills is not None and not 1 <= args.kills <= 100:
        raise RaymedicError(f"--kills {args.kills}: give a number of gateway kills from 1 to 100, e.g. --kills 5")
    if args.controller_kills is not None and not 0 <= args.controller_kills <= MAX_CONTROLLER_KILLS:
        raise RaymedicError(f"--controller-kills {args.controller_kills}: give a number of controller kills per "
                            f"kill point from 0 (none) to {MAX_CONTROLLER_KILLS}, e.g. --controller-kills 3")
    # lazy: imports Ray; keeps `raymedic --help` fast
    from raymedic.bench import durability

    d = durability.DurabilitySettings()
    settings = durability.DurabilitySettings(
        kills=args.kills or d.kills,
        controller_kills=d.controller_kills if args.controller_kills is None else args.controller_kills)

    def run(report_progress: Any) -> dict[str, Any]:
        return durability.run_durability(config_path=args.config, port=args.port, settings=settings,
                                         progress=report_progress)

    return _run_and_print(args, run, durability.format_durability_table)


def _run_and_print(args: argparse.Namespace, run: Callable[[Any], dict[str, Any]],
                   table: Callable[[dict[str, Any]], str]) -> int:
    """Run a bench (``run`` takes the progress callback) and print its report: the JSON alone on stdout with
    ``--json`` (progress on stderr), else the table, then the JSON for the record."""
    if args.json:
        with _stdout_to_stderr():
            report = run(_to_stderr)
        print(dumps(report))
        return 0
    report = run(progress)
    print()
    print(table(report))
    print()
    print(dumps(report))
    return 0


def _bench_table(args: argparse.Namespace) -> Any:
    """The ``--data``/``--target`` pair as the benches take it (None: the built-in synthetic table).

    Raises:
        RaymedicError: one of the pair without the other, or ``--data`` on a bench that does not use it.
    """
    if args.data is None and args.target is None:
        return None
    if args.data is None or args.target is None:
        raise RaymedicError("--data and --target go together: --data TABLE.parquet --target LABEL_COLUMN")
    if args.scenario not in ("replica-faults", "infra-faults", "saturation"):
        raise RaymedicError(f"bench {args.scenario} does not take --data (replica-faults, infra-faults and "
                            "saturation do)")
    # lazy: imports Ray (the bench cluster module); keeps `raymedic --help` fast
    from raymedic.bench.cluster import BenchTable

    return BenchTable(path=args.data, target=args.target)
