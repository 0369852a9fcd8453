"""Tracing with OpenTelemetry: a span per call and per pipeline step, sent by OTLP.

Off unless TRIAGE_OTLP_ENDPOINT is set; then the gRPC instrumentation opens
a span for every call but health checks and reflection (probes every few
seconds: noise), and the pipeline one per step; log lines written inside a
span carry its trace and span ids (server/logs.py). Span attributes are
methods, steps, backends, levels and status codes, never patient content.
"""

from __future__ import annotations

from grpc import aio
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

SERVICE_NAME = "triage"
# Services whose calls get no span.
UNTRACED = filters.any_of(filters.service_prefix("grpc.health."), filters.service_prefix("grpc.reflection."))


def start_tracing(endpoint: str) -> tuple[TracerProvider, aio.ServerInterceptor]:
    """Exports spans to the OTLP/gRPC collector at `endpoint`; returns the provider and call interceptor."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    insecure = endpoint.startswith("http://")
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
    # Not installed globally: each server owns its provider, and shuts it down with itself.
    interceptor: aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=filters.negate(UNTRACED)
    )
    return provider, interceptor
