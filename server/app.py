"""Builds and runs the triage server: services, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy import Engine

from interceptors.errors import ErrorInterceptor
from server.config import Settings
from server.esi.engine import RulesEngine
from server.pipeline.pipeline import Pipeline
from server.reflection import enable_reflection
from server.secret import load_server_secret
from server.services.admin import AdminService
from server.services.classifier import Classifier
from server.services.classify import ClassifyService
from server.services.explain import ExplainService
from server.store.audit import AuditLog
from server.store.database import open_database
from triage.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    classify_service_pb2,
    classify_service_pb2_grpc,
    explain_service_pb2,
    explain_service_pb2_grpc,
)

log = logging.getLogger("triage.server")

SERVICE_NAMES = (
    classify_service_pb2.DESCRIPTOR.services_by_name["ClassifyService"].full_name,
    explain_service_pb2.DESCRIPTOR.services_by_name["ExplainService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


class TriageServer:
    """One server process: a grpc.aio server and what its services need."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._server: aio.Server | None = None
        self._audit: AuditLog | None = None
        self._engine: Engine | None = None

    async def start(self) -> int:
        """Opens the store, starts serving, and returns the bound port."""
        settings = self.settings
        engine = await asyncio.to_thread(open_database, settings.database_url)
        self._engine = engine
        secret = await asyncio.to_thread(load_server_secret, settings)
        audit = AuditLog(
            engine,
            max_batch_records=settings.audit_max_batch_records,
            max_pending_records=settings.audit_max_pending_records,
        )
        self._audit = audit
        rules = await asyncio.to_thread(RulesEngine)
        pipeline = Pipeline(rules, danger_zone_policy=settings.danger_zone_policy)
        classifier = Classifier(pipeline, audit, secret)

        server = aio.server(interceptors=[ErrorInterceptor()])
        classify_service_pb2_grpc.add_ClassifyServiceServicer_to_server(ClassifyService(classifier), server)
        explain_service_pb2_grpc.add_ExplainServiceServicer_to_server(ExplainService(classifier), server)
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(audit), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(server, (*SERVICE_NAMES, health.SERVICE_NAME))
        self.port = server.add_insecure_port(f"{settings.host}:{settings.port}")
        if self.port == 0:
            raise OSError(f"could not bind {settings.host}:{settings.port}")
        await server.start()
        self._server = server
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={"fields": {"host": settings.host, "port": self.port, "ruleset": pipeline.engine.version}},
        )
        return self.port

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Health goes NOT_SERVING, in-flight calls get the grace period, the store is flushed."""
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        fields: dict[str, object] = {"port": self.port}
        if self._audit is not None:
            await self._audit.close()
            # How well group commit worked: records per transaction.
            fields |= {"audit_records": self._audit.records_written, "audit_commits": self._audit.commits}
        if self._engine is not None:
            self._engine.dispose()
        log.info("stopped", extra={"fields": fields})


async def serve(settings: Settings) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
    server = TriageServer(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    await stopping.wait()
    log.info("shutting down", extra={"fields": {"grace_seconds": settings.shutdown_grace_seconds}})
    await server.stop()
