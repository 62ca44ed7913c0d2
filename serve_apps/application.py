"""The serving application: the gateway wired to one deployment per member.

Both ``raymedic up`` and ``serve deploy cluster/raymedic.yaml`` end in
:func:`build_application` (through :func:`serve_apps.app.build_app`), so the two
deploy paths cannot drift apart. The builder checks that every member has a
champion and that all share one schema, and wires the gateway to one deployment
per member. Member replicas load their ``champion`` when
they start; promotions and rollbacks then swap versions in place (see
:mod:`serve_apps.member`), so the application is deployed once, not per promotion.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from raymedic.config import RaymedicConfig, parse_config
from raymedic.keys import ADMIN_TOKEN_ENV, ADMIN_TOKEN_SHA_ENV, HEAD_NODE_RESOURCE
from raymedic.errors import ConfigError, RaymedicError
from raymedic.storage import Storage
from serve_apps.gateway import Gateway
from serve_apps.member import Member
from serve_apps.routing import AvoidingRouter
from serve_apps.validation import input_policies
from train_jobs.registry import CHAMPION, ModelRegistry
from train_jobs.schema import ModelSchema

__all__ = ["build_application", "build_canary_app", "resolve_versions", "admin_token_sha256"]


def resolve_versions(config: RaymedicConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """Each member's champion version and the schema they share."""
    registry = ModelRegistry(Storage(config.storage_path))
    versions: dict[str, str] = {}
    schemas: dict[str, str] = {}
    schema: dict[str, Any] = {}
    for m in config.members:
        try:
            info = registry.info(config.model, m.name, "champion")
        except RaymedicError as exc:
            raise ConfigError(
                f"member {m.name!r} of model {config.model!r} has no champion version in the registry at "
                f"{config.storage_path} ({exc}). Train it first: `raymedic train --data TABLE --target COL "
                f"--model {config.model}` (or `raymedic up`, which trains the built-in model when the "
                "registry is empty)"
            ) from None
        versions[m.name] = info.version
        schema = info.metadata["schema"]
        schemas[m.name] = json.dumps({"f": schema["features"], "c": schema["classes"]}, sort_keys=True)
    if len(set(schemas.values())) > 1:
        raise ConfigError(
            f"members of model {config.model!r} were trained on different schemas ({sorted(schemas)}); "
            "retrain all members on one table with `raymedic train`"
        )
    return versions, schema


def admin_token_sha256() -> str | None:
    """The admin token's sha256 from the deployer's environment (only the hash is shipped)."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        return hashlib.sha256(token.encode()).hexdigest()
    return os.environ.get(ADMIN_TOKEN_SHA_ENV) or None


def build_application(config: RaymedicConfig, versions: dict[str, str], schema: dict[str, Any]) -> Application:
    """The gateway and one deployment per member, serving ``versions`` (each member's champion, from
    :func:`resolve_versions`) of a model whose members share ``schema``."""
    input_policies(ModelSchema.from_dict(schema), config.data)  # a bad override fails the deploy, not each replica
    router = RequestRouterConfig(request_router_class=AvoidingRouter)
    logging_config = {"enable_access_log": config.access_log}
    members = {
        m.name: Member.options(
            name=m.name,
            num_replicas=m.replicas + m.standby,
            max_ongoing_requests=m.max_ongoing_requests,
            max_replicas_per_node=m.max_replicas_per_node,
            health_check_period_s=m.health_check_period_s,
            logging_config=logging_config,
            ray_actor_options={"num_cpus": m.num_cpus, "num_gpus": m.num_gpus},
            request_router_config=router,
        ).bind(model=config.model, member=m.name, version=CHAMPION, storage_path=config.storage_path,
               use_gpu=m.num_gpus > 0, chaos=config.chaos.enabled)
        for m in config.members
    }
    return Gateway.options(
        num_replicas=config.gateway.replicas,
        max_ongoing_requests=config.gateway.max_ongoing_requests,
        max_queued_requests=config.gateway.max_queued_requests,
        ray_actor_options={"num_cpus": config.gateway.num_cpus,
                           **({"resources": {HEAD_NODE_RESOURCE: 0.001}} if config.gateway.on_head else {})},
        logging_config=logging_config,
    ).bind(config.model_dump(mode="json"), members, versions, schema, admin_token_sha256())


def build_canary_app(args: dict[str, Any], member: str, version: str) -> Application:
    """One challenger version of ``member`` on one replica, as its own application (no HTTP route):
    the gateway reaches it through a handle while it is on trial, and deleting it after the
    verdict leaves the main application untouched."""
    config = parse_config(args).resolved()
    m = next((x for x in config.members if x.name == member), None)
    if m is None:
        raise ConfigError(f"no member {member!r} in model {config.model!r}; members: "
                          f"{[x.name for x in config.members]}")
    return Member.options(
        name=m.name,
        num_replicas=1,
        max_ongoing_requests=m.max_ongoing_requests,
        ray_actor_options={"num_cpus": m.num_cpus, "num_gpus": m.num_gpus},
        logging_config={"enable_access_log": config.access_log},
    ).bind(model=config.model, member=m.name, version=version, storage_path=config.storage_path,
           use_gpu=m.num_gpus > 0, chaos=False)
