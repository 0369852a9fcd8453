"""A step backend on any OpenAI-compatible chat-completions API, through the openai SDK.

OpenAI, Azure OpenAI, vLLM, Ollama and llama.cpp's server all speak it. Each
call gets the time the caller has left (less what the rules fallback and the
audit need), is retried with backoff on transient faults (connection errors,
429, 5xx) only while that time lasts, and goes through the
backend's circuit breaker. Whatever happens, the caller gets either a reply
(with its token counts, also for an answer that fails validation) or
ModelUnavailable saying why, never an exception of the SDK's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import httpx2
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    stop_before_delay,
)
from tenacity.wait import wait_exponential_jitter

from server.backends.answers import NARRATIVE_PROMPT, SYSTEM_PROMPT, Answer, ModelQuestion, describe_case
from server.breaker import CircuitBreaker
from server.domain import Case

# Faults worth another try; anything else (400, 401, 404 ...) will not mend itself.
TRANSIENT = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError)
_MAX_ATTEMPTS = 3
# Below this, an attempt could not finish: fall back instead.
_MIN_ATTEMPT_SECONDS = 0.05
Sent = TypeVar("Sent")


class ModelUnavailable(Exception):
    """The model gave no answer: `kind` says which way (for metrics), `reason` says it for people.

    A provider answering an error (429, 5xx) bills nothing; one that timed out in flight, or whose
    stream broke off, may have.
    """

    def __init__(
        self, kind: Literal["timeout", "error", "circuit_open"], reason: str, *, billable: bool = False
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        # The provider had the request and did not answer it whole: it may bill it.
        self.billable = billable


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Reply(Generic[Answer]):
    """A model's reply: the validated answer, or None when it did not validate."""

    answer: Answer | None
    usage: Usage


def provider_client(base_url: str, api_key: str, *, max_connections: int) -> AsyncOpenAI:
    """The SDK's client of one provider, on aiohttp, the SDK's transport for many concurrent calls.

    At 1,000 calls in flight against a model answering in 1 s, httpx's pool
    (whose work per request grows with its connections) carried 136 calls a
    second through one pool of 1,000 connections and 183 through fifty of 20;
    aiohttp's 226, the process then bound by its CPU.
    """
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    # max_retries=0: retries are ours, bounded by the caller's deadline.
    return AsyncOpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, http_client=DefaultAioHttpClient(limits=limits)
    )


class OpenAICompatibleBackend:
    """One model at one provider, e.g. openai:gpt-4o-mini."""

    def __init__(
        self, name: str, client: AsyncOpenAI, model: str, breaker: CircuitBreaker, *, max_output_tokens: int
    ) -> None:
        self.name = name
        self.breaker = breaker
        self._client = client
        self._model = model
        self._max_output_tokens = max_output_tokens

    @property
    def max_output_tokens(self) -> int:
        return self._max_output_tokens

    def input_tokens_at_most(self, prompt: str, content: str) -> int:
        """A generous bound on the tokens of `prompt` about `content` (a token is rarely under 3 characters)."""
        # The system message (our prompt and the question's) and the user's (the case), as _messages builds them.
        return (len(SYSTEM_PROMPT) + 2 + len(prompt) + len(content)) // 3 + 16 * 2

    async def ask(self, question: ModelQuestion[Answer], case: Case, *, seconds: float) -> Reply[Answer]:
        """Asks `question` about `case`; the reply must fit the question's answer type.

        Sent with the SDK's plain `post` and read as JSON here: the typed `create` walks its parameters
        and builds typed objects of the reply on every call, which doubled the SDK's CPU per call
        (1.8-2.3 ms against 0.9 ms, measured at 50 in flight) in a process bound by its CPU.
        """
        body = {
            "model": self._model,
            "max_completion_tokens": self._max_output_tokens,
            "temperature": 0,
            "messages": _messages(question.prompt, describe_case(case)),
            "response_format": question.response_format,
        }

        def send(remaining: float) -> Awaitable[httpx2.Response]:
            options: openai.RequestOptions = {"timeout": remaining}
            return self._client.post("/chat/completions", body=body, cast_to=httpx2.Response, options=options)

        response = await self._call(seconds, send)
        content, usage = _read_reply(response.content)
        try:
            return Reply(question.answer_type.model_validate_json(content or ""), usage)
        except ValueError:  # pydantic's ValidationError: not the answer asked for
            return Reply(None, usage)

    async def narrate(self, case: Case, summary: str, *, seconds: float) -> AsyncIterator[str | Usage]:
        """Streams the narrative's text chunks, then its Usage last."""
        messages = _messages(NARRATIVE_PROMPT, f"{describe_case(case)}\n\nSuggested level and reasons:\n{summary}")

        def send(remaining: float) -> Awaitable[openai.AsyncStream[ChatCompletionChunk]]:
            return self._client.chat.completions.create(
                model=self._model,
                max_completion_tokens=self._max_output_tokens,
                temperature=0,
                timeout=remaining,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )

        stream = await self._call(seconds, send)
        usage = Usage()
        try:
            async with asyncio.timeout(seconds):
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = _usage(chunk.usage)
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield choice.delta.content
        except (TimeoutError, openai.OpenAIError) as error:
            self.breaker.failed(error)
            yield usage
            kind: Literal["timeout", "error"] = "timeout" if isinstance(error, TimeoutError) else "error"
            # The stream was open: the provider had the request.
            raise ModelUnavailable(kind, f"{kind} while streaming", billable=True) from None
        yield usage

    async def _call(self, seconds: float, send: Callable[[float], Awaitable[Sent]]) -> Sent:
        """`send(seconds left)`, retried on transient faults while the time lasts, through the breaker."""
        if not self.breaker.allow():
            raise ModelUnavailable("circuit_open", "circuit open")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        retrying = AsyncRetrying(
            # Not a timed-out attempt: the provider may bill it, and a call's reservation covers one such.
            retry=retry_if_exception_type(TRANSIENT) & retry_if_not_exception_type(openai.APITimeoutError),
            stop=stop_after_attempt(_MAX_ATTEMPTS) | stop_before_delay(seconds),
            wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
            reraise=True,
        )
        in_flight = False  # an attempt was sent and ran out of time unanswered
        try:
            async for attempt in retrying:
                with attempt:
                    remaining = deadline - loop.time()
                    if remaining < _MIN_ATTEMPT_SECONDS:
                        raise TimeoutError
                    try:
                        async with asyncio.timeout(remaining):
                            response = await send(remaining)
                    except (TimeoutError, openai.APITimeoutError):
                        in_flight = True
                        raise
        except (TimeoutError, openai.APITimeoutError) as error:
            self.breaker.failed(error)
            raise ModelUnavailable("timeout", "timeout", billable=in_flight) from None
        except openai.OpenAIError as error:
            self.breaker.failed(error)
            raise ModelUnavailable("error", f"error ({type(error).__name__})") from None
        self.breaker.succeeded()
        return response


def _messages(prompt: str, content: str) -> list[ChatCompletionMessageParam]:
    return [
        {"role": "system", "content": f"{SYSTEM_PROMPT}\n\n{prompt}"},
        {"role": "user", "content": content},
    ]


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    return Usage(int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0))


def _read_reply(body: bytes) -> tuple[str | None, Usage]:
    """A chat completion's first message and token counts; what is missing or malformed reads as absent."""
    try:
        reply = json.loads(body)
    except ValueError:
        return None, Usage()
    if not isinstance(reply, dict):
        return None, Usage()
    try:
        counts = reply.get("usage") or {}
        usage = Usage(int(counts.get("prompt_tokens") or 0), int(counts.get("completion_tokens") or 0))
    except (AttributeError, TypeError, ValueError):
        usage = Usage()
    try:
        content = reply["choices"][0]["message"]["content"]
    except (LookupError, TypeError):
        return None, usage
    return (content if isinstance(content, str) else None), usage
