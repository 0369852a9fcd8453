"""The server's exception family: one class per status code a caller can see.

Services and interceptors raise these; the domain (pipeline, steps, rules)
raises the transport-free errors of server/domain.py, which `from_domain`
maps to these. interceptors/errors.py turns them into a
gRPC status carrying `google.rpc` details (BadRequest, QuotaFailure, RetryInfo,
...) in one place. Messages are written for the caller and never contain
patient content.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import ClassVar

import grpc
import sqlalchemy.exc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from server import domain


class ServiceError(Exception):
    """An error meant for the caller, with its status code and rich details."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, details: Iterable[Message] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)

    def to_status(self) -> grpc.Status:
        """The gRPC status, with details in the grpc-status-details-bin trailer."""
        packed = []
        for detail in self.details:
            wrapped = any_pb2.Any()
            wrapped.Pack(detail)
            packed.append(wrapped)
        return rpc_status.to_status(status_pb2.Status(code=self.code.value[0], message=self.message, details=packed))


# Details travel in trailers, which a client refuses past a few kilobytes (gRPC's metadata
# limit: 8 KiB, some refused at random beyond it, all beyond 16 KiB; the caller then sees
# RESOURCE_EXHAUSTED instead of its field violations). A path or description quoting the
# caller's own long text is cut short, and the first violations are listed.
_MAX_VIOLATIONS = 10
_MAX_TEXT_CHARS = 120


class InvalidArgument(ServiceError):
    """The request is malformed; the details list the bad fields (the first ten) and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Iterable[error_details_pb2.BadRequest.FieldViolation]) -> None:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=_shortened(v.field), description=_shortened(v.description), reason=v.reason
            )
            for v in list(violations)[:_MAX_VIOLATIONS]
        ]
        fields = ", ".join(v.field for v in violations)
        super().__init__(
            f"invalid request: {fields}" if fields else "invalid request",
            [error_details_pb2.BadRequest(field_violations=violations)],
        )
        self.violations = violations


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


class Unavailable(ServiceError):
    """A dependency (such as the audit store) is down; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after: timedelta | None = None) -> None:
        details: list[Message] = []
        if retry_after is not None:
            details.append(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after)))
        super().__init__(message, details)


class ResourceExhausted(ServiceError):
    """A rate limit or budget is spent; the details say which and when to retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, subject: str, description: str, retry_after: timedelta | None) -> None:
        details: list[Message] = [
            error_details_pb2.QuotaFailure(
                violations=[error_details_pb2.QuotaFailure.Violation(subject=subject, description=description)]
            )
        ]
        if retry_after is not None:
            details.append(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after)))
        super().__init__(message, details)


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(ServiceError):
    """A fault of ours. Its message is generic; the cause goes to the log by type only."""

    code = grpc.StatusCode.INTERNAL


def from_domain(error: domain.DomainError) -> ServiceError:
    """The status a domain error is answered with: the one mapping from domain to transport."""
    if isinstance(error, domain.DeadlineExceeded):
        return DeadlineExceeded(error.message)
    if isinstance(error, domain.BudgetExhausted):
        return ResourceExhausted(error.message, subject=error.subject, description=error.description, retry_after=None)
    raise TypeError(f"no status for the domain error {type(error).__name__}")


def _duration(delta: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(delta)
    return duration


def _shortened(text: str) -> str:
    return text if len(text) <= _MAX_TEXT_CHARS else text[: _MAX_TEXT_CHARS - 3] + "..."


def field_violation(field: str, description: str, reason: str) -> error_details_pb2.BadRequest.FieldViolation:
    """One entry of a BadRequest: the field's path, what is wrong, a machine reason."""
    return error_details_pb2.BadRequest.FieldViolation(field=field, description=description, reason=reason)


# The database cannot be reached or written (stopped, restarting, locked): the caller may retry, elsewhere or later.
DATABASE_FAULTS: tuple[type[Exception], ...] = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def database_unavailable() -> Unavailable:
    return Unavailable("the database is unavailable; retry shortly", retry_after=timedelta(seconds=1))
