"""Server reflection that also answers for method symbols, so ghz and grpcurl work.

Clients such as ghz ask reflection for the file containing
"triage.v1.ClassifyService.Classify"; protobuf's default pool only resolves the
service, so grpcio-reflection answers NOT_FOUND (grpc/grpc#34743,
bojand/ghz#419). This pool resolves a method to its service's file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc import aio
from grpc_reflection.v1alpha import reflection


class MethodAwarePool:
    """The default descriptor pool, with Service.Method symbols resolved to the service's file."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:  # noqa: N802 - the pool's interface
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            if not service:
                raise
            try:
                found = self._pool.FindServiceByName(service)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in found.methods_by_name:
                raise KeyError(symbol) from None
            return found.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable_reflection(server: aio.Server, service_names: Iterable[str]) -> None:
    """Serves reflection for the given services and for reflection itself."""
    names = (*service_names, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=cast(descriptor_pool.DescriptorPool, MethodAwarePool()))
