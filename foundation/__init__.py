"""Foundation: config, an append-only event log, telemetry, a service registry, circuit
breakers, rate limiters and one error type, kept in SQLite or PostgreSQL.

import foundation
foundation.config.get("port", 8080)          # the default instance

from foundation import Foundation
with Foundation("sqlite:///app.db") as fdn:   # or postgresql+psycopg://…
    fdn.config.set("port", 4000)
"""

from foundation import circuit_breaker, config, events, rate_limiter, service_registry, telemetry
from foundation.correlation import correlation, current_correlation_id
from foundation.errors import (
    AlreadyRegisteredError,
    CircuitOpenError,
    ConcurrencyError,
    ConfigError,
    EventError,
    FoundationError,
    NotFoundError,
    RateLimitedError,
    SchemaOutdatedError,
    StorageError,
    StorageUnavailableError,
    TimeoutError,
    ValidationError,
)
from foundation.facade import AsyncFoundation, Foundation
from foundation.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AlreadyRegisteredError",
    "AsyncFoundation",
    "CircuitOpenError",
    "ConcurrencyError",
    "ConfigError",
    "EventError",
    "Foundation",
    "FoundationError",
    "NotFoundError",
    "RateLimitedError",
    "SchemaOutdatedError",
    "Settings",
    "StorageError",
    "StorageUnavailableError",
    "TimeoutError",
    "ValidationError",
    "__version__",
    "circuit_breaker",
    "config",
    "correlation",
    "current_correlation_id",
    "events",
    "rate_limiter",
    "service_registry",
    "telemetry",
]
