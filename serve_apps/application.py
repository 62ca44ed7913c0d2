"""The serving application: the gateway wired to one deployment per member of each model it serves.

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
from dataclasses import dataclass
from typing import Any, Sequence

from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from raymedic.config import GatewayConfig, MemberConfig, RaymedicConfig, ScalingConfig, parse_config
from raymedic.keys import ADMIN_TOKEN_ENV, ADMIN_TOKEN_SHA_ENV, HEAD_NODE_RESOURCE
from raymedic.errors import ConfigError, RaymedicError
from raymedic.storage import Storage
from serve_apps.access import client_key_table
from serve_apps.autoscale import POLICY_PATH
from serve_apps.gateway import Gateway
from serve_apps.member import Member
from serve_apps.routing import AvoidingRouter
from serve_apps.validation import input_policies
from train_jobs.registry import CHAMPION, ModelRegistry
from train_jobs.schema import ModelSchema

__all__ = ["ServedModel", "build_application", "build_canary_app", "resolve_models", "resolve_versions",
           "admin_token_sha256", "member_scaling", "gateway_scaling"]


def resolve_versions(config: RaymedicConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """Each member's champion version and the schema they share, for the config's ``model`` alone
    (a config serving several models: :func:`resolve_models`)."""
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


@dataclass(frozen=True)
class ServedModel:
    """One model of the service as deployed: its config alone, its champions and their schema."""

    config: RaymedicConfig
    versions: dict[str, str]
    schema: dict[str, Any]


def resolve_models(config: RaymedicConfig) -> list[ServedModel]:
    """Every model the config serves (``model``, then ``models``), each with its champions and schema."""
    served = []
    for name in config.model_names:
        one = config.for_model(name)
        versions, schema = resolve_versions(one)
        served.append(ServedModel(one, versions, schema))
    return served


def admin_token_sha256() -> str | None:
    """The admin token's sha256 from the deployer's environment (only the hash is shipped)."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        return hashlib.sha256(token.encode()).hexdigest()
    return os.environ.get(ADMIN_TOKEN_SHA_ENV) or None


def _autoscaling(*, low: int, high: int, target: float, scaling: ScalingConfig,
                 policy: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": target,
            "upscale_delay_s": scaling.upscale_delay_s, "downscale_delay_s": scaling.downscale_delay_s,
            "look_back_period_s": scaling.look_back_period_s, "metrics_interval_s": scaling.metrics_interval_s,
            **({"policy": policy} if policy else {})}


def member_scaling(m: MemberConfig, scaling: ScalingConfig) -> dict[str, Any]:
    """The replica options of a member's deployment: a fixed ``num_replicas`` (``replicas + standby``), or,
    with ``max_replicas``, Serve's ``autoscaling_config`` between ``replicas + standby`` and
    ``max_replicas + standby`` (standbys added back by :class:`serve_apps.autoscale.StandbyAware`)."""
    if not m.autoscaled:
        return {"num_replicas": m.min_serve_replicas}
    policy = {"policy_function": POLICY_PATH, "policy_kwargs": {"standby": m.standby}} if m.standby else None
    return {"autoscaling_config": _autoscaling(low=m.min_serve_replicas, high=m.max_serve_replicas,
                                               target=m.target_ongoing_requests, scaling=scaling, policy=policy)}


def gateway_scaling(gw: GatewayConfig, scaling: ScalingConfig) -> dict[str, Any]:
    """The gateway's replica options: ``num_replicas``, or Serve's default autoscaling policy between
    ``replicas`` and ``max_replicas`` on the requests in flight per replica."""
    if not gw.autoscaled:
        return {"num_replicas": gw.replicas}
    return {"autoscaling_config": _autoscaling(low=gw.replicas, high=int(gw.max_replicas or gw.replicas),
                                               target=gw.target_ongoing_requests, scaling=scaling)}


def build_application(models: Sequence[ServedModel]) -> Application:
    """The gateway and one deployment per member of every model (:func:`resolve_models`), each serving
    its champion; the first model's members keep their names, another model's are ``MODEL.MEMBER``."""
    first = models[0].config
    router = RequestRouterConfig(request_router_class=AvoidingRouter)
    logging_config = {"enable_access_log": first.access_log}
    bindings = []
    for served in models:
        cfg = served.config
        input_policies(ModelSchema.from_dict(served.schema), cfg.data)  # a bad override fails the deploy
        members = {
            m.name: Member.options(
                name=cfg.deployment_of(m.name),
                **member_scaling(m, cfg.scaling),
                max_ongoing_requests=m.max_ongoing_requests,
                max_replicas_per_node=m.max_replicas_per_node,
                health_check_period_s=m.health_check_period_s,
                logging_config=logging_config,
                ray_actor_options={"num_cpus": m.num_cpus, "num_gpus": m.num_gpus},
                request_router_config=router,
            ).bind(model=cfg.model, member=m.name, version=CHAMPION, storage_path=cfg.storage_path,
                   use_gpu=m.num_gpus > 0, chaos=cfg.chaos.enabled)
            for m in cfg.members
        }
        bindings.append({"config": cfg.model_dump(mode="json"), "members": members,
                         "versions": served.versions, "schema": served.schema})
    return Gateway.options(
        **gateway_scaling(first.gateway, first.scaling),
        max_ongoing_requests=first.gateway.max_ongoing_requests,
        max_queued_requests=first.gateway.max_queued_requests,
        ray_actor_options={"num_cpus": first.gateway.num_cpus,
                           **({"resources": {HEAD_NODE_RESOURCE: 0.001}} if first.gateway.on_head else {})},
        logging_config=logging_config,
    ).bind(bindings, admin_token_sha256(), client_key_table(first.gateway))


def build_canary_app(args: dict[str, Any], member: str, version: str) -> Application:
    """One challenger version of ``member`` on one replica, as its own application (no HTTP route):
    the gateway reaches it through a handle while it is on trial, and deleting it after the
    verdict leaves the main application untouched. ``args`` is the config of the member's model alone."""
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
