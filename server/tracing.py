"""Tracing with OpenTelemetry: a span per call and per pipeline step, sent by OTLP.

Off unless TRIAGE_OTLP_ENDPOINT is set; then the gRPC instrumentation opens
a span for every call and the pipeline one per step. Span attributes are
methods, steps, backends, levels and status codes, never patient content.
"""

from __future__ import annotations

from grpc import aio
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

SERVICE_NAME = "triage"


def start_tracing(endpoint: str) -> tuple[TracerProvider, aio.ServerInterceptor]:
    """Exports spans to the OTLP/gRPC collector at `endpoint`; returns the provider and call interceptor."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    insecure = endpoint.startswith("http://")
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
    # Not installed globally: each server owns its provider, and shuts it down with itself.
    interceptor: aio.ServerInterceptor = aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return provider, interceptor
