"""raymedic: autonomous recovery for ML serving on Ray.

The public surface is small on purpose: configuration loading and the error
hierarchy. Serving lives in ``serve_apps``, training and the registry in
``train_jobs``, healing in ``controllers``.
"""

from raymedic.errors import (
    ConfigError,
    DataError,
    IntegrityError,
    InvalidRequest,
    RaymedicError,
    RegistryError,
    VersionNotFound,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "IntegrityError",
    "InvalidRequest",
    "RaymedicError",
    "RegistryError",
    "VersionNotFound",
    "__version__",
]
