"""The plain Ray Serve baseline the benchmark compares raymedic against.

The same trained members, served the ordinary way: one deployment per member with
Serve's default router and default health checks, and a simple ingress that calls
every member and averages their probabilities — no deadlines, no retries beyond
Serve's own, no hedging, no probes, no controller (the same logging settings, so
the comparison measures healing, not log volume). Same request and answer shape
as raymedic's predict route so one load generator drives both.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse

from raymedic.config import RaymedicConfig
from serve_apps.application import resolve_versions
from serve_apps.member import Member
from train_jobs.schema import ModelSchema

__all__ = ["PlainEnsemble", "build_baseline"]

BASELINE_APP = "baseline"


@serve.deployment(name="plain-ingress")
class PlainEnsemble:
    """An ingress that averages every member's probabilities, the way one would with plain Serve:
    the benchmark's yardstick, so it must stay as simple as the ordinary way is.
    """
    def __init__(self, members: dict[str, Any], schema: dict[str, Any]) -> None:
        self._members = members
        self._schema = ModelSchema.from_dict(schema)

    async def __call__(self, request: Request) -> JSONResponse:
        body = await request.json()
        names = self._schema.feature_names
        rows = [[inst[f] for f in names] if isinstance(inst, dict) else list(inst) for inst in body["instances"]]
        outs = await asyncio.gather(*(h.predict.remote(rows) for h in self._members.values()))
        probs = np.mean([np.asarray(o["probabilities"]) for o in outs], axis=0)
        labels = [self._schema.classes[int(k)] for k in probs.argmax(axis=1)]
        return JSONResponse({"predictions": labels, "probabilities": probs.round(6).tolist(), "degraded": False})


def build_baseline(config: RaymedicConfig) -> Application:
    """The baseline app for ``config``'s champions (chaos hooks on, so faults can be injected)."""
    versions, schema = resolve_versions(config)
    logging_config = {"enable_access_log": config.access_log}  # same logging cost as raymedic's
    members = {
        m.name: Member.options(
            name=m.name,
            num_replicas=m.replicas + m.standby,  # the same processes as raymedic's, all serving
            ray_actor_options={"num_cpus": m.num_cpus, "num_gpus": m.num_gpus},
            logging_config=logging_config,
        ).bind(model=config.model, member=m.name, version=versions[m.name], storage_path=config.storage_path,
               use_gpu=m.num_gpus > 0, chaos=True)
        for m in config.members
    }
    return PlainEnsemble.options(num_replicas=config.gateway.replicas,
                                 ray_actor_options={"num_cpus": config.gateway.num_cpus},
                                 logging_config=logging_config).bind(members, schema)
