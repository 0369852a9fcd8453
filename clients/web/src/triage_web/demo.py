"""The public demo: a case form whose submission is explained step by step, live.

The web tier calls Explain with its gateway key for the visitor's address, so the server counts the
visitor's calls against the demo limit. With the page's script the steps stream back as server-sent
events; without it the whole result comes back as a page. Nothing of the case is logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from triage.v1 import classification_pb2, explain_service_pb2
from triage_client import (
    AsyncTriageClient,
    InvalidArgument,
    PermissionDenied,
    RateLimit,
    ResourceExhausted,
    TriageCase,
    TriageError,
    Unauthenticated,
)
from triage_web import case_form, labels
from triage_web.context import client_address, fragment, web
from triage_web.labels import unavailable_message
from triage_web.security import checked_form

log = logging.getLogger("triage_web.demo")

EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class Reset:
    """When a rate limit frees a call: a clock time, and how long until then."""

    at: datetime
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> Reset:
        return cls(datetime.now(UTC) + timedelta(seconds=seconds), seconds)


@dataclass
class Outcome:
    """What a submission came to, event by event: the page renders it whole, the stream as it grows."""

    rate_limit: RateLimit | None = None
    steps: list[explain_service_pb2.StepEvent] = field(default_factory=list)
    narrative: str = ""
    classification: classification_pb2.Classification | None = None
    field_errors: dict[str, str] = field(default_factory=dict)
    error: str = ""
    status_code: int = 200

    @property
    def reset(self) -> Reset | None:
        return Reset.after(self.rate_limit.reset_seconds) if self.rate_limit is not None else None


def _refusal(error: ResourceExhausted) -> str:
    limit = error.rate_limit
    wait: float | None = limit.reset_seconds if limit is not None else None
    if wait is None and error.retry_delay is not None:
        wait = error.retry_delay.total_seconds()
    if limit is not None and limit.remaining == 0:
        message = f"You have used all {limit.limit} demo classifications allowed for today."
    else:
        message = "The demo is over its limits right now."
    if wait is not None:
        reset = Reset.after(wait)
        message += f" You can try again at {labels.clock(reset.at)} (in {labels.duration(wait)})."
    return message


async def _explain(client: AsyncTriageClient, case: TriageCase, outcome: Outcome) -> AsyncGenerator[str, None]:
    """Runs Explain, filling `outcome`; yields the name of each event as it happens."""
    stream = client.explain(case)
    try:
        async for response in stream:
            if outcome.rate_limit is None and client.rate_limit is not None:
                outcome.rate_limit = client.rate_limit
                yield "ratelimit"
            kind = response.WhichOneof("event")
            if kind == "step":
                outcome.steps.append(response.step)
                yield "step"
            elif kind == "narrative":
                outcome.narrative += response.narrative.text
                yield "narrative"
            elif kind == "classification":
                outcome.classification = response.classification
                yield "result"
    except InvalidArgument as error:
        outcome.field_errors, general = case_form.placed((v.field, v.description) for v in error.field_violations)
        outcome.error = "; ".join(general) or "Some values are not valid; see the fields marked in the form."
        outcome.status_code = 422
        if error.rate_limit is not None:  # the call counted
            outcome.rate_limit = error.rate_limit
            yield "ratelimit"
        yield "invalid"
    except ResourceExhausted as error:
        outcome.rate_limit = error.rate_limit or outcome.rate_limit
        outcome.error, outcome.status_code = _refusal(error), 429
        log.info("demo call refused: over the limit")
        if outcome.rate_limit is not None:
            yield "ratelimit"
        yield "error"
    except (Unauthenticated, PermissionDenied) as error:
        log.error("the gRPC server refused the gateway key (%s): check TRIAGE_WEB_API_KEY", error.code.name)
        outcome.error, outcome.status_code = "The demo is not available right now.", 503
        yield "error"
    except TriageError as error:
        log.warning("demo call failed: %s", error.code.name)
        outcome.error, outcome.status_code = unavailable_message(error), 503
        yield "error"
    finally:
        await stream.aclose()


async def _outcome_events(request: Request) -> tuple[Outcome, AsyncGenerator[str, None], dict[str, str | list[str]]]:
    """The submission's outcome and its events; the form's values to show again."""
    context = web(request)
    form, reason = await checked_form(request)
    submission = case_form.parse(form)
    outcome = Outcome()

    async def single(event: str) -> AsyncGenerator[str, None]:
        yield event

    if reason:
        log.warning("demo form refused: %s", reason)
        outcome.error, outcome.status_code = "This form expired or was not sent from this site: reload the page.", 403
        return outcome, single("error"), submission.values
    if submission.errors:
        outcome.field_errors, outcome.status_code = submission.errors, 422
        outcome.error = "Some values are not valid; see the fields marked in the form."
        return outcome, single("invalid"), submission.values
    if context.settings.api_key is None:
        outcome.error, outcome.status_code = "The demo is not configured on this server (no gateway key).", 503
        return outcome, single("error"), submission.values
    client = context.gateway.with_caller(end_user_address=client_address(request))
    return outcome, _explain(client, submission.case, outcome), submission.values


def _sse(event: str, data: dict[str, object]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _event_data(request: Request, event: str, outcome: Outcome) -> dict[str, object]:
    if event == "ratelimit":
        return {"html": fragment(request, "demo/_rate_limit.html", outcome=outcome)}
    if event == "step":
        return {"html": fragment(request, "demo/_step.html", step=outcome.steps[-1])}
    if event == "narrative":
        return {"text": outcome.narrative}
    if event == "result":
        return {"html": fragment(request, "demo/_result.html", outcome=outcome)}
    if event == "invalid":
        errors = {case_form.error_id(name): message for name, message in outcome.field_errors.items()}
        inputs = [case_form.input_id(name) for name in outcome.field_errors]
        return {"errors": errors, "inputs": inputs, "message": outcome.error}
    return {"message": outcome.error}


async def submit(request: Request) -> Response:
    outcome, events, values = await _outcome_events(request)
    if EVENT_STREAM not in request.headers.get("accept", ""):
        async for _ in events:
            pass
        return _page(request, values, outcome)
    # The first event decides the status (a refusal is a 429 and so on); the rest stream as they come.
    first = await anext(events, None)

    async def stream() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield _sse(first, _event_data(request, first, outcome))
            async for event in events:
                yield _sse(event, _event_data(request, event, outcome))
            yield _sse("done", {})
        finally:
            await events.aclose()

    return StreamingResponse(
        stream(),
        status_code=outcome.status_code,
        media_type=EVENT_STREAM,
        headers={"X-Accel-Buffering": "no"},
    )


def _page(request: Request, values: dict[str, str | list[str]], outcome: Outcome) -> Response:
    page = {"values": values, "outcome": outcome, "error": ""}
    return web(request).render(request, "demo/page.html", page, status_code=outcome.status_code)


async def demo_page(request: Request) -> Response:
    return _page(request, {}, Outcome())


routes = [
    Route("/", demo_page, methods=["GET"]),
    Route("/explain", submit, methods=["POST"]),
]
