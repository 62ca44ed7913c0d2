"""The HTTP ingress: validate, fan out to members, combine, log.

KServe V1 routes and the Open Inference Protocol (V2) (ARCHITECTURE.md). Every
client mistake becomes a 4xx with ``{"error": ...}`` that says what to fix; an
unexpected failure becomes a 500 with an error id and never a traceback. Member
calls carry a per-member deadline, are retried on another replica after a failure
and hedged when late (:mod:`~serve_apps.gateway.fanout`), so one bad replica costs a
little latency, not a failed request. Once per sync period the gateway trades its
telemetry for the controller's weights and avoid list
(:mod:`~serve_apps.gateway.link`); if the controller is down it keeps serving with
the last it knew. Admin routes need the admin token; the chaos routes exist only
when chaos is enabled in the config.

The public surface is :class:`Gateway` (the Serve deployment) and :data:`api` (its
FastAPI application, for ``raymedic openapi``). Modules, one concept each:

- ``api``: the FastAPI app, error answers, JSON bodies, request counting;
- ``routes``: the route table; ``v1``, ``v2_routes``, ``admin``, ``chaos_routes``: the route mixins;
- ``predict``: the one prediction path; ``feedback``: labels in;
- ``fanout``: member calls (deadline, retry, hedge, ejection, coalescing);
- ``link``: the controller sync; ``trial``: challenger calls and shadow logging;
- ``status``: readiness, model info, ``/v1/status``; ``deployment``: the deployment class.

(``serve_apps.gateway.api`` names the FastAPI app here, as an attribute of this
package; import the module's other names with ``from serve_apps.gateway.api import ...``.)
"""

from serve_apps.gateway.api import api
from serve_apps.gateway.deployment import Gateway

__all__ = ["Gateway", "api"]
