"""Names and storage keys that more than one layer relies on.

The gateway finds the controller by name, the controller finds replicas by
Serve's actor names, a retrain job reads the file the controller wrote and the
controller reads the record the job wrote back. Those names are the contract
between layers that never import each other, so they are declared once, here,
in the kernel every layer may import. The user-facing ones are ARCHITECTURE.md
contracts: keep them.
"""

from __future__ import annotations

__all__ = [
    "APP_NAME",
    "GATEWAY_DEPLOYMENT",
    "CANARY_APP_NAME",
    "canary_app_name",
    "CONTROLLER_MODELS_KEY",
    "CONTROLLER_NAME",
    "CONTROLLER_NAMESPACE",
    "SERVE_NAMESPACE",
    "replica_actor_name",
    "ADMIN_TOKEN_ENV",
    "ADMIN_TOKEN_SHA_ENV",
    "HEAD_NODE_RESOURCE",
    "ENSEMBLE",
    "CHALLENGER_SUFFIX",
    "challenger_source",
    "controller_config_key",
    "controller_state_key",
    "retrain_record_key",
    "audit_prefix",
    "series_prefix",
    "predictions_prefix",
    "STORAGE_FAULTS",
    "NODE_FAULTS",
    "feedback_prefix",
    "review_prefix",
    "retrain_job_id",
    "CHAOS_FAULTS",
    "GPU_FAULT_KINDS",
    "REPLICA_BENCH_FAULTS",
    "INFRA_BENCH_FAULTS",
]

# ---- Ray and Serve names ---------------------------------------------------------------

APP_NAME = "raymedic"
"""Serve application name (ARCHITECTURE.md contract)."""

GATEWAY_DEPLOYMENT = "gateway"
"""The ingress deployment's name; no member may take it (ARCHITECTURE.md contract)."""

CANARY_APP_NAME = "raymedic-canary"
"""Prefix of the Serve applications (one per member) that serve challengers on trial: deploying or
deleting one never touches the main application."""


def canary_app_name(member: str) -> str:
    """The Serve application that serves ``member``'s challenger while it is on trial."""
    return f"{CANARY_APP_NAME}-{member}"


CONTROLLER_NAME = "raymedic-controller"
CONTROLLER_NAMESPACE = "raymedic"
"""The healing controller actor's name and namespace (ARCHITECTURE.md contract): gateways and the
CLI reach it by name, never by importing it."""

SERVE_NAMESPACE = "serve"
"""The Ray namespace Serve puts every replica actor in."""


def replica_actor_name(app: str, deployment: str, replica: str) -> str:
    """Serve's actor name for one replica (``SERVE_REPLICA::<app>#<deployment>#<id>``): the handle
    the controller kills when Serve's own view does not name the actor yet."""
    return f"SERVE_REPLICA::{app}#{deployment}#{replica}"


ADMIN_TOKEN_ENV = "RAYMEDIC_ADMIN_TOKEN"
"""The admin token the CLI sends and the deployer's environment carries (ARCHITECTURE.md contract)."""
ADMIN_TOKEN_SHA_ENV = "RAYMEDIC_ADMIN_TOKEN_SHA256"
"""The admin token's hash, for a deployer that has only the hash (never the token)."""

HEAD_NODE_RESOURCE = "node:__internal_head__"
"""Ray's built-in custom resource of the head node (any Ray cluster, KubeRay included): asking for a
sliver of it pins an actor to the head, which holds the GCS and outlives any worker node."""

# ---- sources of an answer ----------------------------------------------------------------

ENSEMBLE = "ensemble"
"""Names the combined answer next to the members' in labelled pairs and performance reports; no
member may take it."""

CHALLENGER_SUFFIX = "@challenger"
"""Key of a challenger's answer next to its member's in the gateway's labelled pairs."""


def challenger_source(member: str) -> str:
    """The labelled-pair key of ``member``'s challenger on trial."""
    return f"{member}{CHALLENGER_SUFFIX}"


# ---- storage keys (relative to storage_path) -------------------------------------------------

def controller_config_key(model: str) -> str:
    """The config and serving versions ``raymedic up`` / ``serve deploy`` hand the controller; a
    retrain job reads the same file, so both run on the config that was deployed."""
    return f"controller/{model}/config.json"


CONTROLLER_MODELS_KEY = "controller/models.json"
"""The models the controller actor heals (``{"models": [...]}``, the service's first model first): written
by ``raymedic up`` / ``serve deploy`` before the actor is created or reloaded, so an actor Ray restarts
heals the models last deployed."""


def controller_state_key(model: str) -> str:
    """The controller's checkpoint: a restarted controller resumes from it."""
    return f"controller/{model}/state.json"


def retrain_record_key(model: str, record: str) -> str:
    """Where a retrain job writes its outcome and the controller reads it back."""
    return f"retrain/{model}/{record}.json"


def audit_prefix(model: str) -> str:
    """The directory of ``model``'s append-only audit files."""
    return f"audit/{model}"


def series_prefix(model: str) -> str:
    """The directory of ``model``'s time series for reports (one JSONL file per hour and controller process)."""
    return f"series/{model}"


def predictions_prefix(model: str) -> str:
    """The gateway's prediction log (hour partitions of Parquet); retrain jobs read it."""
    return f"logs/{model}/predictions"


def feedback_prefix(model: str) -> str:
    """The gateway's feedback (label) log; retrain jobs join it to the predictions."""
    return f"logs/{model}/feedback"


def review_prefix(model: str) -> str:
    """The gateway's review queue log (hour partitions of Parquet: answers queued for review, and the
    ones dropped when it was full); every gateway replica reads the others' from it."""
    return f"logs/{model}/review"


def retrain_job_id(model: str, record: str) -> str:
    """The Ray job submission id of a retrain: an operator finds it in the dashboard's Jobs view."""
    return f"raymedic-retrain-{model}-{record}"


# ---- chaos ---------------------------------------------------------------------------------------

CHAOS_FAULTS = ("kill", "hang", "slow", "wrong", "error", "leak", "gpu-fault")
"""The replica faults ``raymedic chaos`` injects (the CLI and the gateway's chaos route offer exactly these);
``bench replica-faults`` measures all but ``leak``, which takes a minute to matter (``bench infra-faults``
measures it), and ``gpu-fault``, a fault double of a GPU's (healed on the error path, tested in
``tests/test_healing.py``)."""
GPU_FAULT_KINDS = ("oom", "device-lost", "ecc")
"""What ``chaos gpu-fault --kind`` injects (default ``oom``): :mod:`serve_apps.gpu`'s fault double."""
REPLICA_BENCH_FAULTS = tuple(f for f in CHAOS_FAULTS if f not in ("leak", "gpu-fault"))
"""The faults ``bench replica-faults`` runs (and its ``--faults`` accepts)."""
STORAGE_FAULTS = ("disk-fill",)
"""Faults of the service's storage rather than a replica (``raymedic chaos disk-fill --mb N``): no member."""
NODE_FAULTS = ("cpu-hog",)
"""Faults of a node rather than a replica (``raymedic chaos cpu-hog --node NODE``): no member."""
INFRA_BENCH_FAULTS = ("leak", "disk-fill", "spike")
"""The faults ``bench infra-faults`` runs by default and its ``--faults`` accepts (its fault table,
:data:`raymedic.bench.infra.INFRA_FAULTS`, has one entry per name; ``starved-node`` comes next)."""
