"""Retrain the ensemble on recent labelled data and gate the challengers: a Ray job.

The healing controller submits this through the Ray Jobs API when drift is
material or accuracy decays; operators can run the same thing by hand::

    ray job submit --working-dir . -- python -m train_jobs.retrain --model synthetic --storage-path DIR

Steps: read the labelled rows of the last ``lookback_s`` from the prediction and
feedback logs; keep the newest ``holdout_fraction`` out; train every member with
Ray Train on the rest, mixed with ``reference_share`` of the champion's stored
training sample (the schema stays the champion's, so requests keep their
format); judge each challenger against its champion on the holdout
(:mod:`train_jobs.gate`); for a member whose challenger fails, search its
hyperparameters with Ray Tune + Optuna (ASHA) on the same rows and gate the best
configuration the same way (``retraining.search_on_reject``; the configuration
is recorded in the version's metadata); point the ``challenger`` alias at those that pass. It
never moves ``champion``: promotion is the controller's decision. The outcome is
written to ``retrain/<model>/<record>.json`` under ``storage_path`` and printed.

Exit codes: 0 ran (whatever the verdict), 2 bad input or failure, 3 not enough
labelled rows yet (nothing trained).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cluster.connect import connect_or_start
from raymedic.config import RaymedicConfig
from raymedic.errors import NotEnoughLabels, RaymedicError
from raymedic.keys import controller_config_key, retrain_record_key
from raymedic.logs import get_logger
from raymedic.storage import Storage
from train_jobs.artifacts import unpack
from train_jobs.gate import judge, measure
from train_jobs.labeled import TS_COLUMN, recent_labeled
from train_jobs.registry import ModelRegistry
from train_jobs.schema import ModelSchema
from train_jobs.tables import frame_from_arrow
from train_jobs.search import search_member
from train_jobs.train import train_ensemble

__all__ = ["retrain", "main"]

log = get_logger(__name__)

EXIT_NOT_ENOUGH = 3


def _reference_rows(storage: Storage, registry: ModelRegistry, model: str, member: str, n: int,
                    seed: int) -> pd.DataFrame | None:
    key = registry.info(model, member, "champion").metadata.get("train_sample")
    if not key or n <= 0 or not storage.exists(key):
        return None
    sample = frame_from_arrow(storage.read_parquet(key), where=key)  # tensor columns back as arrays
    return sample.sample(n=min(n, len(sample)), random_state=seed)


def since_change(recent: pd.DataFrame, since: float | None, min_rows: int) -> pd.DataFrame:
    """The recent rows answered since the change began, topped up with the newest rows before it up to
    ``min_rows``: rows of the old concept teach the challenger the old answers, and a holdout full of
    them judges it on a world that is gone."""
    if since is None:
        return recent
    after = recent[recent[TS_COLUMN] >= since]
    return after if len(after) >= min_rows else recent.tail(min_rows)


def retrain(config: RaymedicConfig, *, reason: str = "manual", members: Sequence[str] | None = None,
            now: float | None = None, search_all: bool = False, since: float | None = None,
            progress=print) -> dict[str, Any]:
    """Train challengers on recent labels and gate them; returns the outcome record.

    ``search_all`` (the scheduled search): every member's hyperparameters are searched on the same
    rows, not only those whose retrained challenger failed; the better of the two gated challengers
    stands (the searched one only if it passes and beats the retrained one on the holdout)."""
    t0 = time.monotonic()
    now = time.time() if now is None else now
    rc = config.retraining
    storage = Storage(config.storage_path)
    registry = ModelRegistry(storage)
    model = config.model
    chosen = list(members) if members else [m.name for m in config.members]
    champions = {m: registry.info(model, m, "champion") for m in chosen}
    schema = ModelSchema.from_dict(next(iter(champions.values())).metadata["schema"])

    recent = since_change(recent_labeled(storage, model, schema, since=now - rc.lookback_s), since,
                          rc.min_labeled_rows)
    if len(recent) < rc.min_labeled_rows:
        raise NotEnoughLabels(f"{len(recent)} labelled rows in the last {rc.lookback_s:.0f} s; a retrain needs "
                              f"retraining.min_labeled_rows={rc.min_labeled_rows} (send more feedback, or lower it)")
    n_hold = max(1, int(round(len(recent) * rc.holdout_fraction)))
    train_recent, holdout = recent.iloc[:-n_hold], recent.iloc[-n_hold:]
    n_ref = int(round(len(train_recent) * rc.reference_share / (1 - rc.reference_share)))
    ref = _reference_rows(storage, registry, model, chosen[0], n_ref, config.training.seed)
    cols = [*schema.feature_names, schema.target]
    table = pd.concat([train_recent[cols]] + ([ref[cols]] if ref is not None else []), ignore_index=True)
    progress(f"retraining {chosen} of {model!r} ({reason}): {len(train_recent)} recent labelled rows + "
             f"{0 if ref is None else len(ref)} reference rows; gate holdout {len(holdout)} newest rows")
    report = train_ensemble(config, table, target=schema.target, model=model, members=chosen, promote=False,
                            schema=schema, progress=progress,
                            metadata={"retrain": {"reason": reason, "recent_rows": len(train_recent),
                                                  "reference_rows": 0 if ref is None else len(ref),
                                                  "holdout_rows": len(holdout), "since": since,
                                                  "window": [float(recent[TS_COLUMN].min()),
                                                             float(recent[TS_COLUMN].max())]}})

    rows = holdout[schema.feature_names].astype(object).where(holdout[schema.feature_names].notna(), None)
    rows = rows.values.tolist()
    y = np.array([schema.class_index(v) for v in holdout[schema.target]])

    def gate(member: str, version: str) -> dict[str, Any]:
        champ = unpack(registry.load(model, member, champions[member].version).files)
        chall = unpack(registry.load(model, member, version).files)
        verdict = judge(measure(champ, rows, y), measure(chall, rows, y), rc)
        if verdict.passed:
            registry.set_alias(model, member, "challenger", version)
        progress(f"  gate {member} {version}: {'PASS' if verdict.passed else 'REJECT'} — holdout accuracy "
                 f"{verdict.challenger['accuracy']:.3f} vs champion {verdict.champion['accuracy']:.3f}"
                 + ("" if verdict.passed else f" ({'; '.join(verdict.reasons)})"))
        return {"champion_version": champions[member].version, "challenger_version": version,
                "passed": verdict.passed, "reasons": list(verdict.reasons),
                "champion_metrics": verdict.champion, "challenger_metrics": verdict.challenger}

    verdicts: dict[str, Any] = {m: gate(m, report.versions[m].version) for m in chosen}
    for m in chosen:
        if config.member(m).train_loop is not None:  # a search runs raymedic's own loop, not the member's
            continue
        if search_all or (rc.search_on_reject and not verdicts[m]["passed"]):
            retrained = verdicts[m]
            searched = _search_and_gate(config, table, schema.target, m, retrained, gate, progress)
            verdicts[m] = _better(retrained, searched)
            if verdicts[m] is not searched and retrained["passed"]:  # the search's gate moved the alias
                registry.set_alias(model, m, "challenger", retrained["challenger_version"])
    return {"model": model, "reason": reason, "members": verdicts,
            "passed": sorted(m for m, v in verdicts.items() if v["passed"]),
            "rejected": sorted(m for m, v in verdicts.items() if not v["passed"]),
            "ray_train_run": next(iter(report.versions.values())).metadata.get("ray_train_run"),
            "wall_s": round(time.monotonic() - t0, 2)}


def _better(retrained: dict[str, Any], searched: dict[str, Any]) -> dict[str, Any]:
    """Which verdict stands. A retrained challenger that failed the gate gives way to the search's
    (the best the search found, passed or not); one that passed gives way only to a searched
    challenger that passed with a higher holdout accuracy, and otherwise stands annotated with the
    search, so the record says what was tried."""
    if not retrained["passed"] or "error" in (searched.get("search") or {}):
        return searched  # (a failed search's verdict is the retrained one plus the error)
    acc = lambda v: float(v["challenger_metrics"]["accuracy"])  # noqa: E731
    if searched["passed"] and acc(searched) > acc(retrained):
        return searched
    return {**retrained, "search": {**searched["search"], "version": searched["challenger_version"],
                                    "passed": searched["passed"], "accuracy": acc(searched),
                                    "kept": "retrained"}}


def _search_and_gate(config: RaymedicConfig, table: pd.DataFrame, target: str, member: str,
                     retrained: dict[str, Any], gate: Any, progress: Any) -> dict[str, Any]:
    """The retrained challenger failed the gate: search the member's hyperparameters (Ray Tune +
    Optuna, ASHA) on the same rows and gate the best configuration on the same holdout. The best
    configuration is in the new version's metadata (``search.best_config``) either way."""
    rc = config.retraining
    try:
        found = search_member(config, table, target=target, member=member, num_samples=rc.search_trials,
                              max_epochs=rc.search_max_epochs, progress=progress)
    except RaymedicError as exc:  # e.g. every trial failed
        progress(f"  search {member}: not run or no usable trial ({exc}); the retrained verdict stands")
        return {**retrained, "search": {"error": str(exc)[:500]}}  # retrained verdict stands
    verdict = gate(member, found.version.version)
    return {**verdict, "search": {"best_config": found.best_config, "trials": len(found.trials),
                                  "trials_stopped_early": found.trials_stopped_early,
                                  "tune_run": found.tune_run, "wall_s": round(found.wall_s, 2),
                                  "retrained": {"version": retrained["challenger_version"],
                                                "reasons": retrained["reasons"],
                                                "accuracy": retrained["challenger_metrics"]["accuracy"]}}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train_jobs.retrain",
                                description="Retrain on recent labelled data and gate the challengers "
                                            "(never moves the champion alias).")
    p.add_argument("--model", required=True, help="Model whose logs and champions to use.")
    p.add_argument("--storage-path", required=True, help="The service's storage_path.")
    p.add_argument("--members", nargs="+", help="Only these members (default: all).")
    p.add_argument("--reason", default="manual", help="Why (recorded in the versions' metadata).")
    p.add_argument("--record", help="Write the outcome to retrain/<model>/<record>.json (default: a timestamp).")
    p.add_argument("--since", type=float, help="Learn from rows answered since this time (epoch seconds; the "
                   "detector's change estimate), topped up with older recent rows to min_labeled_rows.")
    p.add_argument("--search-all", action="store_true", help="Also search every member's hyperparameters "
                   "(Ray Tune + Optuna) and keep the better gated challenger (the scheduled search).")
    return p


def _config(storage_path: str, model: str) -> RaymedicConfig:
    """The running service's config, as the controller stored it."""
    storage = Storage(storage_path)
    if not storage.exists(controller_config_key(model)):
        raise RaymedicError(f"no deployed config for model {model!r} under {storage_path}; deploy it first "
                            "with `raymedic up`")
    return RaymedicConfig.model_validate(json.loads(storage.read_text(controller_config_key(model)))["config"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train_jobs.retrain``: the Ray job the controller submits (and operators can run).

    Always leaves an outcome record under ``retrain/<model>/`` (the controller reads
    it to learn what happened), whatever went wrong.

    Returns:
        0 gated (whatever the verdict), 3 not enough labelled rows, 2 bad input or
        a failure the user can fix, 1 anything else.
    """
    args = _parser().parse_args(argv)
    record = args.record or time.strftime("%Y%m%d-%H%M%S")
    storage = Storage(args.storage_path)
    outcome: dict[str, Any]
    code = 0
    try:
        config = _config(args.storage_path, args.model)
        with connect_or_start():
            outcome = retrain(config, reason=args.reason, members=args.members, search_all=args.search_all,
                              since=args.since)
        outcome["status"] = "gated"
    except NotEnoughLabels as exc:
        outcome, code = {"status": "skipped", "error": str(exc)}, EXIT_NOT_ENOUGH
    except RaymedicError as exc:
        outcome, code = {"status": "failed", "error": str(exc)}, 2
    except Exception as exc:  # anything else (corrupt data, a crashed trainer): still leave a record
        traceback.print_exc()
        outcome, code = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:500]}"}, 1
    outcome.update(model=args.model, record=record, finished_at=time.time())
    try:
        storage.write_text(retrain_record_key(args.model, record), json.dumps(outcome, default=str))
    except OSError as exc:
        print(f"error: could not write the outcome record: {exc}", file=sys.stderr)
        code = code or 2
    if code:
        print(f"error: {outcome['error']}", file=sys.stderr)
    print(json.dumps(outcome, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
