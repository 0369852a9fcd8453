"""What the interceptors learn about a call, for the services and the access log.

The observability interceptor opens a CallState for every call; the others
fill it in (who is calling, the deadline, rate-limit headers) and services
read it (the key id and request id go into the audit record, the level into
the access log). It lives in a context variable, which follows the call's
task and nothing else. Only the transport layer reads it: the pipeline gets a
RunContext (server/domain.py) built from it as an argument.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from server.domain import LedgerEntry, Principal, Role, RunContext

__all__ = ["CallState", "LedgerEntry", "Principal", "Role", "begin_call", "current_call"]


@dataclass(slots=True)
class CallState:
    """One call's facts; never patient content."""

    method: str
    request_id: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    principal: Principal | None = None
    # time.monotonic() by which the call must finish; None means no deadline.
    deadline: float | None = None
    # Set when a classification is made, for the access log and metrics.
    esi_level: int | None = None
    # Metadata for the caller: headers, sent with the response or its error ...
    response_metadata: list[tuple[str, str]] = field(default_factory=list)
    # ... and trailers, known only at the end (the call's cost).
    trailers: list[tuple[str, str]] = field(default_factory=list)
    # What the call's model steps used, as they used it: settled even if the call is cancelled.
    ledger: list[LedgerEntry] = field(default_factory=list)

    def remaining_seconds(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def run_context(self) -> RunContext:
        """What the domain gets from this call: its deadline, its caller and its ledger (shared)."""
        return RunContext(deadline=self.deadline, principal=self.principal, ledger=self.ledger)


_current: ContextVar[CallState | None] = ContextVar("triage_call", default=None)


def current_call() -> CallState | None:
    """The state of the call being served, or None outside a call (tests, the evaluator)."""
    return _current.get()


def begin_call(state: CallState) -> None:
    """Makes `state` the current call's; the context variable dies with the call's task."""
    _current.set(state)
