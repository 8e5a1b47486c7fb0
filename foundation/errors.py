"""The one exception tree of Foundation.

Every failure a user can see is a :class:`FoundationError`; driver exceptions are
translated at a single boundary (``foundation.database.errors``) and never escape.

    FoundationError                code
     ├── ConfigError               config_error
     ├── EventError                event_error
     │    └── ConcurrencyError     concurrency_error
     ├── ValidationError           validation_error
     ├── NotFoundError             not_found
     ├── AlreadyRegisteredError    already_registered
     ├── CircuitOpenError          circuit_open
     ├── TimeoutError              timeout
     ├── RateLimitedError          rate_limited
     ├── StorageUnavailableError   storage_unavailable
     ├── StorageError              storage_error
     └── SchemaOutdatedError       schema_outdated

The codes are the spec's atoms as strings, so ``err.code == "config_error"`` works as
``{:error, %Foundation.Error{code: :config_error}}`` does in the original.
"""

from __future__ import annotations

import builtins
from typing import Any, ClassVar

from foundation._text import shown
from foundation.correlation import current_correlation_id

__all__ = [
    "AlreadyRegisteredError",
    "CircuitOpenError",
    "ConcurrencyError",
    "ConfigError",
    "EventError",
    "FoundationError",
    "NotFoundError",
    "RateLimitedError",
    "SchemaOutdatedError",
    "StorageError",
    "StorageUnavailableError",
    "TimeoutError",
    "ValidationError",
    "error_for_code",
]


class FoundationError(Exception):
    """Base of every error Foundation raises.

    ``code`` names the kind of failure, ``message`` says it to a person, ``context``
    carries the details a program needs (never secrets), and ``correlation_id`` is
    picked up from :func:`foundation.correlation` when not given.
    """

    code: ClassVar[str] = "foundation_error"

    def __init__(
        self,
        message: str,
        *,
        context: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = dict(context or {})
        self.correlation_id = (
            correlation_id if correlation_id is not None else current_correlation_id()
        )

    def to_dict(self) -> dict[str, Any]:
        """The error as the spec's struct: code, message, correlation_id, context."""
        return {
            "code": self.code,
            "message": self.message,
            "correlation_id": self.correlation_id,
            "context": dict(self.context),
        }

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __repr__(self) -> str:
        # The context may hold what a caller gave: its repr must not fail (see shown).
        return f"{type(self).__name__}({self.message!r}, context={shown(self.context, 10_000)})"

    def __reduce__(self) -> Any:  # errors cross process boundaries in tests and pools
        return (
            _rebuild,
            (type(self), self.message, self.context, self.correlation_id),
        )


def _rebuild(
    cls: type[FoundationError], message: str, context: dict[str, Any], cid: str | None
) -> FoundationError:
    return cls(message, context=context, correlation_id=cid)


class ConfigError(FoundationError):
    """A configuration key, value, file or type is invalid."""

    code = "config_error"


class EventError(FoundationError):
    """An event or a query on the event log is invalid."""

    code = "event_error"


class ConcurrencyError(EventError):
    """A stream was not at the version the writer expected; nothing was written."""

    code = "concurrency_error"


class ValidationError(FoundationError):
    """An argument is of the wrong type or out of range."""

    code = "validation_error"


class NotFoundError(FoundationError):
    """The named thing does not exist."""

    code = "not_found"


class AlreadyRegisteredError(FoundationError):
    """A live owner already holds the name."""

    code = "already_registered"


class CircuitOpenError(FoundationError):
    """The circuit is open; the call was not made."""

    code = "circuit_open"


class TimeoutError(FoundationError):
    """An operation ran past its deadline."""

    code = "timeout"


class RateLimitedError(FoundationError):
    """The rate limit for the key is exhausted; ``context['retry_after']`` says when to retry."""

    code = "rate_limited"


class StorageUnavailableError(FoundationError):
    """The database cannot be reached (down, refused, or locked past the busy timeout)."""

    code = "storage_unavailable"


class StorageError(FoundationError):
    """The database refused an operation for a reason that is not the caller's input."""

    code = "storage_error"


class SchemaOutdatedError(FoundationError):
    """The database schema is behind the library; the message names the command to run."""

    code = "schema_outdated"


_BY_CODE: dict[str, builtins.type[FoundationError]] = {
    cls.code: cls
    for cls in (
        FoundationError,
        ConfigError,
        EventError,
        ConcurrencyError,
        ValidationError,
        NotFoundError,
        AlreadyRegisteredError,
        CircuitOpenError,
        TimeoutError,
        RateLimitedError,
        StorageUnavailableError,
        StorageError,
        SchemaOutdatedError,
    )
}


def error_for_code(code: str) -> builtins.type[FoundationError]:
    """The subclass for a spec code (``"not_found"`` → :class:`NotFoundError`)."""
    return _BY_CODE.get(code, FoundationError)
