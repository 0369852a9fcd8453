"""TriageClient and AsyncTriageClient: typed, with deadlines, retries and credentials.

Both wrap the generated stubs of triage.v1. Every call has a default deadline,
retries on UNAVAILABLE through the gRPC service config (never for calls that
change state), sends `authorization: Bearer <key>` when a key is set, and
raises a typed `TriageError` carrying the server's details. `with_caller`
gives a client on the same channel that calls with other credentials or for
an end user (a gateway); `rate_limit` is the limit the latest call reported.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2

from triage.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    case_pb2,
    classification_pb2,
    classify_service_pb2,
    classify_service_pb2_grpc,
    explain_service_pb2,
    explain_service_pb2_grpc,
)
from triage_client.errors import TriageError, from_rpc_error
from triage_client.rate_limit import RateLimit

DEFAULT_TARGET = "127.0.0.1:50051"
ServingStatus = health_pb2.HealthCheckResponse.ServingStatus
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# The end user a gateway calls for (trusted from gateway keys only; see with_caller).
END_USER_ADDRESS_HEADER = "x-end-user-address"

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


@dataclass(frozen=True)
class Deadlines:
    """Default deadline of each kind of call, in seconds."""

    classify_seconds: float = 5.0
    explain_seconds: float = 30.0
    health_seconds: float = 2.0
    admin_seconds: float = 10.0


_READ_ONLY_ADMIN = ("GetConfig", "ListBackends", "ListApiKeys", "GetUsage", "ListAuditEvents")
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "triage.v1.ClassifyService"},
                    {"service": "triage.v1.ExplainService"},
                    {"service": "grpc.health.v1.Health", "method": "Check"},
                    *({"service": "triage.v1.AdminService", "method": m} for m in _READ_ONLY_ADMIN),
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 30_000),
)


def _target(target: str | None) -> str:
    return target or os.environ.get("TRIAGE_TARGET") or DEFAULT_TARGET


def _api_key(api_key: str | None) -> str:
    return api_key if api_key is not None else os.environ.get("TRIAGE_API_KEY", "")


class _Caller:
    """Who a client calls as, and for whom, and the rate limit its latest call reported: both clients' part."""

    _bearer: str
    _end_user_address: str
    _metadata: tuple[tuple[str, str], ...]
    _owns_channel: bool
    rate_limit: RateLimit | None

    def _become(self, bearer: str, end_user_address: str, *, owns_channel: bool) -> None:
        self._bearer, self._end_user_address, self._owns_channel = bearer, end_user_address, owns_channel
        metadata = [("authorization", f"Bearer {bearer}")] if bearer else []
        if end_user_address:
            metadata.append((END_USER_ADDRESS_HEADER, end_user_address))
        self._metadata = tuple(metadata)
        # The rate limit reported by this client's latest call (None before any, or when it reported none).
        self.rate_limit = None

    def with_caller(self, *, bearer: str | None = None, end_user_address: str | None = None) -> Self:
        """A client on this one's channel that calls with `bearer` (an API key or OIDC token) and/or for the end
        user at `end_user_address` (one IPv4 or IPv6 address, which the server trusts from gateway keys only).

        None keeps this client's value, "" sends none. Making one is cheap (no connection of its own), so make
        one per request or task: its `rate_limit` is then that caller's. Closing it leaves the channel open.
        """
        caller = copy.copy(self)
        caller._become(
            self._bearer if bearer is None else bearer,
            self._end_user_address if end_user_address is None else end_user_address,
            owns_channel=False,
        )
        return caller

    def _answered(self, *metadata: Any) -> None:
        self.rate_limit = RateLimit.from_metadata(*metadata)

    def _failed(self, error: grpc.RpcError) -> TriageError:
        typed = from_rpc_error(error)
        self.rate_limit = typed.rate_limit
        return typed


def tls_credentials(
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """TLS to the server: trust `ca_file` (default: the system's roots); with cert and key, mutual TLS."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("give cert_file and key_file together, for mutual TLS")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file else None,
        private_key=Path(key_file).read_bytes() if key_file else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
    )


def audit_request(
    *,
    page_size: int = 0,
    page_token: str = "",
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> admin_service_pb2.ListAuditEventsRequest:
    request = admin_service_pb2.ListAuditEventsRequest(page_size=page_size, page_token=page_token)
    if start_time is not None:
        request.start_time.FromDatetime(start_time)
    if end_time is not None:
        request.end_time.FromDatetime(end_time)
    return request


def explain_request(
    case: case_pb2.TriageCase | None, classification_id: str | None
) -> explain_service_pb2.ExplainRequest:
    if (case is None) == (classification_id is None):
        raise ValueError("give exactly one of case or classification_id")
    if case is not None:
        return explain_service_pb2.ExplainRequest(case=case)
    return explain_service_pb2.ExplainRequest(classification_id=str(classification_id))


# The health stubs' types omit HealthStub's methods, so the clients bind Check directly.
_HEALTH_REQUEST = health_pb2.HealthCheckRequest.SerializeToString
_HEALTH_RESPONSE = health_pb2.HealthCheckResponse.FromString


class TriageClient(_Caller):
    """A blocking client. Use as a context manager, or call close()."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        deadlines: Deadlines = Deadlines(),
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        """Connects to target (default: $TRIAGE_TARGET, else 127.0.0.1:50051) with $TRIAGE_API_KEY.

        Plaintext unless `credentials` are given (see `tls_credentials`).
        """
        self.target = _target(target)
        self._become(_api_key(api_key), "", owns_channel=True)
        self.deadlines = deadlines
        if channel is None:
            channel = (
                grpc.secure_channel(self.target, credentials, options=CHANNEL_OPTIONS)
                if credentials is not None
                else grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
            )
        self._channel = channel
        self._classify = classify_service_pb2_grpc.ClassifyServiceStub(self._channel)
        self._explain = explain_service_pb2_grpc.ExplainServiceStub(self._channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)
        self._health_check: grpc.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = self._channel.unary_unary(
            HEALTH_CHECK, request_serializer=_HEALTH_REQUEST, response_deserializer=_HEALTH_RESPONSE
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel, unless this client is a `with_caller` one, which shares it."""
        if self._owns_channel:
            self._channel.close()

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable[_Request, _Response], request: _Request, timeout: float | None
    ) -> _Response:
        try:
            response, call = method.with_call(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise self._failed(error) from None
        self._answered(call.initial_metadata())
        return response

    def classify(self, case: case_pb2.TriageCase, *, timeout: float | None = None) -> classification_pb2.Classification:
        """Suggests an ESI level for the case."""
        request = classify_service_pb2.ClassifyRequest(case=case)
        response = self._call(self._classify.Classify, request, timeout or self.deadlines.classify_seconds)
        return response.classification

    def explain(
        self,
        case: case_pb2.TriageCase | None = None,
        *,
        classification_id: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[explain_service_pb2.ExplainResponse]:
        """Yields each step as the server completes it; the classification comes last.

        `rate_limit` holds the call's rate limit by the time the first step is yielded.
        """
        request = explain_request(case, classification_id)
        stream = self._explain.Explain(
            request, timeout=timeout or self.deadlines.explain_seconds, metadata=self._metadata
        )
        started = False
        self.rate_limit = None  # a stream that ends before its first step reports none
        try:
            for response in stream:
                if not started:
                    started = True
                    self._answered(stream.initial_metadata())
                yield response
        except grpc.RpcError as error:
            raise self._failed(error) from None
        finally:
            stream.cancel()

    def health(self, service: str = "", *, timeout: float | None = None) -> int:
        """The serving status of a service ("" for the whole server), a ServingStatus value."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = self._call(self._health_check, request, timeout or self.deadlines.health_seconds)
        return response.status

    def _admin_deadline(self, timeout: float | None) -> float:
        return timeout or self.deadlines.admin_seconds

    def list_audit_events(
        self, request: admin_service_pb2.ListAuditEventsRequest | None = None, *, timeout: float | None = None
    ) -> admin_service_pb2.ListAuditEventsResponse:
        """One page of the audit log (admin); see iter_audit_events for all of them."""
        return self._call(
            self._admin.ListAuditEvents,
            request or admin_service_pb2.ListAuditEventsRequest(),
            self._admin_deadline(timeout),
        )

    def iter_audit_events(
        self, *, start_time: datetime | None = None, end_time: datetime | None = None, page_size: int = 0
    ) -> Iterator[admin_service_pb2.AuditEvent]:
        """Every audit event in the range, fetching page after page."""
        token = ""
        while True:
            request = audit_request(page_size=page_size, page_token=token, start_time=start_time, end_time=end_time)
            page = self.list_audit_events(request)
            yield from page.audit_events
            token = page.next_page_token
            if not token:
                return

    def iter_api_keys(self, *, page_size: int = 0, timeout: float | None = None) -> Iterator[admin_service_pb2.ApiKey]:
        """Every API key (never a secret), fetching page after page."""
        request = admin_service_pb2.ListApiKeysRequest(page_size=page_size)
        while True:
            page = self.list_api_keys(request, timeout=timeout)
            yield from page.api_keys
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def get_config(
        self, request: admin_service_pb2.GetConfigRequest | None = None, *, timeout: float | None = None
    ) -> admin_service_pb2.GetConfigResponse:
        return self._call(
            self._admin.GetConfig,
            request or admin_service_pb2.GetConfigRequest(),
            self._admin_deadline(timeout),
        )

    def update_config(
        self, request: admin_service_pb2.UpdateConfigRequest, *, timeout: float | None = None
    ) -> admin_service_pb2.UpdateConfigResponse:
        return self._call(self._admin.UpdateConfig, request, self._admin_deadline(timeout))

    def list_backends(
        self, request: admin_service_pb2.ListBackendsRequest | None = None, *, timeout: float | None = None
    ) -> admin_service_pb2.ListBackendsResponse:
        return self._call(
            self._admin.ListBackends,
            request or admin_service_pb2.ListBackendsRequest(),
            self._admin_deadline(timeout),
        )

    def create_api_key(
        self, request: admin_service_pb2.CreateApiKeyRequest, *, timeout: float | None = None
    ) -> admin_service_pb2.CreateApiKeyResponse:
        return self._call(self._admin.CreateApiKey, request, self._admin_deadline(timeout))

    def list_api_keys(
        self, request: admin_service_pb2.ListApiKeysRequest | None = None, *, timeout: float | None = None
    ) -> admin_service_pb2.ListApiKeysResponse:
        return self._call(
            self._admin.ListApiKeys,
            request or admin_service_pb2.ListApiKeysRequest(),
            self._admin_deadline(timeout),
        )

    def revoke_api_key(
        self, request: admin_service_pb2.RevokeApiKeyRequest, *, timeout: float | None = None
    ) -> admin_service_pb2.RevokeApiKeyResponse:
        return self._call(self._admin.RevokeApiKey, request, self._admin_deadline(timeout))

    def get_usage(
        self, request: admin_service_pb2.GetUsageRequest | None = None, *, timeout: float | None = None
    ) -> admin_service_pb2.GetUsageResponse:
        return self._call(
            self._admin.GetUsage,
            request or admin_service_pb2.GetUsageRequest(),
            self._admin_deadline(timeout),
        )


class AsyncTriageClient(_Caller):
    """An asyncio client with the same methods as TriageClient, awaited."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        deadlines: Deadlines = Deadlines(),
        credentials: grpc.ChannelCredentials | None = None,
        channel: aio.Channel | None = None,
    ) -> None:
        """Connects to target (default: $TRIAGE_TARGET, else 127.0.0.1:50051) with $TRIAGE_API_KEY.

        Plaintext unless `credentials` are given (see `tls_credentials`).
        """
        self.target = _target(target)
        self._become(_api_key(api_key), "", owns_channel=True)
        self.deadlines = deadlines
        if channel is None:
            channel = (
                aio.secure_channel(self.target, credentials, options=CHANNEL_OPTIONS)
                if credentials is not None
                else aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
            )
        self._channel = channel
        self._classify = classify_service_pb2_grpc.ClassifyServiceStub(self._channel)
        self._explain = explain_service_pb2_grpc.ExplainServiceStub(self._channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)
        self._health_check: aio.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = self._channel.unary_unary(
            HEALTH_CHECK, request_serializer=_HEALTH_REQUEST, response_deserializer=_HEALTH_RESPONSE
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel, unless this client is a `with_caller` one, which shares it."""
        if self._owns_channel:
            await self._channel.close()

    async def _call(
        self, method: aio.UnaryUnaryMultiCallable[_Request, _Response], request: _Request, timeout: float | None
    ) -> _Response:
        call = method(request, timeout=timeout, metadata=self._metadata)
        try:
            response = await call
        except grpc.RpcError as error:
            raise self._failed(error) from None
        self._answered(await call.initial_metadata())
        return response

    async def classify(
        self, case: case_pb2.TriageCase, *, timeout: float | None = None
    ) -> classification_pb2.Classification:
        """Suggests an ESI level for the case."""
        request = classify_service_pb2.ClassifyRequest(case=case)
        response = await self._call(self._classify.Classify, request, timeout or self.deadlines.classify_seconds)
        return response.classification

    async def explain(
        self,
        case: case_pb2.TriageCase | None = None,
        *,
        classification_id: str | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[explain_service_pb2.ExplainResponse, None]:
        """Yields each step as the server completes it; the classification comes last.

        Closing the generator early (`aclose()`) cancels the call on the server. `rate_limit` holds the call's
        rate limit by the time the first step is yielded.
        """
        request = explain_request(case, classification_id)
        call = self._explain.Explain(
            request, timeout=timeout or self.deadlines.explain_seconds, metadata=self._metadata
        )
        started = False
        self.rate_limit = None  # a stream that ends before its first step reports none
        try:
            async for response in call:
                if not started:
                    started = True
                    self._answered(await call.initial_metadata())
                yield response
        except grpc.RpcError as error:
            raise self._failed(error) from None
        finally:
            call.cancel()

    async def health(self, service: str = "", *, timeout: float | None = None) -> int:
        """The serving status of a service ("" for the whole server), a ServingStatus value."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._call(self._health_check, request, timeout or self.deadlines.health_seconds)
        return response.status

    def _admin_deadline(self, timeout: float | None) -> float:
        return timeout or self.deadlines.admin_seconds

    async def list_audit_events(
        self, request: admin_service_pb2.ListAuditEventsRequest | None = None, *, timeout: float | None = None
    ) -> admin_service_pb2.ListAuditEventsResponse:
        """One page of the audit log (admin); see iter_audit_events for all of them."""
        return await self._call(
            self._admin.ListAuditEvents,
            request or admin_service_pb2.ListAuditEventsRequest(),
            self._admin_deadline(timeout),
        )

    async def iter_audit_events(
        self, *, start_time: datetime | None = None, end_time: datetime | None = None, page_size: int = 0
    ) -> AsyncGenerator[admin_service_pb2.AuditEvent, None]:
        """Every audit event in the range, fetching page after page."""
        token = ""
        while True:
            request = audit_request(page_size=page_size, page_token=token, start_time=start_time, end_time=end_time)
            page = await self.list_audit_events(request)
            for event in page.audit_events:
                yield event
            token = page.next_page_token
            if not token:
                return

    async def iter_api_keys(
        self, *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncGenerator[admin_service_pb2.ApiKey, None]:
        """Every API key (never a secret), fetching page after page."""
        request = admin_service_pb2.ListApiKeysRequest(page_size=page_size)
        while True:
            page = await self.list_api_keys(request, timeout=timeout)
            for key in page.api_keys:
                yield key
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def get_config(
        self, request: admin_service_pb2.GetConfigRequest | None = None, *, timeout: float | None = None
    ) -> admin_service_pb2.GetConfigResponse:
        return await self._call(
            self._admin.GetConfig,
            request or admin_service_pb2.GetConfigRequest(),
            self._admin_deadline(timeout),
        )

    async def update_config(
        self, request: admin_service_pb2.UpdateConfigRequest, *, timeout: float | None = None
    ) -> admin_service_pb2.UpdateConfigResponse:
        return await self._call(self._admin.UpdateConfig, request, self._admin_deadline(timeout))

    async def list_backends(
        self, request: admin_service_pb2.ListBackendsRequest | None = None, *, timeout: float | None = None
    ) -> admin_service_pb2.ListBackendsResponse:
        return await self._call(
            self._admin.ListBackends,
            request or admin_service_pb2.ListBackendsRequest(),
            self._admin_deadline(timeout),
        )

    async def create_api_key(
        self, request: admin_service_pb2.CreateApiKeyRequest, *, timeout: float | None = None
    ) -> admin_service_pb2.CreateApiKeyResponse:
        return await self._call(self._admin.CreateApiKey, request, self._admin_deadline(timeout))

    async def list_api_keys(
        self, request: admin_service_pb2.ListApiKeysRequest | None = None, *, timeout: float | None = None
    ) -> admin_service_pb2.ListApiKeysResponse:
        return await self._call(
            self._admin.ListApiKeys,
            request or admin_service_pb2.ListApiKeysRequest(),
            self._admin_deadline(timeout),
        )

    async def revoke_api_key(
        self, request: admin_service_pb2.RevokeApiKeyRequest, *, timeout: float | None = None
    ) -> admin_service_pb2.RevokeApiKeyResponse:
        return await self._call(self._admin.RevokeApiKey, request, self._admin_deadline(timeout))

    async def get_usage(
        self, request: admin_service_pb2.GetUsageRequest | None = None, *, timeout: float | None = None
    ) -> admin_service_pb2.GetUsageResponse:
        return await self._call(
            self._admin.GetUsage,
            request or admin_service_pb2.GetUsageRequest(),
            self._admin_deadline(timeout),
        )
