"""Finding, creating and removing the healing controller actor.

``raymedic up`` and the Serve app builder both call :func:`ensure_controller`, so
whichever deploy path is used the controller exists. Its configuration is written
to ``storage_path`` first and read by the actor itself, so a controller that Ray
restarts after a crash reads the latest config, not the arguments it was first
created with.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping, Sequence

import ray

from controllers.host import HealingController
from raymedic.config import RaymedicConfig
from raymedic.keys import (CONTROLLER_MODELS_KEY, CONTROLLER_NAME, CONTROLLER_NAMESPACE, HEAD_NODE_RESOURCE,
                           controller_config_key)
from raymedic.logs import get_logger
from raymedic.storage import Storage

__all__ = ["ensure_controller", "get_controller", "remove_controller"]

log = get_logger(__name__)


def get_controller() -> Any:
    """The controller's handle, or None when it does not exist (gateways and the CLI find it by name)."""
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=CONTROLLER_NAMESPACE)
    except ValueError:
        return None


def ensure_controller(models: Sequence[tuple[RaymedicConfig, Mapping[str, str]]], *, admin_sha: str | None = None,
                      runtime_env: dict[str, Any] | None = None, timeout_s: float = 120.0) -> Any:
    """Create the controller if missing (else reconfigure it) and wait until it answers.

    ``models`` is every model the service serves, the first first: each one's config alone
    (``RaymedicConfig.for_model``) and the versions it serves. Those go to storage first, then the list of
    models: the actor reads them there, so a controller Ray restarts later heals these models on this
    config, not on its first constructor arguments.

    ``runtime_env`` is the application's (as Ray holds it, local code uploaded): the controller runs in
    it and hands it to its retrain jobs and canary applications, so they import the members' own
    modules as the replicas do. A controller running in another one (the user's code changed) is
    replaced: an actor's runtime_env is fixed when it is created (Ray restarts it in the same one).
    """
    runtime_env = dict(runtime_env or {})
    first = models[0][0]
    storage = Storage(first.storage_path)
    for config, versions in models:
        storage.write_text(controller_config_key(config.model),
                           json.dumps({"config": config.model_dump(mode="json"), "versions": dict(versions),
                                       "admin_token_sha256": admin_sha}))
    storage.write_text(CONTROLLER_MODELS_KEY, json.dumps({"models": [c.model for c, _ in models]}))
    existing = get_controller()
    if existing is not None:
        info = ray.get(existing.ping.remote(), timeout=timeout_s)
        if info.get("storage_path") != first.storage_path:
            remove_controller()  # it heals another service's storage: one controller per Serve app
        elif dict(info.get("runtime_env") or {}) != runtime_env:
            log.info("the application's runtime_env changed: replacing the healing controller to run in it")
            remove_controller()
    actor = ray.remote(HealingController).options(
        name=CONTROLLER_NAME,
        namespace=CONTROLLER_NAMESPACE,
        lifetime="detached",
        max_restarts=-1,  # Ray restarts it after a crash or SIGKILL; it resumes from its checkpoint
        max_task_retries=-1,
        num_cpus=0,
        # On the head, which holds the GCS anyway: a worker node's loss must not take the
        # one component that detects and records that loss with it.
        resources={HEAD_NODE_RESOURCE: 0.001},
        get_if_exists=True,
        runtime_env=runtime_env or None,
    ).remote(first.storage_path, first.model)
    ray.get(actor.reload.remote(), timeout=timeout_s)
    return actor


def remove_controller() -> bool:
    """Kill the controller for good (``raymedic down``); True if there was one."""
    actor = get_controller()
    if actor is None:
        return False
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 30.0
    while get_controller() is not None and time.monotonic() < deadline:
        time.sleep(0.1)  # the name is released once the actor is dead
    return True
