"""Typed exceptions for every gRPC status, carrying the server's rich details.

Every client call goes through `from_rpc_error`, so callers catch
`triage_client.InvalidArgument` and read `.field_violations`, or catch
`ResourceExhausted` and read `.retry_delay` and `.rate_limit`, instead of
parsing grpc errors.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from triage_client.rate_limit import RateLimit

_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.QuotaFailure,
    error_details_pb2.RetryInfo,
    error_details_pb2.ErrorInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.DebugInfo,
)

_M = TypeVar("_M", bound=Message)


class TriageError(Exception):
    """A call failed. `code` is the gRPC status; `details` the unpacked google.rpc details; `rate_limit` the
    caller's rate limit as the call reported it (None when it did not get that far)."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        details: tuple[Message, ...] = (),
        request_id: str = "",
        rate_limit: RateLimit | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.request_id = request_id
        self.rate_limit = rate_limit

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def detail(self, kind: type[_M]) -> _M | None:
        """The first detail of the given type, if the server sent one."""
        return next((d for d in self.details if isinstance(d, kind)), None)

    @property
    def retry_delay(self) -> timedelta | None:
        """How long the server asks to wait before retrying (google.rpc.RetryInfo)."""
        info = self.detail(error_details_pb2.RetryInfo)
        return info.retry_delay.ToTimedelta() if info is not None and info.HasField("retry_delay") else None


class Cancelled(TriageError):
    code = grpc.StatusCode.CANCELLED


class Unknown(TriageError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(TriageError):
    """The request was malformed; `field_violations` lists each bad field and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def field_violations(self) -> list[error_details_pb2.BadRequest.FieldViolation]:
        request = self.detail(error_details_pb2.BadRequest)
        return list(request.field_violations) if request is not None else []


class DeadlineExceeded(TriageError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(TriageError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TriageError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(TriageError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(TriageError):
    """A rate limit or budget is spent: see `quota_violations`, `retry_delay` and (a rate limit) `rate_limit`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def quota_violations(self) -> list[error_details_pb2.QuotaFailure.Violation]:
        failure = self.detail(error_details_pb2.QuotaFailure)
        return list(failure.violations) if failure is not None else []


class FailedPrecondition(TriageError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(TriageError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(TriageError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(TriageError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(TriageError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(TriageError):
    """The service or one of its dependencies is down; retried automatically first."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(TriageError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(TriageError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[TriageError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def from_rpc_error(error: grpc.RpcError) -> TriageError:
    """The typed exception for a failed call (sync or asyncio), with its details unpacked."""
    call: grpc.Call = error  # type: ignore[assignment]  # every RpcError from a stub is also a Call
    code = call.code()
    message = call.details() or code.name.lower()
    details: tuple[Message, ...] = ()
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        status = None
    if status is not None:
        details = tuple(_unpack(d) for d in status.details)
    # The call's metadata is in the trailers of a call that failed before answering, else in its headers.
    trailers, headers = call.trailing_metadata() or (), call.initial_metadata() or ()
    request_id = next((str(v) for k, v in (*trailers, *headers) if k == "x-request-id"), "")
    rate_limit = RateLimit.from_metadata(trailers, headers)
    return _BY_CODE.get(code, Unknown)(message, details=details, request_id=request_id, rate_limit=rate_limit)


def _unpack(packed: any_pb2.Any) -> Message:
    for kind in _DETAIL_TYPES:
        if packed.TypeName() == kind.DESCRIPTOR.full_name:
            message = kind()
            packed.Unpack(message)
            return message
    return packed
