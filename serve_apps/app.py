"""The Serve entry point: ``import_path: serve_apps.app:build_app`` (a contract of the config file).

This module is the composition root and belongs to the app layer, not to
serving: it wires the serving application (:mod:`serve_apps.application`) to the
healing controller (:mod:`controllers.client`). ``serve deploy`` has no other
hook than the builder, so building the application is also where the controller
is made sure to exist; ``raymedic up`` goes through the same function.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from controllers.client import ensure_controller
from controllers.models.jobs import current_runtime_env
from raymedic.config import parse_config
from serve_apps.application import admin_token_sha256, build_application, resolve_models

__all__ = ["build_app"]


def build_app(args: dict[str, Any]) -> Application:
    """Build the raymedic Serve application from the config's ``args`` (every model it serves) and make sure
    its healing controller exists, configured with the same configs and versions.

    The application's ``runtime_env`` (a sibling of ``args`` in the Serve document) is the one this
    builder runs in: ``serve deploy`` runs it in a task with that environment, ``raymedic up`` in its
    driver whose job has it. Serve gives it to every deployment; the controller is created in it too.
    """
    config = parse_config(args).resolved()
    models = resolve_models(config)
    app = build_application(models)  # binds only: a bad config fails before anything starts
    if config.controller.enabled:
        ensure_controller([(m.config, m.versions) for m in models], admin_sha=admin_token_sha256(),
                          runtime_env=current_runtime_env())
    return app
