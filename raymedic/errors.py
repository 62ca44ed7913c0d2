"""One exception hierarchy for everything raymedic raises on purpose.

Every message names what is wrong, the offending value and the fix, because these
messages reach users verbatim: the CLI prints them and the gateway returns them as
``{"error": ...}`` bodies. ``http_status`` lets the gateway map an error to a 4xx
without a table of special cases.
"""

from __future__ import annotations

__all__ = [
    "RaymedicError",
    "ConfigError",
    "DataError",
    "SchemaError",
    "InvalidRequest",
    "PayloadTooLarge",
    "LabelConflict",
    "UnknownModel",
    "RegistryError",
    "VersionNotFound",
    "IntegrityError",
    "ServiceUnavailable",
    "AdminDenied",
    "ClientDenied",
    "TooManyRequests",
    "TrainingFailed",
    "SearchFailed",
    "NotEnoughLabels",
    "ActionError",
    "InjectedFault",
    "TemporaryError",
    "PermanentError",
]


class RaymedicError(Exception):
    """Base class: a failure whose message is fit to show a user as is."""

    http_status: int = 500


class ConfigError(RaymedicError):
    """The configuration (YAML file, CLI flags) is invalid."""

    http_status = 400


class DataError(RaymedicError):
    """A training table cannot be used (missing target, single class, mixed types...)."""

    http_status = 400


class SchemaError(RaymedicError):
    """A stored schema or preprocessor is malformed or does not match the data."""

    http_status = 500


class InvalidRequest(RaymedicError):
    """A client request does not match the model's schema or the API's shape."""

    http_status = 422

    def __init__(self, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.http_status = status


class PayloadTooLarge(InvalidRequest):
    """A batch has more instances than the gateway accepts."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=413)


class LabelConflict(InvalidRequest):
    """Feedback gives an answer a label other than the one it already has (409): a label is final."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=409)


class AdminDenied(InvalidRequest):
    """An admin route without a valid token (401), or with admin routes disabled (403)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message, status=status)


class ClientDenied(InvalidRequest):
    """A predict or feedback request without a valid client key where client authentication is on (401)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=401)


class TooManyRequests(InvalidRequest):
    """A client past its rate limit (429); ``retry_after_s`` says when its next request fits."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, status=429)
        self.retry_after_s = retry_after_s


class UnknownModel(RaymedicError):
    """The model named in the URL is not served here."""

    http_status = 404


class RegistryError(RaymedicError):
    """The model registry cannot satisfy a request."""

    http_status = 500


class NotEnoughLabels(DataError):
    """Too few recent labelled rows to retrain on and judge fairly."""


class TrainingFailed(RaymedicError):
    """The Ray Train run failed; nothing was registered."""


class SearchFailed(RaymedicError):
    """The search produced no usable trial; nothing was registered."""


class VersionNotFound(RegistryError):
    """No such model, member, version or alias in the registry."""

    http_status = 404


class IntegrityError(RegistryError):
    """A stored artifact does not match its recorded sha256: refuse to load it."""


class ServiceUnavailable(RaymedicError):
    """The service cannot answer right now; the client should retry later."""

    http_status = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InjectedFault(RaymedicError):
    """Raised on every call of a replica given the ``error`` chaos fault (``raymedic chaos error``): what a
    CUDA error or a state broken by a bad reload looks like from outside."""


class ActionError(RaymedicError):
    """A healing action could not be carried out. Raised inside an actuator only: the loop sees the
    outcome as a value (``controllers.outcome.Outcome``), never the exception."""


class TemporaryError(ActionError):
    """Worth trying again after ``delay_s`` (the dashboard restarts, an actor is not reachable yet)."""

    def __init__(self, message: str, *, delay_s: float = 1.0) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class PermanentError(ActionError):
    """Trying again would fail the same way (no such version, the member was removed)."""
