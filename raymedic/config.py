"""Typed configuration, read once at the boundary.

One YAML file serves two readers: it is a valid Ray Serve config (``serve deploy
cluster/raymedic.yaml`` works) and ``raymedic up --config`` reads the same file.
raymedic's own settings live in ``applications[<name>].args``, which Serve hands to
the app builder :func:`serve_apps.app.build_app`; validating them here means both
paths fail the same way on a bad value, with a message that says the fix.

Defaults are declared once, below, each with the reason for its value.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, ValidationInfo, field_validator, model_validator

from raymedic.errors import ConfigError
from raymedic.keys import APP_NAME, ENSEMBLE, GATEWAY_DEPLOYMENT

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "MemberConfig",
    "SearchDomain",
    "TRAINING_KNOBS",
    "ClientKey",
    "GatewayConfig",
    "ReviewConfig",
    "ScalingConfig",
    "TrainingConfig",
    "ControllerConfig",
    "ChaosConfig",
    "DataConfig",
    "RolloutConfig",
    "RetrainingConfig",
    "ProbationConfig",
    "FeaturePolicy",
    "PerformanceSettings",
    "error_design_problem",
    "RaymedicConfig",
    "RuntimeEnv",
    "ServeFile",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "cluster" / "raymedic.yaml"

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MemberKind = Literal["logistic", "mlp", "tabresnet"]
_MODULE_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
"""``package.module:ClassName``, the form of Python entry points."""

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
"""Ray Tune's names for the distributions a ``search_space`` entry may draw from."""

TRAINING_KNOBS = {"learning_rate": "lr", "weight_decay": "weight_decay", "batch_size": "batch_size",
                  "epochs": "epochs"}
"""Training settings a ``search_space`` may search besides the architecture's own hyperparameters:
TrainingConfig field → the short name also accepted (``lr``, as in the architecture's example)."""


class SearchDomain(BaseModel):
    """One searched parameter: exactly one of Ray Tune's ``choice``, ``uniform``, ``loguniform`` or
    ``randint``, with Tune's semantics (``randint``'s upper bound is exclusive, as in ``tune.randint``).

    Written in YAML as ``{loguniform: [1.0e-4, 1.0e-1]}``; checked here so a bad space fails when the
    config is read, naming the parameter and the fix, instead of inside a Tune trial.

    >>> SearchDomain.model_validate({"randint": [1, 4]}).describe()
    'randint [1, 4)'
    """

    model_config = ConfigDict(frozen=True)

    distribution: Literal["choice", "uniform", "loguniform", "randint"]
    values: tuple[Any, ...]

    @model_validator(mode="before")
    @classmethod
    def _one_distribution(cls, raw: Any) -> Any:
        if isinstance(raw, SearchDomain):
            return raw
        if isinstance(raw, dict) and set(raw) == {"distribution", "values"}:  # the dumped form: checked the same
            raw = {raw["distribution"]: raw["values"]}
        if not isinstance(raw, dict) or len(raw) != 1:
            several = f" (it gives {len(raw)}: {', '.join(map(str, raw))})" if isinstance(raw, dict) else ""
            raise ValueError("a search_space entry must be a mapping with exactly one distribution, e.g. "
                             "{loguniform: [0.0001, 0.1]} or {choice: [8, 16, 32]}; use one of "
                             f"{', '.join(DISTRIBUTIONS)}{several}")
        ((name, values),) = raw.items()
        if name not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {name!r}: use one of {', '.join(DISTRIBUTIONS)} (Ray Tune's "
                             "names)")
        if not isinstance(values, (list, tuple)):
            # ValueError, not TypeError: pydantic turns only ValueError into a located config error.
            raise ValueError(  # noqa: TRY004
                f"{name} takes a list ({'the values' if name == 'choice' else '[lo, hi]'}), got {values!r}")
        values = tuple(values)
        if name == "choice":
            if not values:
                raise ValueError("choice needs at least one value, e.g. {choice: [8, 16, 32]}")
            return {"distribution": name, "values": values}
        if len(values) != 2:
            raise ValueError(f"{name} takes exactly two bounds [lo, hi], got {len(values)}: {list(values)}")
        lo, hi = values
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numeric or (name == "randint" and not all(float(v).is_integer() for v in values)):
            kind = "whole numbers" if name == "randint" else "numbers"
            raise ValueError(f"{name} bounds must be {kind}, got {list(values)}")
        if not lo < hi:
            raise ValueError(f"{name} needs lo < hi, got [{lo}, {hi}]"
                             + (" (randint's upper bound is exclusive: [lo, lo + 1] draws only lo)"
                                if name == "randint" else ""))
        if name == "loguniform" and lo <= 0:
            raise ValueError(f"loguniform bounds must be positive (0 < lo < hi), got [{lo}, {hi}]: use uniform "
                             "for a range that includes 0")
        if name == "randint":
            values = (int(lo), int(hi))
        return {"distribution": name, "values": values}

    def describe(self) -> str:
        """How the search report prints it, e.g. ``loguniform [0.0001, 0.1]`` or ``choice [8, 16]``."""
        if self.distribution == "choice":
            return f"choice {list(self.values)}"
        lo, hi = self.values
        return f"{self.distribution} [{lo:g}, {hi:g}" + (")" if self.distribution == "randint" else "]")

    def to_yaml(self) -> dict[str, list[Any]]:
        """The form it was written in (what ``model_dump`` gives back, so a dumped config reloads)."""
        return {self.distribution: list(self.values)}


DEFAULT_MAX_TENSOR_ELEMENTS = 1_048_576
"""``gateway.max_tensor_elements``'s default (a full batch of 1024 32x32 images), also for callers without a
config (tests, tools)."""


class _Strict(BaseModel):
    # A misspelt key is a silent misconfiguration otherwise; refuse it.
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemberConfig(_Strict):
    """One ensemble member: an architecture served as its own Serve deployment."""

    name: str = Field(pattern=_NAME, description="Deployment name, also the registry key.")
    kind: MemberKind | None = Field(None, description="A built-in architecture: logistic (simple fallback), mlp "
                                    "or tabresnet. Give this or `module`.")
    module: str | None = Field(None, description="Your own architecture instead of a built-in "
                               "`kind`: an importable `torch.nn.Module` subclass as \"package.module:ClassName\", "
                               "built as ClassName(input_shape=(...), n_classes=K, **hyperparameters); forward(x) "
                               "takes a float tensor [N, *input_shape] and returns logits [N, K]. Its code is never "
                               "stored: the registry keeps this path, the hyperparameters and the weights, so the "
                               "module must be importable wherever the member trains or serves.")
    fallback: bool = Field(False, description="Answers alone, flagged degraded, when too few members answer.")
    replicas: int = Field(2, ge=1, le=64, description="Two, so a replica fault never takes a member down.")
    standby: int = Field(0, ge=0, le=8, description="Hot standby replicas on top of `replicas`: started, "
                         "probed with golden inputs, kept out of user traffic. A faulty replica is replaced "
                         "by a standby at once (no wait for a new worker to start and load the model, 10-15 s "
                         "on a busy 2-core machine), and Serve's replacement becomes the next standby.")
    num_cpus: float = Field(0.25, gt=0, description="Fractional so a 2-core laptop fits the whole ensemble.")
    num_gpus: float = Field(0.0, ge=0, description="Set >0 on GPU clusters; fractional shares a GPU.")
    max_ongoing_requests: int = Field(8, ge=1, description="Low, so a hung replica fills up and is routed around.")
    max_replicas_per_node: int | None = Field(None, ge=1, description="Spread replicas across nodes.")
    max_replicas: int | None = Field(
        None, ge=1, le=64, description="Autoscaling: the most replicas that serve user traffic under load "
        "(the `standby` replicas come on top). Ray Serve's autoscaler then runs between `replicas + standby` "
        "and `max_replicas + standby` replicas, on the member calls in flight (`target_ongoing_requests`) and "
        "the `scaling` delays; scaling in never goes below `replicas + standby`. Unset: no autoscaling, always "
        "`replicas + standby`.")
    target_ongoing_requests: float = Field(
        1.0, gt=0, le=1000, description="Autoscaling (with `max_replicas`): the member calls in flight (running "
        "and queued) per serving replica that Serve scales to keep. Low, because the gateway coalesces small "
        "requests into one call per member (`gateway.coalesce_*`): a call in flight is many requests.")
    health_check_period_s: float = Field(
        2.0, gt=0, le=60, description="Serve's liveness check; short so a dead replica is replaced quickly."
    )
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="Architecture knobs (for a `module`, "
                                            "the keyword arguments its constructor takes besides input_shape and n_classes).")
    search_space: dict[str, SearchDomain] | None = Field(
        None, description="What `raymedic search` and the automatic search on a failed gate explore for this "
        "member: parameter → exactly one of {choice: [v1, v2, ...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]} "
        "(0 < lo < hi) or {randint: [lo, hi]} (Ray Tune's semantics: whole numbers lo <= n < hi, the upper bound "
        "EXCLUSIVE). A parameter is either a training knob — lr (or learning_rate), weight_decay, batch_size, "
        "epochs (capped by the search's --max-epochs; ASHA may stop a trial sooner) — or an architecture "
        "hyperparameter: for a built-in kind its knobs (mlp: hidden, layers, dropout; tabresnet: hidden, blocks, "
        "dropout; logistic: none; anything else is refused), for a `module` any keyword its constructor takes "
        "(a sampled combination it rejects fails that trial only). Hyperparameters not searched keep their "
        "`hyperparameters` value. Unset: a built-in is searched over raymedic's default space for its kind, a "
        "`module` over lr and weight_decay only.")
    train_loop: str | None = Field(
        None, description="Your own Ray Train train_loop_per_worker as \"package.module:function\", replacing "
        "raymedic's supervised loop for this member (README, \"Your own training loop\"). It is called with one "
        "dict: member, arch (the ArchSpec dict), model (a freshly built network, same weights on every worker), "
        "input_shape, n_classes, classes, x_train/x_val (float32 [N, *input_shape], preprocessed), y_train/y_val "
        "(int64 class indices), class_counts, class_weights (n / (K · count), balanced), learning_rate, "
        "weight_decay, epochs, batch_size, seed, use_gpu, mixed_precision. It must call ray.train.report(metrics, "
        "checkpoint=ray.train.Checkpoint.from_directory(d)) from rank 0 at least once, d holding "
        "weights.safetensors: safetensors.torch.save_file of the plain network's state_dict (unwrap "
        "DistributedDataParallel's .module). raymedic loads the last reported checkpoint into a network rebuilt "
        "from the spec, evaluates it on the validation split and registers it like any member. Importable "
        "wherever the member trains; searching such a member is refused (the search runs raymedic's own loop).")
    memory_limit_mb: float | None = Field(
        None, gt=0, description="Resident memory (MB) one replica may reach: a replica whose memory grows "
        "steadily and is forecast to cross this within `controller.leak_horizon_s` is drained and restarted "
        "first. Unset: the limit is what the replica may grow to before its node reaches Ray's memory-monitor "
        "threshold (RAY_memory_usage_threshold, default 0.95 of the node's memory), where Ray starts killing "
        "workers.")

    @model_validator(mode="after")
    def _scale_bounds(self) -> "MemberConfig":
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"member {self.name!r}: max_replicas ({self.max_replicas}) must be >= replicas "
                             f"({self.replicas}): raise max_replicas, lower replicas, or leave max_replicas out "
                             "for a fixed replica count")
        return self

    @property
    def autoscaled(self) -> bool:
        """Whether Serve's autoscaler sizes this member (``max_replicas`` is set)."""
        return self.max_replicas is not None

    @property
    def min_serve_replicas(self) -> int:
        """The fewest replicas Serve runs: ``replicas + standby`` (the floor scaling in never crosses)."""
        return self.replicas + self.standby

    @property
    def max_serve_replicas(self) -> int:
        """The most replicas Serve runs: ``max_replicas + standby`` (``replicas + standby`` unscaled)."""
        return (self.max_replicas if self.max_replicas is not None else self.replicas) + self.standby

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v == GATEWAY_DEPLOYMENT:
            raise ValueError(f"{GATEWAY_DEPLOYMENT!r} is the ingress deployment's name; choose another member name")
        if v == ENSEMBLE:
            raise ValueError(f"{ENSEMBLE!r} names the combined model in performance reports; choose another "
                             "member name")
        return v

    @field_validator("module", "train_loop")
    @classmethod
    def _import_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not re.fullmatch(_MODULE_PATH, v):
            what, example = (("class", "SmallCNN") if info.field_name == "module" else ("function", "train_loop"))
            raise ValueError(f"{info.field_name} must be an import path with the {what} after a colon, such as "
                             f"\"my_models.digits:{example}\"")
        return v

    @field_validator("search_space")
    @classmethod
    def _search_names(cls, v: dict[str, SearchDomain] | None) -> dict[str, SearchDomain] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("search_space is empty: name at least one parameter, e.g. "
                             "{lr: {loguniform: [0.0001, 0.1]}}, or leave search_space out for the default space")
        if "lr" in v and "learning_rate" in v:
            raise ValueError("search_space names both lr and learning_rate (the same knob): keep one")
        # One name per knob inside: the short alias becomes the TrainingConfig field name.
        aliases = {short: full for full, short in TRAINING_KNOBS.items()}
        return {aliases.get(k, k): d for k, d in v.items()}

    @field_serializer("search_space")
    def _dump_space(self, v: dict[str, SearchDomain] | None) -> dict[str, dict[str, list[Any]]] | None:
        return None if v is None else {k: d.to_yaml() for k, d in v.items()}

    @model_validator(mode="after")
    def _one_architecture(self) -> "MemberConfig":
        if (self.kind is None) == (self.module is None):
            raise ValueError(f"member {self.name!r} needs exactly one of `kind` (a built-in: logistic, mlp, "
                             "tabresnet) or `module` (your own torch.nn.Module, \"package.module:ClassName\")"
                             + ("; it gives both" if self.kind else ""))
        return self

    @property
    def architecture(self) -> str:
        """What the member runs, for messages and reports: its built-in kind or its module path."""
        return self.module or str(self.kind)


def _default_members() -> list[MemberConfig]:
    # Three diverse architectures; the linear one is cheap and robust, so it is the fallback.
    return [
        MemberConfig(name="logistic", kind="logistic", fallback=True),
        MemberConfig(name="mlp", kind="mlp"),
        MemberConfig(name="tabresnet", kind="tabresnet"),
    ]


class ClientKey(_Strict):
    """One client that may call predict and feedback when ``gateway.client_auth`` is on.

    The key itself never enters the config or reaches the gateway: the config names where the deployer
    finds it (an environment variable or a file, read when the application is built) or holds its sha256,
    and only the sha256 is shipped to the gateway replicas.
    """

    name: str = Field(pattern=_NAME, description="The client's name: what its feedback rate limit is kept by "
                      "and what the gateway's logs say.")
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="The key's sha256 in hex "
                                   "(`printf %s \"$KEY\" | sha256sum`): the config then holds no secret at all.")
    key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="An environment variable "
                                "of the deploying process (`raymedic up`, Serve's controller for `serve deploy`) "
                                "holding the key.")
    key_file: str | None = Field(None, min_length=1, description="A file holding the key (its first line), read "
                                 "by the deploying process; keep it private (0600).")

    @model_validator(mode="after")
    def _one_source(self) -> "ClientKey":
        given = [k for k in ("key_sha256", "key_env", "key_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"gateway.clients {self.name!r} needs exactly one of key_sha256, key_env, key_file "
                             f"(got {given or 'none'})")
        return self

    def sha256(self) -> str:
        """The key's sha256 (hex), read from where the config says.

        Raises:
            ConfigError: the variable is unset or empty, or the file cannot be read or is empty.
        """
        if self.key_sha256 is not None:
            return self.key_sha256
        if self.key_env is not None:
            key = os.environ.get(self.key_env, "").strip()
            if not key:
                raise ConfigError(f"gateway.clients {self.name!r}: ${self.key_env} is not set in the deploying "
                                  f"process: export it (or give key_file / key_sha256)")
        else:
            path = Path(str(self.key_file)).expanduser()
            try:
                key = (path.read_text().splitlines() or [""])[0].strip()
            except OSError as exc:
                raise ConfigError(f"gateway.clients {self.name!r}: cannot read key_file {path} ({exc.strerror}); "
                                  "fix the path or its permissions") from None
            if not key:
                raise ConfigError(f"gateway.clients {self.name!r}: key_file {path} is empty; write the key in it")
        return hashlib.sha256(key.encode()).hexdigest()


class GatewayConfig(_Strict):
    """The HTTP ingress: validation, fan-out, combination, logging, client access."""

    replicas: int = Field(2, ge=1, le=64, description="Two, so the ingress survives a replica loss.")
    max_replicas: int | None = Field(
        None, ge=1, le=64, description="Autoscaling: the most gateway replicas under load; Ray Serve's "
        "autoscaler runs between `replicas` and this on the requests in flight per replica "
        "(`target_ongoing_requests`) and the `scaling` delays. Unset: always `replicas`.")
    target_ongoing_requests: float = Field(
        16.0, gt=0, le=10_000, description="Autoscaling (with `max_replicas`): predict requests in flight per "
        "gateway replica that Serve scales to keep; below `max_inflight`, so replicas are added before any "
        "replica has to shed load.")
    latency_slo_ms: float = Field(
        250.0, gt=0, le=600_000, description="The service's latency objective: p99 of predict requests, in ms. "
        "GET /v1/status shows each gateway replica's p50/p99 over its last requests against it "
        "(`gateway.latency`), and the controller audits `slo-breach` / `slo-restored` from the gateways' "
        "reports; scaling out is meant to keep p99 inside it while capacity arrives.")
    num_cpus: float = Field(0.25, gt=0)
    max_ongoing_requests: int = Field(64, ge=1)
    max_inflight: int = Field(
        48, ge=1, description="Predict requests one gateway replica works on at once; more get a fast 503 with "
        "Retry-After (load shedding) instead of queueing behind work the machine cannot finish in time. Requests "
        "are spread over the gateway replicas, so a replica at this limit means no capacity is left anywhere: "
        "with `max_replicas`, Serve has been adding replicas since `target_ongoing_requests`, and sheds only "
        "once they are all full (or still starting).")
    max_queued_requests: int = Field(
        100, ge=-1, description="Requests Serve queues for the gateway beyond max_ongoing_requests; past it Serve "
        "itself answers 503 (-1: unbounded).")
    member_timeout_s: float = Field(
        1.0, gt=0, le=60, description="Per-member deadline; a late member is retried once on another replica."
    )
    min_members: int = Field(
        2, ge=1, description="Members that must answer for a non-degraded answer (a majority of three)."
    )
    max_batch_size: int = Field(1024, ge=1, description="Instances per request; larger batches get 413.")
    max_tensor_elements: int = Field(
        DEFAULT_MAX_TENSOR_ELEMENTS, ge=1, description="Numbers all tensor features of one request may hold together (counted from "
        "the shapes sent, before the values are read); more get 413 naming the feature. The default is a full "
        "batch (max_batch_size 1024) of 32x32 images: about 8 MB of JSON numbers and 4 MB as float32, which a "
        "gateway replica parses in well under a second; a body past it would hold the event loop for longer.")
    reject_out_of_range: bool = Field(
        False, description="Reject numeric values outside the training range instead of serving them."
    )
    log_flush_s: float = Field(
        0.5, gt=0, le=30, description="Prediction log flush period; feedback is written before its 2xx."
    )
    label_horizon_s: float = Field(
        86_400.0, ge=60, description="A label is final: for answers younger than this, the same label sent again "
        "is a no-op (listed in repeated_ids), a different one is refused with 409, and only the first counts in "
        "the weights, accuracy windows, drift detectors and trials. Labels for older answers are still written "
        "(retraining joins the first one) but not counted live. Each gateway replica remembers at most 200,000 "
        "labels; past that the oldest answers are treated as older than the horizon.")
    log_max_pending_rows: int = Field(
        100_000, ge=100, description="Prediction rows a gateway replica buffers while the log cannot be written "
        "(a full disk): past it the oldest are dropped and counted (status prediction_log.dropped_rows, "
        "raymedic_prediction_log_dropped_rows_total); requests are answered either way.")
    hedge_after_s: float = Field(
        0.25, gt=0, le=60, description="A member call still unanswered after this is hedged on another replica."
    )
    hedge_budget: float = Field(
        0.1, ge=0, le=1, description="Hedged calls may add at most this share of extra member calls.")
    eject_s: float = Field(
        3.0, ge=0, le=600, description="A replica that failed or timed out a call is avoided locally this long."
    )
    sync_period_s: float = Field(
        0.5, gt=0, le=10, description="Telemetry to / weights from the controller, one batched call per period "
        "(weights reach every gateway within one period plus a controller step)."
    )
    coalesce_requests: int = Field(
        16, ge=1, le=256, description="Small predict requests in flight together share one call per member "
        "(Serve's @serve.batch): at most this many per call; 1 turns it off. Under load this is what keeps the "
        "member calls per second, and so the CPU per request, from growing with the request rate.")
    coalesce_rows: int = Field(
        32, ge=1, description="Only requests of at most this many rows are coalesced; larger ones are batches "
        "already and go out alone.")
    coalesce_wait_s: float = Field(
        0.0, ge=0, le=0.1, description="0 (the default): a request leaves at once while fewer than "
        "`coalesce_concurrency` coalesced calls are in flight, and those arriving while all are busy leave "
        "together in the next, so an idle gateway adds no wait (serve_apps/gateway/coalesce.py). Above 0: "
        "Serve's @serve.batch, which holds each group this long for company (at 20 req/s a 2 ms wait was 2 ms "
        "on nearly every answer: `raymedic bench saturation --profile`).")
    coalesce_concurrency: int = Field(
        2, ge=1, le=64, description="Coalesced calls in flight at once per gateway replica; requests arriving "
        "meanwhile wait and leave together in the next one.")
    on_head: bool = Field(
        False, description="Place gateway replicas on the Ray head node (custom resource "
        "node:__internal_head__). Where the HTTP proxy runs on the head only (`raymedic up --nodes N` turns "
        "this on), a worker node's loss then never drops a request in flight through a gateway; off where "
        "proxies run on every node and gateways should spread with them.")
    profile: bool = Field(
        False, description="Time each stage of every V1 predict request in the gateway (parse, validate, "
        "fan-out, combine, log, telemetry, encode; serve_apps/stages.py) and send the figures back in the "
        "answer's Server-Timing header, for `raymedic bench saturation --profile`. Off by default: off, no clock "
        "is read and no header added; on, answers are unchanged.")
    client_auth: bool = Field(
        False, description="Predict (V1 and V2) and feedback need a client key, `Authorization: Bearer KEY` "
        "(or `X-API-Key: KEY`), one of `clients`; without one the answer is a 401 saying what to send. Off by "
        "default: a service on 127.0.0.1 is reached only from its machine. Turn it on wherever the HTTP port "
        "is reachable from a network.")
    clients: list[ClientKey] = Field(
        default_factory=list, description="The clients `client_auth` lets in (name and where the key is).")
    feedback_rate_per_s: float | None = Field(
        None, gt=0, le=100_000, description="Feedback requests per second one client may send to one gateway "
        "replica (a token bucket of `feedback_burst`); past it a 429 with Retry-After. Kept per client name "
        "with `client_auth`, else per client address (the address a `trusted_proxies` proxy forwarded in "
        "X-Forwarded-For, else the caller's). Off by default; labels are idempotent per answer, so a repeat "
        "cannot steer the ensemble twice. E.g. 20.")
    feedback_burst: int = Field(
        40, ge=1, le=1_000_000, description="Feedback requests a client may send at once before "
        "`feedback_rate_per_s` paces it (the token bucket's size).")
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128", "host"], description="Callers whose "
        "X-Forwarded-For is believed when telling clients apart (per-address feedback pacing): networks "
        "(`10.0.0.0/8`, `fd00::/8`, one address) or `host` (every address of the machine the gateway replica "
        "runs on). Serve's HAProxy reaches the gateway from its node's address and raymedic makes it add "
        "X-Forwarded-For, so on one machine the default finds each client; on a multi-node cluster add the "
        "nodes' network (e.g. the pod CIDR), or addresses are those of the nodes' proxies. The rightmost "
        "forwarded address not itself trusted is the client: a client cannot forge its way past a trusted hop.")


    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "host":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"gateway.trusted_proxies entry {entry!r} is not a network or an address: "
                                 "write e.g. 10.0.0.0/8, 192.168.1.5 or fd00::/8, or `host`") from None
        return value

    @model_validator(mode="after")
    def _clients_known(self) -> "GatewayConfig":
        if self.client_auth and not self.clients:
            raise ValueError("gateway.client_auth is on but gateway.clients is empty: no client could call "
                             "predict or feedback; add clients ({name, key_env | key_file | key_sha256}) or turn "
                             "client_auth off")
        names = [c.name for c in self.clients]
        if len(set(names)) != len(names):
            raise ValueError(f"gateway.clients names must be unique: {sorted(n for n in set(names) if names.count(n) > 1)}")
        return self

    @model_validator(mode="after")
    def _shed_before_queueing(self) -> "GatewayConfig":
        if self.max_inflight > self.max_ongoing_requests:
            raise ValueError(f"gateway.max_inflight ({self.max_inflight}) must be <= max_ongoing_requests "
                             f"({self.max_ongoing_requests}), or requests queue before they can be shed")
        if self.max_replicas is not None:
            if self.max_replicas < self.replicas:
                raise ValueError(f"gateway.max_replicas ({self.max_replicas}) must be >= gateway.replicas "
                                 f"({self.replicas}): raise max_replicas or leave it out for a fixed count")
            if self.target_ongoing_requests >= self.max_inflight:
                raise ValueError(f"gateway.target_ongoing_requests ({self.target_ongoing_requests:g}) must be < "
                                 f"gateway.max_inflight ({self.max_inflight}): Serve must add replicas before a "
                                 "replica sheds load; lower target_ongoing_requests or raise max_inflight")
        return self

    @property
    def autoscaled(self) -> bool:
        """Whether Serve's autoscaler sizes the gateway (``max_replicas`` is set)."""
        return self.max_replicas is not None


class ReviewConfig(_Strict):
    """A queue of the answers the ensemble is unsure of, for a person to label (``GET
    /v1/models/<model>/review``). Off by default: without a threshold no answer is flagged and the answers
    are as before. A reviewer's label goes through the ordinary ``:feedback`` route, which clears the item
    and counts like any label (weights, accuracy, drift, retraining)."""

    threshold: float | None = Field(
        None, gt=0, le=1, description="An answer whose top-class probability is below this is still "
        "answered, flagged `review: true` and queued for review. None (the default): no review queue. With "
        "K classes the top probability is at least 1/K, so a threshold at or below 1/K flags nothing.")
    max_items: int = Field(
        10_000, ge=1, le=1_000_000, description="Most answers waiting for review. When full, the oldest "
        "waiting item is dropped to make room (counted in raymedic_review_dropped_total): newer answers say "
        "more about the model as it is now, and queueing never fails or slows an answer. A dropped item's "
        "answer stays in the prediction log and can still be labelled through :feedback.")
    refresh_s: float = Field(
        2.0, gt=0, le=300, description="How often each gateway replica reads the items other replicas queued "
        "and the labels they received (the queue's metrics are that fresh); GET .../review reads them "
        "first anyway.")


class ScalingConfig(_Strict):
    """How fast Ray Serve's autoscaler follows load, for every autoscaled member and the gateway (those with
    ``max_replicas``). Serve's own defaults (30 s up, 600 s down, a 30 s window, metrics every 10 s) are
    for slow-moving traffic; a spike needs capacity within seconds, and scaling in waits longer than out so
    a burst that pauses does not flap."""

    upscale_delay_s: float = Field(
        3.0, ge=0, le=3600, description="Serve's upscale_delay_s: load above target this long before replicas "
        "are added (a replica then takes seconds more to start and load its model).")
    downscale_delay_s: float = Field(
        60.0, ge=0, le=86_400, description="Serve's downscale_delay_s: load below target this long before "
        "replicas are removed (never below `replicas + standby`).")
    look_back_period_s: float = Field(
        10.0, gt=0, le=3600, description="Serve's look_back_period_s: the window the requests in flight are "
        "averaged over.")
    metrics_interval_s: float = Field(
        1.0, gt=0, le=60, description="Serve's metrics_interval_s: how often each handle and replica reports "
        "its requests in flight to Serve's controller (Serve's default of 10 s would hide a spike for that "
        "long).")


class TrainingConfig(_Strict):
    """How members are trained (Ray Train ``TorchTrainer``)."""

    use_gpu: bool = Field(False, description="Train on GPUs: ScalingConfig(use_gpu=True), one GPU per worker. "
                          "On a cluster with no GPU resources training falls back to CPU with one warning line "
                          "instead of waiting forever for a GPU.")
    mixed_precision: bool = Field(True, description="On a GPU, raymedic's loop runs the forward pass under "
                                  "torch.autocast: bfloat16 where the device supports it, else float16 with a "
                                  "GradScaler. Ignored on CPU (always float32 there).")
    num_workers: int = Field(1, ge=1, description="Data-parallel workers; one is plenty for small tables.")
    cpus_per_worker: float = Field(1.0, gt=0)
    epochs: int = Field(40, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    val_fraction: float = Field(0.2, gt=0, lt=0.9, description="Held out for metrics and golden probes.")
    seed: int = 0
    synthetic_rows: int = Field(6000, ge=200, description="Rows of the built-in synthetic table.")
    search_cpus_per_trial: float = Field(
        0.5, gt=0, description="CPUs one hyperparameter-search trial reserves (`raymedic search`): a small "
        "tabular model on one torch thread rarely keeps a core busy, so two trials share one.")
    search_max_concurrent_trials: int = Field(
        4, ge=1, description="Search trials run at once; a few, so ASHA can compare trials at each rung "
        "and Optuna still learns from finished ones.")


class ChaosConfig(_Strict):
    """Fault injection routes (admin only); on in the demo's and tests' configs."""

    enabled: bool = False


class ControllerConfig(_Strict):
    """The healing controller: how it probes, what it calls a fault, how often it may act."""

    enabled: bool = True
    mode: Literal["auto", "approve"] = Field(
        "auto", description="auto: heal on its own; approve: propose each restart and wait for an operator's "
        "`raymedic approve|reject ID` (switchable at run time with `raymedic mode`).")
    webhook_url: str | None = Field(
        None, pattern=r"^https?://", description="POST a JSON alert here on every incident opened, proposed, "
        "recovered, failed or rejected (and data incidents opened/cleared).")
    tick_s: float = Field(0.25, gt=0, le=10, description="One observe → decide → act → record step.")
    probe_interval_s: float = Field(
        1.0, gt=0, le=60, description="Golden probe period per replica (a probe costs a real inference; after a "
        "timeout the next probe goes at once).")
    view_period_s: float = Field(
        1.0, gt=0, le=60, description="How often Serve's replica view and Ray's actor liveness are read; gateway "
        "telemetry and probes see a dead replica sooner under traffic.")
    probe_timeout_s: float = Field(0.8, gt=0, le=60, description="A probe unanswered this long counts as hung.")
    swap_timeout_s: float = Field(
        20.0, gt=0, le=600, description="A replica asked to serve a promoted (or rolled-back) version in place "
        "must confirm within this; otherwise it is restarted and its replacement loads the new champion.")
    hang_probe_timeouts: int = Field(2, ge=1, description="Consecutive probe timeouts that mean hung.")
    error_probes: int = Field(2, ge=1, description="Consecutive probes that raised (the replica answers, with an "
                              "error) that mean it is failing; one probe error is enough when user calls to it "
                              "failed too.")
    error_calls: int = Field(2, ge=1, description="User calls that raised on a replica, with none answered there "
                             "in the window while a peer answers, that mean it is failing (outlier detection as "
                             "Envoy's consecutive 5xx: a gateway routes away after the first, so a few is strong "
                             "evidence).")
    slow_factor: float = Field(3.0, gt=1, description="Slow: median latency above this × its peers' ...")
    slow_min_excess_s: float = Field(0.2, ge=0, description="... and at least this much above them.")
    slow_probes: int = Field(4, ge=1, description="Recent ok probes (all but one slow) that decide slowness.")
    slow_calls: int = Field(
        6, ge=0, le=1000, description="Latest answered user calls of a replica (all but one slow against its "
        "running peers' latest calls, by `slow_factor` and `slow_min_excess_s`) that decide slowness under "
        "traffic, before `slow_probes` probes can; 0 judges by probes only.")
    wrong_tolerance: float = Field(0.02, gt=0, le=1, description="Max |Δ probability| on golden inputs.")
    window_s: float = Field(5.0, gt=0, description="Window of gateway-reported call statistics.")
    member_cooldown_s: float = Field(3.0, ge=0, description="Minimum gap between restarts in one member.")
    max_restarts: int = Field(10, ge=1, description="Restarts allowed per restart_window_s (no storms).")
    restart_window_s: float = Field(300.0, gt=0)
    confirm_timeout_s: float = Field(90.0, gt=0, description="A restart not confirmed by then is a failure.")
    leak_window_s: float = Field(
        60.0, gt=0, le=3600, description="Memory leaks: the replica's resident-memory samples (one per golden "
        "probe) of this many recent seconds are fitted with a robust (Theil-Sen) slope.")
    leak_min_samples: int = Field(
        12, ge=4, le=1000, description="A slope needs at least this many samples in the window (a couple of "
        "points are a step or noise, not a trend).")
    leak_min_span_s: float = Field(
        20.0, gt=0, le=3600, description="... spanning at least this many seconds.")
    leak_horizon_s: float = Field(
        300.0, gt=0, le=86400, description="A sustained growth whose forecast crosses the replica's memory limit "
        "within this many seconds is a leak: the replica is drained and restarted before it gets there.")
    leak_confidence: float = Field(
        0.95, gt=0.5, lt=1, description="The growth must be positive at this confidence (the lower bound of "
        "the Theil-Sen slope's interval above 0), over the whole window and over its recent half both, so "
        "noise, one high reading or a one-off step (a model load) never count.")
    leak_drain_settle_s: float = Field(
        1.0, ge=0, le=60, description="A leaking replica is avoided at once; it is restarted only after at "
        "least this long (two gateway sync periods: every gateway has the avoid list and reported after it) ...")
    leak_drain_timeout_s: float = Field(
        5.0, gt=0, le=600, description="... once the gateways report no call in flight to it, or after this "
        "long regardless (calls still in flight are then retried on another replica by the gateway).")
    gpu_node_faults: int = Field(
        3, ge=1, le=100, description="GPU: a node on which this many GPU faults (a replica's CUDA error or GPU "
        "out-of-memory, a failed NVML read, uncorrected ECC errors; one per replica and source) happen within "
        "`gpu_node_window_s` has a failing device: the controller decides to drain its GPU members (audited "
        "`gpu-node-drain`). Each faulty replica is restarted whatever the count.")
    gpu_node_window_s: float = Field(
        600.0, gt=0, le=86_400, description="GPU: the window `gpu_node_faults` are counted over.")
    gpu_node_cooldown_s: float = Field(
        900.0, ge=0, le=86_400, description="GPU: after a drain decision, the same node is not decided on again "
        "for this long (its faults are still counted and shown).")
    disk_period_s: float = Field(
        30.0, gt=0, le=3600, description="Disk: how often the free space of storage_path's filesystem and of Ray's "
        "session directory, and the size of the prediction log (a listing, no file read), are read.")
    disk_compact_small_files: int = Field(
        500, ge=2, description="Compact the prediction and feedback logs (merge each hour's parts into one file) "
        "once they hold this many parts under 1 MiB: every gateway replica writes one per log_flush_s.")
    disk_compact_free_fraction: float = Field(
        0.15, gt=0, lt=1, description="... or once storage_path's filesystem has less than this share free "
        "(compaction also drops prediction rows past data.prediction_log_retention_h that have no label).")
    disk_alert_free_fraction: float = Field(
        0.05, gt=0, lt=1, description="The hard floor: a filesystem (storage_path's, or Ray's session "
        "directory's) with less than this share free opens a disk_space incident (alerted like any other).")
    disk_horizon_s: float = Field(
        3600.0, gt=0, le=7 * 86400, description="... as does one whose free space falls steadily and is "
        "forecast to reach that floor within this many seconds.")
    disk_window_s: float = Field(
        900.0, gt=0, le=86400, description="The forecast's window: a Theil-Sen slope of the free bytes read in "
        "the last this many seconds, negative at 95% confidence (a file written once is a step, not a trend).")
    disk_min_samples: int = Field(5, ge=3, le=1000, description="Readings the forecast needs in its window.")
    disk_compact_cooldown_s: float = Field(
        300.0, ge=0, le=86400, description="Minimum gap between two compactions (each rewrites the current "
        "hour's parts).")
    node_period_s: float = Field(
        2.0, gt=0, le=600, description="Nodes: how often each node's agent (a tiny actor on every node) reads its "
        "node's memory and the CPU its own processes used (:mod:`controllers.nodes`).")
    node_window_s: float = Field(
        20.0, gt=0, le=3600, description="A node is under pressure only when every reading of this many recent "
        "seconds is over the high mark (and stays so until every one is under the low mark): one busy second, "
        "a model load, is not pressure.")
    node_min_samples: int = Field(5, ge=2, le=1000, description="Readings that window needs for a verdict ...")
    node_min_span_s: float = Field(8.0, gt=0, le=3600, description="... spanning at least this many seconds.")
    node_cpu_high: float = Field(
        0.9, gt=0, le=100, description="CPU pressure: the node's own processes (its raylet and everything under "
        "it) use this share of the cores the node may use (its host's, or its fair share of them when raylets "
        "share a host; above 1 when they take more than their share).")
    node_cpu_low: float = Field(0.6, gt=0, le=100, description="... and the pressure ends under this share.")
    node_memory_margin: float = Field(
        0.05, ge=0, lt=1, description="Memory pressure: the node's used memory share is within this of the "
        "memory-monitor threshold its raylet runs with (RAY_memory_usage_threshold, default 0.95); it ends "
        "under the threshold less twice this.")
    node_drain_settle_s: float = Field(
        1.0, ge=0, le=60, description="A node's replicas are avoided at once (the gateways route to their peers "
        "and standbys elsewhere); the node is drained through Ray this long after.")
    node_drain_cooldown_s: float = Field(
        300.0, ge=0, le=86400, description="Minimum gap between two node drains (a drain moves every replica "
        "of the node; Ray cannot undo it).")
    node_max_drains: int = Field(2, ge=1, le=100, description="Node drains allowed per node_drain_window_s.")
    node_drain_window_s: float = Field(3600.0, gt=0, le=7 * 86400)
    node_drain_timeout_s: float = Field(
        180.0, gt=0, le=3600, description="A drained node that still holds member replicas after this long is "
        "audited as node-drain-failed.")
    diagnosis_window_s: float = Field(
        30.0, gt=0, le=3600, description="Diagnosis: replica incidents on one node detected within this many "
        "seconds of each other, or of that node's loss or pressure, share the node as their cause (one grouped "
        "incident, the replicas its effects); the same span links a slow or hung replica to a load spike.")
    diagnosis_horizon_s: float = Field(
        900.0, gt=0, le=86_400, description="Diagnosis: how long before an accuracy decay or concept drift a "
        "feature's drift or a promotion may be named as its cause.")
    weight_eta: float = Field(0.5, gt=0, description="Hedge learning rate on feedback losses.")
    weight_decay: float = Field(0.99, gt=0, le=1, description="Per-sample forgetting of old losses.")
    min_weight: float = Field(0.05, ge=0, lt=0.5, description="Floor for each healthy member.")
    max_weight: float = Field(0.7, gt=0, le=1, description="Cap while another member is healthy.")
    weights_audit_min_change: float = Field(
        0.05, ge=0, le=1, description="A publication of new weights is an audit record (kind `weights`) when some "
        "member's weight moved at least this much (absolute) since the last recorded weights, at most once per "
        "weights_audit_interval_s. Hedge republishes on every labelled batch; the gateways get every publication "
        "and raymedic_member_weight shows every value, only the audit is thinned. A member joining or leaving, "
        "a weight crossing zero or min_weight, or a change in the replicas routed around is always recorded.")
    weights_audit_large_change: float = Field(
        0.2, gt=0, le=1, description="... a move at least this large is recorded at once, whatever the interval.")
    weights_audit_interval_s: float = Field(
        30.0, ge=0, le=86400, description="... and smaller material moves at most once per this many seconds "
        "(one held back is recorded when the interval has passed). 0 records every move of "
        "weights_audit_min_change.")
    series_bucket_s: float = Field(
        5.0, gt=0, le=300,
        description="The time series `raymedic report` plots (request rate, latency, failed and degraded answers, "
        "weights, accuracy and its label-free estimate; storage_path/series/<model>/, one JSONL file per hour) "
        "is kept in buckets of this many seconds.")
    series_flush_s: float = Field(30.0, gt=0, le=3600, description="... written at most this often (a crash "
                                  "loses at most this much of it).")
    series_retention_h: float = Field(168.0, gt=0, le=24 * 366, description="... and its hour files deleted "
                                      "after this many hours (about 6 MB a day per model at 5 s buckets).")

    @model_validator(mode="after")
    def _weight_bounds(self) -> "ControllerConfig":
        # Checked here as well as by the weighting rule, so a bad YAML fails when it is read, not when
        # the controller actor starts (where the error would only reach the actor's log).
        if self.min_weight > self.max_weight:
            raise ValueError(f"controller.min_weight ({self.min_weight}) must be <= controller.max_weight "
                             f"({self.max_weight}): lower min_weight or raise max_weight")
        if self.weights_audit_min_change > self.weights_audit_large_change:
            raise ValueError(f"controller.weights_audit_min_change ({self.weights_audit_min_change}) must be <= "
                             f"controller.weights_audit_large_change ({self.weights_audit_large_change}): a large "
                             "move is a material one; lower the first or raise the second")
        if self.leak_min_span_s > self.leak_window_s:
            raise ValueError(f"controller.leak_min_span_s ({self.leak_min_span_s}) must be <= "
                             f"controller.leak_window_s ({self.leak_window_s}): the samples a slope needs must fit "
                             "in the window; lower leak_min_span_s or raise leak_window_s")
        if self.disk_alert_free_fraction > self.disk_compact_free_fraction:
            raise ValueError(f"controller.disk_alert_free_fraction ({self.disk_alert_free_fraction}) must be <= "
                             f"controller.disk_compact_free_fraction ({self.disk_compact_free_fraction}): compaction "
                             "should start before the alert floor; lower the first or raise the second")
        if self.node_cpu_low > self.node_cpu_high:
            raise ValueError(f"controller.node_cpu_low ({self.node_cpu_low}) must be <= controller.node_cpu_high "
                             f"({self.node_cpu_high}): pressure ends under the low mark; lower node_cpu_low")
        if self.node_min_span_s > self.node_window_s:
            raise ValueError(f"controller.node_min_span_s ({self.node_min_span_s}) must be <= "
                             f"controller.node_window_s ({self.node_window_s})")
        if self.leak_drain_settle_s > self.leak_drain_timeout_s:
            raise ValueError(f"controller.leak_drain_settle_s ({self.leak_drain_settle_s}) must be <= "
                             f"controller.leak_drain_timeout_s ({self.leak_drain_timeout_s})")
        return self


MissingPolicy = Literal["auto", "impute", "reject"]
UnseenPolicy = Literal["unknown", "reject"]


class FeaturePolicy(_Strict):
    """One feature's override of the table-wide input policies."""

    missing: MissingPolicy | None = Field(None, description="None: use data.missing.")
    unseen: UnseenPolicy | None = Field(None, description="None: use data.unseen (categorical features only).")


class DataConfig(_Strict):
    """What the gateway does with holes and new categories, and what data quality it watches for."""

    missing: MissingPolicy = Field(
        "auto", description="impute: fill with the training mean/mode and warn in the answer; reject: 422 "
        "naming the feature; auto: impute features that had missing values in training (the model has "
        "seen holes there), reject the others (a hole there is more likely a client bug).")
    unseen: UnseenPolicy = Field(
        "unknown", description="A categorical level never seen in training: unknown = the model's 'other' "
        "bucket, with a warning in the answer; reject = 422 listing the known levels.")
    features: dict[str, FeaturePolicy] = Field(default_factory=dict, description="Per-feature overrides.")
    window_rows: int = Field(1000, ge=50, description="Sliding window of recent rows that is checked.")
    min_rows: int = Field(200, ge=20, description="No verdict on fewer rows: tests need data.")
    check_period_s: float = Field(2.0, gt=0, description="How often the controller checks the window.")
    sample_per_batch: int = Field(256, ge=8, description="Numeric values per gateway batch kept for tests.")
    tensor_rows_per_batch: int = Field(
        64, ge=1, le=4096, description="Whole tensors per tensor feature a gateway ships to the controller's "
        "tensor drift monitor each sync period (a uniform sample, in arrival order, when more arrive): a gateway "
        "at up to this many rows per 0.5 s feeds the monitor every row; past it, the monitor sees a sample and "
        "its detection delay counts sampled rows.")
    missing_rate_max: float = Field(
        0.05, ge=0, le=1, description="Alert when a feature's missing rate exceeds its training share by this.")
    out_of_range_max: float = Field(0.05, ge=0, le=1, description="Alert above this share outside the training "
                                    "range (a numeric feature).")
    unseen_max: float = Field(0.05, ge=0, le=1, description="Alert above this share of unseen levels.")
    drift_alpha: float = Field(0.01, gt=0, lt=1, description="False discovery rate across features "
                               "(Benjamini-Hochberg over the per-feature KS and chi-squared p-values).")
    psi_warn: float = Field(0.1, gt=0, description="Population stability index: warn (common practice 0.1).")
    psi_act: float = Field(0.25, gt=0, description="... and act (common practice 0.25).")
    js_warn: float = Field(0.1, gt=0, le=1, description="Jensen-Shannon distance (base 2) for categorical "
                           "features: warn ...")
    js_act: float = Field(0.2, gt=0, le=1, description="... and act.")
    clear_after: int = Field(2, ge=1, description="Checks in a row without the condition that close an alert.")
    sequential: bool = Field(True, description="Also run a CUSUM per numeric feature on every sampled row "
                             "(controllers.detectors.cusum): it sees an abrupt shift sooner than the window tests. "
                             "An alarm marks the feature drifting (act only if its PSI reaches psi_act).")
    sequential_false_alarms_per_10k: float = Field(0.05, gt=0, le=1000, description="CUSUM false alarms per "
                                                   "10,000 sampled rows, over all numeric features together.")

    prediction_log_retention_h: float = Field(
        720.0, gt=0, le=24 * 365 * 100, description="Prediction log rows older than this many hours are dropped "
        "when the controller compacts the log — except rows with an acknowledged label, which are kept forever "
        "(the retrain job joins them). 30 days by default: far more than any window the monitors read.")
    labelled_retention_days: float | None = Field(
        None, gt=0, le=365 * 100, description="Prediction log rows older than this many days are dropped at "
        "compaction even when labelled: their raw features (every request's input) go, the label rows stay. "
        "Unset (the default): labelled rows are kept forever, because retraining trains on them; set it where "
        "a data-retention policy limits how long request data may be kept (it must be at least "
        "prediction_log_retention_h). Retraining then sees only the labelled rows within it.")

    @model_validator(mode="after")
    def _labelled_outlive_unlabelled(self) -> "DataConfig":
        days = self.labelled_retention_days
        if days is not None and days * 24 < self.prediction_log_retention_h:
            raise ValueError(f"data.labelled_retention_days ({days:g} d) must be at least "
                             f"data.prediction_log_retention_h ({self.prediction_log_retention_h:g} h): a label "
                             "should never shorten how long a row is kept; raise it or lower the other")
        return self

    def policy(self, feature: str) -> FeaturePolicy:
        """The override for ``feature`` (empty if none)."""
        return self.features.get(feature) or FeaturePolicy()


def error_design_problem(odds_ratios: tuple[float, ...], flip_shares: tuple[float, ...], *,
                         prefix: str = "") -> str | None:
    """What is wrong with a set of error-CUSUM designs, or None. Checked when the YAML is read (with
    the config's key names) and by the detector itself (``controllers.detectors.designs``), one rule."""
    if any(not 1 < r <= 100 for r in odds_ratios):
        return (f"{prefix}odds_ratios must be values in (1, 100], got {tuple(odds_ratios)}: each is a rise in the "
                "odds of an error to catch")
    if any(not 0 < e < 1 for e in flip_shares):
        return (f"{prefix}flip_shares must be values in (0, 1), got {tuple(flip_shares)}: each is a share of "
                "labels turned over, e.g. 0.2")
    if not odds_ratios and not flip_shares:
        return (f"give at least one error-CUSUM design: {prefix}flip_shares (e.g. [0.05, 0.2]) or "
                f"{prefix}odds_ratios (e.g. [1.3, 3.0])")
    return None


class PerformanceSettings(_Strict):
    """Model performance from feedback labels, and the label-free estimate."""

    label_window: int = Field(1000, ge=20, description="Most recent labelled answers per member and ensemble.")
    min_labels: int = Field(100, ge=10, description="Labels needed before accuracy can raise an incident "
                            "and before the label-free estimate is recalibrated.")
    confidence_window: int = Field(2000, ge=50, description="Recent answers behind the label-free estimate.")
    accuracy_drop: float = Field(0.05, gt=0, lt=1, description="Incident when the ensemble's windowed "
                                 "accuracy is significantly (upper 99.5 % Wilson bound) more than this below "
                                 "the champions' validation accuracy.")
    ph_delta: float = Field(0.05, ge=0, description="Page-Hinkley tolerance: error-rate rises below about "
                            "this are ignored.")
    ph_lambda: float = Field(15.0, gt=0, description="Page-Hinkley threshold: a rise of r in the error rate "
                             "alarms after about ph_lambda / (r - ph_delta) labels. Simulated: 0-0.3 false "
                             "alarms per 10,000 labels at 12-30 % base error; +20 points found after ~100-125.")
    ph_min_samples: int = Field(50, ge=1, description="Labels before the error-stream test may alarm.")
    error_test: Literal["cusum", "page-hinkley"] = Field(
        "cusum", description="The concept-drift test on the ensemble's error stream. 'cusum': Bernoulli CUSUMs "
        "against the error rate of the first error_baseline_labels labels of the serving versions, thresholds "
        "simulated for error_false_alarms_per_10k (`raymedic bench drift`: a 60° concept rotation caught after "
        "~43 labels where Page-Hinkley needs ~160, at the same false-alarm rate). 'page-hinkley': ph_* above.")
    error_baseline_labels: int = Field(200, ge=100, description="Labels of newly serving versions that set the "
                                       "CUSUM's baseline error rate (it waits for at least one error and one "
                                       "success); the CUSUM watches every label after them.")
    error_false_alarms_per_10k: float = Field(0.05, gt=0, le=100, description="The CUSUM's false-alarm budget "
                                              "per 10,000 labels when nothing changes.")
    prediction_reference: int = Field(1000, ge=100, description="Prediction drift: the ensemble's first answers "
                                      "after the serving versions started are its reference output distribution.")
    prediction_window: int = Field(500, ge=50, description="Prediction drift: the most recent answers compared "
                                   "with the reference (KS on the top-class confidence, chi-squared on the "
                                   "predicted classes, PSI on both).")
    prediction_alpha: float = Field(0.001, gt=0, lt=0.5, description="Prediction drift: significance of the two "
                                    "tests together (Bonferroni), checked every few seconds.")
    prediction_psi: float = Field(0.1, gt=0, description="Prediction drift: the PSI an output must also reach "
                                  "(0.1: the usual warning level).")
    error_confidence_bins: int = Field(4, ge=1, le=10, description="The CUSUM splits answers into this many "
                                       "quantile bins of the ensemble's confidence, each with its own baseline "
                                       "error rate: an error where the ensemble used to be confident weighs more "
                                       "(1: one error rate for all answers).")
    error_flip_shares: tuple[float, ...] = Field((0.04, 0.3), description="CUSUM designs: shares of labels "
                                                 "turned over by a concept change, wherever it acts (0.04: slow "
                                                 "drift such as a 20° rotation of the rule, which turns over 3-10 % "
                                                 "of labels, fewest where the model is confident; 0.3: a 60° "
                                                 "rotation, 22-35 %). Chosen on `raymedic bench drift` over "
                                                 "(0.05, 0.2), (0.04, 0.25), (0.07, 0.3) and 8 bins.")
    error_odds_ratios: tuple[float, ...] = Field((), description="More CUSUM designs: rises in the odds of an "
                                                 "error in every bin (e.g. 1.3; a uniform rise, which a biased "
                                                 "baseline mimics: more false alarms at the same budget).")

    @model_validator(mode="after")
    def _error_designs(self) -> "PerformanceSettings":
        problem = error_design_problem(self.error_odds_ratios, self.error_flip_shares, prefix="performance.error_")
        if problem:
            raise ValueError(problem)
        return self


class ProbationConfig(_Strict):
    """What a promoted version must keep live against the champion it replaced, before it is confirmed.

    The replaced champion's own live figures (its member calls' failures and latencies over the last
    ``baseline_window_s`` before the swap) are the baseline; a significant regression on any signal
    rolls the new version back to the best recent healthy version (see
    :mod:`controllers.policies.probation`). Live accuracy is judged as before (``probation_labels``,
    ``performance.accuracy_drop``).
    """

    baseline_window_s: float = Field(600.0, gt=0, description="The champion's calls this recent are its "
                                     "baseline, taken at the moment it is replaced.")
    min_calls: int = Field(200, ge=20, description="Member calls of the new version (and of the baseline) "
                           "needed before its error rate or p99 latency is judged: a p99 of fewer is noise.")
    error_alpha: float = Field(0.01, gt=0, lt=0.5, description="One-sided significance of 'the new version "
                               "fails more often than the champion did' (exact binomial test of its failed "
                               "calls against the champion's failure rate).")
    error_rate_margin: float = Field(0.02, ge=0, lt=1, description="...and its failure rate must exceed the "
                                     "champion's by at least this much: a significant rise from 0.1 % to "
                                     "0.3 % is not worth a rollback.")
    max_latency_ratio: float = Field(1.5, gt=1, description="Rolled back when its p99 call latency is above "
                                     "the champion's p99 times this.")
    latency_min_increase_ms: float = Field(10.0, ge=0, description="...and at least this many ms above it "
                                           "(a 2 ms model at 4 ms doubles and harms no one).")
    history: int = Field(5, ge=1, le=50, description="A rollback picks among this many recent champions of "
                         "the member (never one that failed its own probation).")


class RetrainingConfig(_Strict):
    """Model-level healing: retrain on recent labels after material drift or decay, gated."""

    enabled: bool = Field(True, description="Submit retraining jobs on material drift or accuracy decay.")
    min_labeled_rows: int = Field(300, ge=20, description="Recent labelled rows needed before a retrain is "
                                  "worth running (fewer: the alert stays open and the controller waits).")
    holdout_fraction: float = Field(0.3, gt=0.05, lt=0.9, description="Newest share of the recent labelled "
                                    "rows kept out of training; the gate judges champion and challenger on it.")
    reference_share: float = Field(0.2, ge=0, lt=1, description="Share of the training rows drawn from the "
                                   "champion's stored training sample, so a retrain does not forget.")
    lookback_s: float = Field(3600.0, gt=0, description="Labelled rows predicted this far back are 'recent'.")
    gate_margin: float = Field(0.01, ge=0, lt=1, description="The challenger's holdout accuracy must beat the "
                               "champion's by at least this much.")
    max_ece_increase: float = Field(0.05, ge=0, le=1, description="Guardrail: expected calibration error may "
                                    "not rise by more than this.")
    max_latency_ratio: float = Field(2.0, ge=1, description="Guardrail: the challenger's per-batch inference "
                                     "time may not exceed the champion's by more than this factor.")
    cooldown_s: float = Field(120.0, ge=0, description="After a retrain finishes (promoted or not), wait this "
                              "long before another.")
    backoff_s: float = Field(30.0, gt=0, description="First wait after a failed job; doubles per failure.")
    max_backoff_s: float = Field(1800.0, gt=0)
    job_timeout_s: float = Field(1800.0, gt=0, description="A job running longer is stopped and counted failed.")
    search_on_reject: bool = Field(True, description="When a member's retrained challenger fails the gate, "
                                   "search its hyperparameters (Ray Tune + Optuna, ASHA) on the same rows in the "
                                   "same job and gate the best configuration too.")
    search_every_s: float = Field(0.0, ge=0, description="Also search on a schedule: every this many seconds "
                                  "(e.g. 86400 for daily; 0 = never) a retrain job searches every member's "
                                  "hyperparameters on recent labels, gated like any challenger, even with no "
                                  "alert open. Needs min_labeled_rows recent labels; waits out jobs, trials "
                                  "and probation.")
    search_trials: int = Field(8, ge=1, le=200, description="Trials of that search.")
    search_max_epochs: int = Field(20, ge=1, le=1000, description="Epoch budget per trial (ASHA stops most "
                                   "trials early).")
    probation_labels: int = Field(100, ge=10, description="After a promotion, labels on the new version's "
                                  "answers before it is confirmed; a drop below the gate's holdout accuracy "
                                  "by more than accuracy_drop rolls it back.")
    probation: ProbationConfig = Field(default_factory=ProbationConfig, description="The live error-rate and "
                                       "latency checks of a promoted version against the replaced champion.")


class RolloutConfig(_Strict):
    """How a challenger that passed the gate meets live traffic before it is promoted.

    ``shadow``: a ``share`` of requests is mirrored to the challenger and its answers are
    not returned; ``canary``: on that share the challenger's answer replaces the
    champion's in the ensemble (the champion still answers alongside, for the comparison).
    Either way the two are compared on the *same* labelled requests (paired), so a
    drifting stream cannot flatter one of them; ``off`` promotes straight after the gate.
    """

    mode: Literal["shadow", "canary", "off"] = Field("canary", description="shadow, canary or off.")
    share: float = Field(0.05, gt=0, le=1, description="Share of requests the challenger sees (small: a bad "
                         "challenger in canary mode answers only this share; the trial's length follows from it "
                         "and the label rate, see length_factor).")
    min_labels: int = Field(100, ge=10, description="Paired labelled answers needed before a verdict.")
    max_labels: int = Field(600, ge=10, description="Still no clear win after this many: the champion stays.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="One-sided significance for 'the challenger is worse' "
                         "(exact binomial test on the answers where exactly one of the two was right).")
    timeout_s: float = Field(1800.0, gt=0, description="The cap on a trial's length: a rollout without a verdict "
                             "by then is abandoned; the champion stays.")
    length_factor: float = Field(3.0, ge=1, description="A trial lasts this many times the time its min_labels "
                                 "paired labels take to arrive (min_labels / (share × labels per second)), "
                                 "within [min_length_s, timeout_s]; shown in status as the trial's length_s.")
    min_length_s: float = Field(120.0, gt=0, description="The shortest trial, whatever the traffic.")
    max_latency_ratio: float = Field(1.5, gt=1, description="Rejected when the challenger's p99 call latency is "
                                     "above the champion's on the same period times this (both over "
                                     "retraining.probation.min_calls calls).")
    max_error_rate: float = Field(0.2, ge=0, le=1, description="Share of failed challenger calls that ends "
                                  "the rollout at once.")

    @model_validator(mode="after")
    def _labels_order(self) -> "RolloutConfig":
        if self.max_labels < self.min_labels:
            raise ValueError(f"rollout.max_labels ({self.max_labels}) must be ≥ rollout.min_labels "
                             f"({self.min_labels}): raise max_labels or lower min_labels")
        return self


class ModelEntry(_Strict):
    """Another model the same service serves beside the config's ``model`` (see ``RaymedicConfig.models``)."""

    members: list[MemberConfig] | None = Field(
        None, min_length=1, description="Its ensemble members (as in `members`); unset: the config's `members`, "
        "which is what `raymedic train --model NAME` trains when this entry does not say otherwise.")

    @model_validator(mode="after")
    def _check_members(self) -> "ModelEntry":
        if self.members is not None:
            _check_member_list(self.members)
        return self


def _check_member_list(members: list[MemberConfig]) -> None:
    names = [m.name for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"member names must be unique; {dupes} appear more than once")
    fallbacks = [m.name for m in members if m.fallback]
    if len(fallbacks) > 1:
        raise ValueError(f"at most one member may be the fallback; got {fallbacks}")


class RaymedicConfig(_Strict):
    """Everything raymedic needs to serve, train and heal one model — or several behind one gateway.

    Every part of raymedic that acts on one model (the gateway's prediction path, the controller's healing,
    training) gets the config of that model alone, from :meth:`for_model`: its own ``model`` and
    ``members``, the shared settings, and the prefix of its members' Serve deployments.
    """

    model: str = Field("synthetic", pattern=_NAME, description="Name in /v1/models/{model}.")
    storage_path: str = Field(
        "~/.raymedic/storage", description="Local directory or pyarrow.fs URI (s3://...) for all state."
    )
    members: list[MemberConfig] = Field(default_factory=_default_members, min_length=1)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    chaos: ChaosConfig = Field(default_factory=ChaosConfig)
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    performance: PerformanceSettings = Field(default_factory=PerformanceSettings)
    retraining: RetrainingConfig = Field(default_factory=RetrainingConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig, description="The review queue for unsure answers (off until `threshold` is set).")
    access_log: bool = Field(
        False, description="Serve's per-request access log lines; off by default: raymedic logs every "
        "prediction to Parquet already, and a log line per hop costs real CPU on small machines.")
    models: dict[str, ModelEntry] = Field(
        default_factory=dict, description="More models served by the same gateway and healed by the same "
        "controller beside `model`, each on its own routes (/v1/models/NAME:predict), with its own members, "
        "weights, drift monitors, audit log and retraining: NAME → {members: [...]} (or {} for the config's "
        "`members`). `raymedic up` fills this in itself with every other model that has champions in the "
        "registry (or those named by --model a,b); write it to serve a model whose members differ from "
        "`members`. Each extra model's member deployments are named MODEL.MEMBER (the first model's keep "
        "their member names).")
    serve_prefix: str = Field(
        "", pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63}\.)?$", description="Set by raymedic, not written by "
        "hand: the prefix of this model's member deployment names (MODEL. for a model of `models`, empty for "
        "the first), so two models that both have a member `logistic` get two deployments.")

    @field_validator("models", mode="before")
    @classmethod
    def _entries(cls, v: Any) -> Any:
        # `models: {cards:}` in YAML is None: the config's members, as `{}` says
        return {k: ({} if e is None else e) for k, e in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _check_members(self) -> "RaymedicConfig":
        _check_member_list(self.members)
        for name in self.models:
            if re.fullmatch(_NAME, name) is None:
                raise ValueError(f"model name {name!r} under `models` must match {_NAME}")
        if self.model in self.models:
            raise ValueError(f"{self.model!r} is the config's `model`; list only the other models under `models`")
        for name in self.model_names:
            members = self.members_of(name)
            if self.gateway.min_members > len(members):
                raise ValueError(
                    f"gateway.min_members ({self.gateway.min_members}) must be <= the number of members "
                    f"({len(members)}) of model {name!r}: lower min_members or add members"
                )
        deployments = [self.deployment_prefix(n) + m.name for n in self.model_names for m in self.members_of(n)]
        clash = sorted({d for d in deployments if deployments.count(d) > 1} | ({GATEWAY_DEPLOYMENT} & set(deployments)))
        if clash:
            raise ValueError(f"two members would share the Serve deployment name(s) {clash}; rename a member "
                             "or a model")
        return self

    @property
    def model_names(self) -> list[str]:
        """Every model served: ``model`` first, then those of ``models`` in the order written."""
        return [self.model, *self.models]

    def members_of(self, model: str) -> list[MemberConfig]:
        """The members of ``model``: its ``models`` entry's, else the config's ``members``."""
        entry = self.models.get(model)
        return list(entry.members) if entry is not None and entry.members else list(self.members)

    def deployment_prefix(self, model: str) -> str:
        """The prefix of ``model``'s member deployment names: none for the first model (a service with one
        model keeps the names it always had), ``MODEL.`` for each of ``models``."""
        return self.serve_prefix if model == self.model else f"{model}."

    def deployment_of(self, member: str) -> str:
        """The Serve deployment of this config's member ``member`` (see :meth:`for_model`)."""
        return self.serve_prefix + member

    def for_model(self, model: str) -> "RaymedicConfig":
        """The config of ``model`` alone: its members, no ``models``, and its deployments' prefix.

        What the gateway's lane, the controller and the training of one model work with. A name this
        config does not serve gets the config's members (what ``raymedic train --model NAME`` trains).
        """
        if model == self.model and not self.models:
            return self
        return self.model_copy(update={"model": model, "members": self.members_of(model), "models": {},
                                       "serve_prefix": self.deployment_prefix(model)})

    def serving(self, names: Sequence[str]) -> "RaymedicConfig":
        """This config serving exactly ``names``: the first as ``model`` (its members' deployments keep their
        names), the rest as ``models``, each with the members this config gives it."""
        if not names:
            raise ConfigError("no model to serve: name at least one")
        first, *rest = names
        data = self.model_dump(mode="json")
        data.update(model=first, members=[m.model_dump(mode="json") for m in self.members_of(first)],
                    models={n: {"members": [m.model_dump(mode="json") for m in self.members_of(n)]} for n in rest},
                    serve_prefix="")
        return parse_config(data, where="the models to serve")

    @property
    def fallback_member(self) -> str:
        """The fallback member's name: the one marked, else the first."""
        return next((m.name for m in self.members if m.fallback), self.members[0].name)

    def member(self, name: str) -> MemberConfig:
        """The member called ``name``; a ``ConfigError`` listing the members when there is none."""
        for m in self.members:
            if m.name == name:
                return m
        raise ConfigError(f"no member named {name!r}; members are {[m.name for m in self.members]}")

    def resolved(self) -> "RaymedicConfig":
        """A copy whose local ``storage_path`` is absolute, so every process agrees on it."""
        if "://" in self.storage_path:
            return self
        return self.model_copy(update={"storage_path": str(Path(self.storage_path).expanduser().resolve())})


def _explain(exc: ValidationError, where: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
        lines.append(f"  {loc}: {msg}{got}")
    return ConfigError(f"invalid raymedic config in {where}:\n" + "\n".join(lines))


def parse_config(args: dict[str, Any], *, where: str = "application args") -> RaymedicConfig:
    """Validate raymedic settings (a Serve application's ``args``)."""
    try:
        return RaymedicConfig.model_validate(args or {})
    except ValidationError as exc:
        raise _explain(exc, where) from None


def _is_uri(value: str) -> bool:
    """Ray's test for a package reference (``s3://``, ``gs://``, ``https://...zip``, ``gcs://``, ``local://``):
    those are Ray's to fetch and are passed through unchanged; anything else is a path on this machine."""
    return "://" in value


class RuntimeEnv(BaseModel):
    """The Serve application's ``runtime_env``: how the user's code reaches every process that imports it.

    It lives in the Serve document next to ``import_path`` (not in raymedic's ``args``), so ``serve deploy``
    of the same file hands Ray the same environment. raymedic gives it to every process it starts for the
    application: the driver's Ray job (``raymedic up`` / ``train`` / ``search``: the Serve replicas, Ray Train
    workers and Tune trials inherit it), the healing controller and the retrain jobs it submits. The fields
    raymedic reads are typed; any other Ray field (``pip``, ``uv``, ``conda``, ``config``, ...) passes through
    to Ray, which validates it.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    working_dir: str | None = Field(
        default=None, description="A directory (or a .zip / remote URI) Ray ships to every process and makes "
                                  "its working directory, first on its import path. A local path is resolved "
                                  "against the config file's directory.")
    py_modules: list[str] = Field(
        default_factory=list, description="Packages Ray ships to every process and puts on its import path: "
                                          "local package directories (the directory is the package: "
                                          "`./my_models` is imported as `my_models`), .whl/.zip files, or "
                                          "remote URIs. Local paths are resolved against the config file's "
                                          "directory.")
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Environment variables of every process. A retrain job's PYTHONPATH "
                                          "is raymedic's own path followed by this one.")
    excludes: list[str] = Field(
        default_factory=list, description="gitignore-style patterns left out of the uploaded working_dir / "
                                          "py_modules.")

    @property
    def empty(self) -> bool:
        """Nothing to hand Ray (no field set)."""
        return not self.to_ray()

    def resolved(self, base: Path, *, where: str) -> "RuntimeEnv":
        """A copy whose local paths are absolute, resolved against ``base`` (the config file's directory).

        Ray resolves a relative path against the current directory of whoever calls ``ray.init``, which
        would make ``raymedic up --config examples/x/raymedic.yaml`` depend on where it is run from.

        Raises:
            ConfigError: A local path does not exist (named with the config file ``where``).
        """
        def one(value: str, field: str) -> str:
            if _is_uri(value):
                return value
            path = (base / Path(value).expanduser()).resolve()
            if not path.exists():
                raise ConfigError(
                    f"runtime_env.{field} in {where} names {value!r}, which does not exist (looked for {path}): "
                    "fix the path (a relative one is read from the config file's directory) or use a remote "
                    "URI (s3://, gs://, https://...zip)")
            return str(path)

        update: dict[str, Any] = {"py_modules": [one(m, "py_modules") for m in self.py_modules]}
        if self.working_dir:
            update["working_dir"] = one(self.working_dir, "working_dir")
        return self.model_copy(update=update)

    def import_roots(self) -> list[str]:
        """Where this machine's Python finds the local code: a package directory's parent (Ray ships the
        directory as the package), a .zip/.whl itself (zipimport), the working_dir itself."""
        roots = []
        for p in ([self.working_dir] if self.working_dir else []) + list(self.py_modules):
            if _is_uri(p):
                continue
            path = Path(p)
            roots.append(str(path.parent if p in self.py_modules and path.is_dir() else path))
        return list(dict.fromkeys(roots))

    def to_ray(self) -> dict[str, Any]:
        """The dict ``ray.init(runtime_env=...)`` and the Jobs API take (unset fields left out)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if v not in (None, [], {})}


class ServeFile(BaseModel):
    """A parsed config file: the Serve document as written, and raymedic's part of it."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    path: Path
    serve: dict[str, Any]
    app_index: int
    config: RaymedicConfig
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv, description=(
        "The application's runtime_env with local paths made absolute against the config file's directory."))

    @property
    def http_host(self) -> str:
        """The host Serve's HTTP proxy binds (``http_options.host``; Serve's default 127.0.0.1)."""
        return str(self.serve.get("http_options", {}).get("host", "127.0.0.1"))

    @property
    def http_port(self) -> int:
        """The port Serve's HTTP proxy binds (``http_options.port``; Serve's default 8000)."""
        return int(self.serve.get("http_options", {}).get("port", 8000))

    @property
    def http_tls(self) -> dict[str, str]:
        """Serve's own HTTPS settings, ``http_options.ssl_certfile`` and ``ssl_keyfile`` (uvicorn's), made
        absolute against the config file's directory; empty without TLS.

        Raises:
            ConfigError: only one of the two is given, or a file does not exist.
        """
        opts = self.serve.get("http_options") or {}
        given = {k: opts[k] for k in ("ssl_certfile", "ssl_keyfile") if opts.get(k)}
        if not given:
            return {}
        if len(given) == 1:
            missing = ({"ssl_certfile", "ssl_keyfile"} - set(given)).pop()
            raise ConfigError(f"http_options has {next(iter(given))} but no {missing}: HTTPS needs both the "
                              "certificate and its private key (PEM files)")
        out = {}
        for key, value in given.items():
            p = Path(str(value)).expanduser()
            p = p if p.is_absolute() else self.path.parent / p
            if not p.is_file():
                raise ConfigError(f"http_options.{key} {str(p)!r} does not exist: point it at a PEM file")
            out[key] = str(p)
        return out

    def serve_document(self, config: RaymedicConfig | None = None) -> dict[str, Any]:
        """The Serve config with raymedic's args replaced by ``config`` (resolved paths, flags)."""
        doc = {k: v for k, v in self.serve.items()}
        apps = [dict(a) for a in doc["applications"]]
        apps[self.app_index]["args"] = (config or self.config).model_dump(mode="json")
        doc["applications"] = apps
        return doc


def load_config(path: str | os.PathLike[str] | None = None) -> ServeFile:
    """Read a raymedic/Serve YAML file; ``None`` means the shipped default."""
    p = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist: pass --config with a path to a YAML file")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("applications"), list):
        raise ConfigError(
            f"config file {str(p)!r} needs an 'applications' list (it is a Ray Serve config); "
            f"start from {DEFAULT_CONFIG_PATH}"
        )
    idx = next((i for i, a in enumerate(doc["applications"]) if a.get("name") == APP_NAME), None)
    if idx is None:
        raise ConfigError(f"config file {str(p)!r} has no application named {APP_NAME!r}; add one")
    app = doc["applications"][idx]
    cfg = parse_config(app.get("args") or {}, where=str(p))
    return ServeFile(path=p.resolve(), serve=doc, app_index=idx, config=cfg,
                     runtime_env=_runtime_env(app.get("runtime_env"), p))


def _runtime_env(raw: Any, path: Path) -> RuntimeEnv:
    """The application's ``runtime_env`` typed, its local paths resolved against the file's directory."""
    where = str(path)
    if raw is None:
        return RuntimeEnv()
    if not isinstance(raw, dict):
        raise ConfigError(f"runtime_env in {where} must be a mapping such as {{py_modules: [./my_models]}}, "
                          f"not {raw!r}")
    try:
        env = RuntimeEnv.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, f"{where} (applications[].runtime_env)") from None
    return env.resolved(path.resolve().parent, where=where)
