"""Bring the service up and down: the steps behind ``raymedic up`` / ``down`` / ``demo``.

Kept apart from argument parsing so the demo and tests drive the very same steps.

Ray Serve and the composition root are imported inside the functions that deploy:
``raymedic up`` imports this module before it joins the cluster, and Ray reads
``RAY_AUTH_MODE`` when it is imported.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from raymedic.config import RaymedicConfig
from raymedic.keys import APP_NAME
from raymedic.errors import ConfigError, RaymedicError
from raymedic.app.http import request_json
from raymedic.storage import Storage
from train_jobs.registry import ModelRegistry

__all__ = ["choose_models", "ensure_trained", "deploy", "wait_ready", "wait_all_ready", "golden_example",
           "undeploy"]

Progress = Callable[[str], None]
"""Where a step reports what it is doing (``print``, or the CLI's ``[raymedic]`` lines)."""


def _has_champions(registry: ModelRegistry, config: RaymedicConfig, model: str) -> bool:
    try:
        return all("champion" in registry.aliases(model, m.name) for m in config.members_of(model))
    except RaymedicError:
        return False


def choose_models(config: RaymedicConfig, requested: str | None, progress: Progress | None = None) -> RaymedicConfig:
    """The config serving what the registry can serve (``model`` first, the others as ``models``).

    ``--model a,b`` wins (the first is the default of routes without a model). Else every model with
    champions for its members: the config's ``model`` first when it has them, then those the config lists
    under ``models`` (served even without champions, so their absence fails with the ``raymedic train`` to
    run), then every other model in the registry, by name. A registry model whose champions are not this
    config's members (trained with another config) is named in a progress line with how to serve it too.
    An empty registry keeps the config as it is: its ``model`` is trained from synthetic data.
    """
    if requested:
        names = list(dict.fromkeys(n.strip() for n in requested.split(",") if n.strip()))
        if not names:
            raise ConfigError(f"--model {requested!r} names no model: pass NAME or NAME1,NAME2")
        return config.serving(names)
    registry = ModelRegistry(Storage(config.storage_path))
    in_registry = registry.models()
    servable = {m for m in in_registry if _has_champions(registry, config, m)}
    if not servable:
        return config
    names = [config.model] if config.model in servable else []
    names += [n for n in config.models if n not in names]
    names += sorted(servable - set(names))
    if progress is not None:
        for other in sorted(set(in_registry) - servable - set(names)):
            progress(f"  not serving model {other!r}: its champions are not this config's members "
                     f"{[m.name for m in config.members]}; list it under `models:` with its members (or "
                     f"`raymedic up --config` the config it was trained with) to serve it too")
    return config.serving(names) if names else config


def ensure_trained(config: RaymedicConfig, progress: Progress) -> None:
    """Train the built-in synthetic model when the registry has no champions for it.

    So that a first ``raymedic up`` (or demo, or bench) serves something without a
    separate ``raymedic train``; a registry with champions is left as it is.
    Requires a connected Ray cluster when it trains.

    Raises:
        ConfigError: there are no champions and a member's own module does not fit the synthetic table
            (checked before anything trains); the message gives the ``raymedic train`` to run.
    """
    registry = ModelRegistry(Storage(config.storage_path))
    if _has_champions(registry, config, config.model):
        return
    # lazy: imports PyTorch (seconds), needed only when there is something to train
    from train_jobs.train import synthetic_table, train_ensemble

    progress(f"registry at {config.storage_path} has no champions for {config.model!r}: "
             "training the built-in synthetic model with Ray Train (about a minute)")
    try:
        train_ensemble(config, synthetic_table(config), target="label", model=config.model, progress=progress)
    except ConfigError as exc:
        own = [m.name for m in config.members if m.module]
        if not own:
            raise
        # the synthetic table is the built-ins' stand-in: a user's module written for other inputs (images,
        # another width) does not fit it, and the fix is to train on the table it was written for
        raise ConfigError(
            f"{exc}. The registry at {config.storage_path} has no champions for model {config.model!r}, so the "
            f"built-in synthetic table was tried, and members {own} run your own modules: train them on your "
            f"table first, `raymedic train --config CONFIG --data TABLE --target COLUMN --model {config.model}`"
        ) from None


def deploy(config: RaymedicConfig, *, host: str, port: int, progress: Progress,
           proxy_location: str | None = None, tls: dict[str, str] | None = None) -> None:
    """Deploy (or update) the Serve application on the connected cluster.

    ``proxy_location="HeadOnly"`` where several nodes share one machine (``up --nodes``):
    every node's proxy would bind the same host and port there. None keeps Serve's default.
    ``tls`` (:attr:`raymedic.config.ServeFile.http_tls`) makes Serve's proxy serve HTTPS.
    """
    from ray import serve  # lazy: imports Ray (see the module's docstring)

    from serve_apps.app import build_app  # lazy: imports Ray (see the module's docstring)

    serve.start(http_options={"host": host, "port": port, **(tls or {})}, proxy_location=proxy_location)
    if config.models:
        progress(f"deploying Serve application {APP_NAME!r}: one gateway for models {config.model_names}, "
                 + "; ".join(f"{n}: members {[m.name for m in config.members_of(n)]}" for n in config.model_names))
    else:
        progress(f"deploying Serve application {APP_NAME!r}: gateway + members "
                 f"{[m.name for m in config.members]}")
    serve.run(build_app(config.model_dump(mode="json")), name=APP_NAME, route_prefix="/", blocking=False)


READY_PROBES = 6
"""Consecutive predictions answered by every member before the service counts as ready: the load balancer
spreads them over the gateway replicas, so each has called each member (a first call sets up the handle's
routing, which on two busy cores can outlast a member's deadline and cost a user's first answer a member)."""


def _answered_by_all(body: dict, members: set[str]) -> bool:
    used = {part.split(":", 1)[0] for part in str(body.get("model_version") or "").split(",") if part}
    return not body.get("degraded") and members <= used


def wait_ready(url: str, model: str, *, timeout_s: float, progress: Progress,
               example: dict[str, Any] | None = None) -> float:
    """Block until real predictions succeed over HTTP, answered by every member; returns the seconds waited.

    ``example`` is the instance sent (:func:`golden_example`: a real training-time row); without one,
    an instance built from the schema alone, which the data monitors count like any input: fine for a
    table's ranges, but a mid-range image is far from any real one and would itself look like drift.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    last = "no answer yet"
    next_note = t0 + 10
    full = 0
    while time.monotonic() < deadline:
        try:
            info = request_json("GET", f"{url}/v1/models/{model}", timeout_s=5)
            if info.status == 200:
                probe = request_json("POST", f"{url}/v1/models/{model}:predict",
                                     {"instances": [example or _example_row(info.body["schema"])]},
                                     timeout_s=10)
                if probe.status == 200 and _answered_by_all(probe.body, set(info.body.get("members") or ())):
                    full += 1
                    if full >= READY_PROBES:
                        return time.monotonic() - t0
                    continue
                full = 0
                last = f"predict answered {probe.status}: {probe.body}"
            else:
                last = f"GET /v1/models/{model} answered {info.status}"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() > next_note:
            progress(f"  still waiting for the service ({last})")
            next_note += 10
        time.sleep(0.5)
    raise RaymedicError(f"the service did not answer predictions within {timeout_s:.0f} s ({last}); "
                        "check `ray status` and the Serve logs in the Ray dashboard")


def wait_all_ready(url: str, config: RaymedicConfig, *, timeout_s: float, progress: Progress) -> float:
    """:func:`wait_ready` for every model the config serves, within one ``timeout_s``; the seconds waited."""
    t0 = time.monotonic()
    for name in config.model_names:
        left = max(1.0, timeout_s - (time.monotonic() - t0))
        wait_ready(url, name, timeout_s=left, progress=progress, example=golden_example(config.for_model(name)))
    return time.monotonic() - t0


def golden_example(config: RaymedicConfig) -> dict[str, Any] | None:
    """A real row to probe readiness with: the first golden input of the fallback member's champion (a
    validation row of its training table), keyed by feature; None when there is none to read."""
    # lazy: train_jobs.artifacts imports PyTorch (seconds) for a file name
    from train_jobs.artifacts import GOLDEN

    try:
        loaded = ModelRegistry(Storage(config.storage_path)).load(config.model, config.fallback_member, "champion")
        golden = json.loads(loaded.files[GOLDEN])
        names = [f["name"] for f in loaded.info.metadata["schema"]["features"]]
        return dict(zip(names, golden["rows"][0], strict=True))
    except (RaymedicError, KeyError, IndexError, ValueError):
        return None


def _example_row(schema: dict) -> dict:
    """A valid instance built from the schema alone (what any client could do)."""
    row = {}
    for f in schema["features"]:
        if f["type"] == "categorical":
            row[f["name"]] = f["levels"][0]
        elif f["type"] == "int":
            row[f["name"]] = int(round(((f["min"] or 0) + (f["max"] or 0)) / 2))
        elif f["type"] == "tensor":  # nested lists of its shape, every element mid-range
            row[f["name"]] = _filled(f["shape"], ((f["min"] or 0.0) + (f["max"] or 0.0)) / 2)
        else:
            row[f["name"]] = ((f["min"] or 0.0) + (f["max"] or 0.0)) / 2
    return row


def _filled(shape: list[int], value: float) -> list:
    """Nested lists of ``shape`` holding ``value`` (a tensor instance as a V1 client sends it)."""
    if len(shape) == 1:
        return [value] * shape[0]
    return [_filled(shape[1:], value) for _ in range(shape[0])]


def undeploy() -> None:
    """Delete the Serve application and its controller (the cluster keeps running)."""
    from ray import serve  # lazy: imports Ray (see the module's docstring)

    from controllers.client import remove_controller  # lazy: imports Ray (see the module's docstring)

    serve.delete(APP_NAME)
    remove_controller()
