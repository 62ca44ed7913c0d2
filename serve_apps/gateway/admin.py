"""Admin routes (``/v1/admin/...``): the operator's levers on the healing controller.

Pause and resume healing, approve or reject a proposed action, switch the control
mode, ask for a retrain, roll members back, promote a version, start a trial. Each needs
``Authorization: Bearer $RAYMEDIC_ADMIN_TOKEN``; the gateway holds only the
token's sha256 and compares in constant time. Without a deployed token the routes
refuse everything (403): there is no default token to guess. The gateway checks
the request's shape and forwards it to the controller, whose answer it returns
(an ``{"error", "status"}`` answer becomes that 4xx).
"""

# No `from __future__ import annotations`: FastAPI must see real types on route methods.

import hashlib
import hmac
from typing import Any

from fastapi import Request

from raymedic.errors import AdminDenied, InvalidRequest
from serve_apps.gateway.api import json_body
from serve_apps.gateway.lane import ModelLane, pick_lane
from serve_apps.gateway.link import ControllerLink

__all__ = ["AdminRoutes", "check_admin", "controller_reply"]


def check_admin(request: Request, token_sha256: str | None) -> None:
    """Let an admin request through only with the deployed token.

    Args:
        request: the request (its ``Authorization: Bearer`` header).
        token_sha256: the deployed token's sha256, or None when no token was deployed.

    Raises:
        AdminDenied: 403 when admin routes are disabled, 401 for a missing or wrong token.
    """
    if not token_sha256:
        raise AdminDenied("admin routes are disabled: deploy with RAYMEDIC_ADMIN_TOKEN set "
                          "(raymedic up sets one) and send Authorization: Bearer <token>", status=403)
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not token:
        raise AdminDenied("missing admin token: send Authorization: Bearer $RAYMEDIC_ADMIN_TOKEN")
    if not hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), token_sha256):
        raise AdminDenied("wrong admin token: use the RAYMEDIC_ADMIN_TOKEN the service was deployed with")


def controller_reply(reply: Any) -> Any:
    """The controller's answer to an admin call, its refusals (``{"error", "status"}``) raised as a 4xx.

    Raises:
        InvalidRequest: the controller refused (status from its answer, default 409).
    """
    if isinstance(reply, dict) and "error" in reply:
        raise InvalidRequest(reply["error"], status=int(reply.get("status", 409)))
    return reply


class AdminRoutes:
    """The admin routes, mixed into the gateway deployment (routes: :mod:`serve_apps.gateway.routes`).

    Needs from the deployment: the admin token's hash and the model lanes. Each call acts on one model's
    controller: ``?model=NAME``, by default the first model the gateway serves.
    """

    _admin_sha: str | None
    _lanes: dict[str, ModelLane]

    def _admin_link(self, request: Request) -> ControllerLink:
        """The controller link of the model the admin request names, once the token checks out."""
        check_admin(request, self._admin_sha)
        return pick_lane(self._lanes, request.query_params.get("model")).link

    async def admin_pause(self, request: Request) -> dict[str, Any]:
        """
        \f
        Pause healing: the controller keeps observing and recording but takes no action.
        """
        return await self._admin_link(request).call("set_paused", True, "admin route")

    async def admin_approve(self, request: Request) -> dict[str, Any]:
        """
        \f
        Approve a pending proposal (``approve`` mode): ``{"incident": "<id>"}``.
        """
        return await self._decide(request, True)

    async def admin_reject(self, request: Request) -> dict[str, Any]:
        """
        \f
        Reject a pending proposal (``approve`` mode): ``{"incident": "<id>"}``.
        """
        return await self._decide(request, False)

    async def _decide(self, request: Request, approve: bool) -> dict[str, Any]:
        link = self._admin_link(request)
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("incident"), str):
            raise InvalidRequest('send {"incident": "<id>"}; `raymedic status` lists the pending proposals',
                                 status=400)
        return controller_reply(await link.call("decide", body["incident"], approve, "admin route"))

    async def admin_mode(self, request: Request) -> dict[str, Any]:
        """
        \f
        Switch the control mode: ``auto`` acts, ``approve`` proposes and waits for an operator.
        """
        link = self._admin_link(request)
        body = await json_body(request)
        if not isinstance(body, dict) or body.get("mode") not in ("auto", "approve"):
            raise InvalidRequest('send {"mode": "auto"} or {"mode": "approve"}', status=400)
        return controller_reply(await link.call("set_mode", body["mode"], "admin route"))

    async def admin_retrain(self, request: Request) -> dict[str, Any]:
        """
        \f
        Ask for a retrain now (an empty body, or ``{"reason": "<why>"}`` for the audit log).
        """
        link = self._admin_link(request)
        body = await json_body(request) if await request.body() else {}
        if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
            raise InvalidRequest('send {} or {"reason": "<why>"}', status=400)
        return controller_reply(await link.call("request_retrain", body.get("reason", ""), "admin route"))

    async def admin_rollback(self, request: Request) -> dict[str, Any]:
        """
        \f
        Roll members back to their previous champion (every member, or ``{"members": [...]}``).
        """
        link = self._admin_link(request)
        body = await json_body(request) if await request.body() else {}
        members = body.get("members") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not (members is None or (
                isinstance(members, list) and all(isinstance(m, str) for m in members))):
            raise InvalidRequest('send {} to roll back every member, or {"members": ["<name>", ...]}', status=400)
        return controller_reply(await link.call("rollback", members, "admin route"))

    async def admin_promote(self, request: Request) -> dict[str, Any]:
        """
        \f
        Make a registered version a member's champion, swapped in on every replica:
        ``{"member": "<name>", "version": "<version id or alias>", "reason": "<why, optional>"}``; the
        controller refuses an unknown member or version (404, naming those there are) and a promotion
        during a live trial or another deployment (409).
        """
        link = self._admin_link(request)
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("member"), str) or not isinstance(
                body.get("version"), str) or not isinstance(body.get("reason", ""), str):
            raise InvalidRequest('send {"member": "<name>", "version": "<version id or alias>", '
                                 '"reason": "<why (optional)>"}', status=400)
        who = f"admin route: {body['by']}" if isinstance(body.get("by"), str) and body["by"] else "admin route"
        return controller_reply(await link.call("promote", body["member"], body["version"],
                                                body.get("reason", ""), who))

    async def admin_trial(self, request: Request) -> dict[str, Any]:
        """Put a registered version on live trial next to its champion (canary or shadow, per config).
        \f
        The controller deploys the version as a canary application and publishes the
        trial to the gateways at the next sync; its verdict comes from the trial's labels.
        """
        link = self._admin_link(request)
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("member"), str) or not isinstance(
                body.get("version", "challenger"), str) or body.get("mode") not in (None, "canary", "shadow"):
            raise InvalidRequest('send {"member": "<name>", "version": "<version id or alias, default '
                                 'challenger>", "mode": "canary" or "shadow" (default: the config\'s)}',
                                 status=400)
        return controller_reply(await link.call(
            "trial", body["member"], body.get("version", "challenger"), "admin route", body.get("mode")))

    async def admin_resume(self, request: Request) -> dict[str, Any]:
        """
        \f
        Resume healing after a pause.
        """
        return await self._admin_link(request).call("set_paused", False, "admin route")
