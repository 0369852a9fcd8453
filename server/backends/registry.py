"""The backends a step can be routed to, by name: `rules`, `learned`, or `<provider>:<model>`.

The provider `openai` is always known (TRIAGE_OPENAI_BASE_URL and
TRIAGE_OPENAI_API_KEY); more OpenAI-compatible providers (Azure OpenAI, a
vLLM or Ollama server) are configured side by side in TRIAGE_OPENAI_PROVIDERS.
A backend object, with its circuit breaker, is made on first use and kept;
the circuit's opening and closing are logged and counted under the backend's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from openai import AsyncOpenAI

from server.backends.openai_compatible import OpenAICompatibleBackend, provider_client
from server.breaker import CircuitBreaker
from server.runtime_config import LEARNED, RULES


@dataclass(frozen=True)
class Provider:
    base_url: str
    api_key: str


class BackendRegistry:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        max_output_tokens: int,
        max_connections: int,
        circuit_failure_threshold: int,
        circuit_open_seconds: float,
    ) -> None:
        self.providers = dict(providers)
        self._clients: dict[str, AsyncOpenAI] = {
            name: provider_client(p.base_url, p.api_key or "unset", max_connections=max_connections)
            for name, p in self.providers.items()
        }
        self._backends: dict[str, OpenAICompatibleBackend] = {}
        self._max_output_tokens = max_output_tokens
        self._threshold = circuit_failure_threshold
        self._open_seconds = circuit_open_seconds

    def knows(self, name: str) -> bool:
        provider, _, model = name.partition(":")
        return name in (RULES, LEARNED) or (provider in self.providers and bool(model))

    def model(self, name: str) -> OpenAICompatibleBackend:
        """The backend called `name` (`provider:model`; the provider must be known)."""
        backend = self._backends.get(name)
        if backend is None:
            provider, _, model = name.partition(":")
            backend = self._backends[name] = OpenAICompatibleBackend(
                name,
                self._clients[provider],
                model,
                CircuitBreaker(
                    name,
                    failure_threshold=self._threshold,
                    open_seconds=self._open_seconds,
                    fallback="the step takes the rules' answer",
                ),
                max_output_tokens=self._max_output_tokens,
            )
        return backend

    def circuit_state(self, name: str) -> str:
        backend = self._backends.get(name)
        return backend.breaker.state if backend is not None else "closed"

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
