"""One root error type; the gRPC layer maps each subclass to a status code.

Errors raised by the domain, the event log and the stores are all `LabelweaveError`s, so the
API boundary translates them in one place (`coordinator/api/errors.py`).
"""

from __future__ import annotations


class LabelweaveError(Exception):
    """Root of every error Labelweave raises on purpose."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(LabelweaveError):
    """Input is malformed; `field` names the offending field path (e.g. `annotation.shapes[2].box.width`)."""


class NotFound(LabelweaveError):
    """The named object does not exist (or the caller may not know it exists)."""


class AlreadyExists(LabelweaveError):
    """An object with this id exists already."""


class FailedPrecondition(LabelweaveError):
    """The command is valid but impossible in the current state (e.g. leasing a full task)."""


class PermissionDenied(LabelweaveError):
    """The caller is known but its roles or memberships do not allow this."""


class Unauthenticated(LabelweaveError):
    """No valid bearer token."""


class Conflict(LabelweaveError):
    """Optimistic concurrency lost, or a command id reused with different content."""


class Unavailable(LabelweaveError):
    """A backend is down or shutting down; the client may retry with the same command id."""
