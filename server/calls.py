"""What the interceptors learn about a call, for the services and the access log.

The observability interceptor opens a CallState for every call; the others
fill it in (who is calling, the deadline, rate-limit headers) and services
read it (the key id and request id go into the audit record, the level into
the access log). It lives in a context variable, which follows the call's
task and nothing else.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum

from server.errors import DeadlineExceeded


class Role(StrEnum):
    """What a caller may do; named as in the contract's `Role` enum."""

    DEMO = "demo"
    CLINICIAN = "clinician"
    SERVICE = "service"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    `subject` is what rate limits and usage are counted against: an API key's
    id, an OIDC issuer and subject, or an anonymous caller's address. It is
    never a secret.
    """

    subject: str
    # None: a genuine identity that holds none of our roles (an OIDC token without the claim).
    role: Role | None
    key_id: str = ""
    # The caller's own rate limit ("10/second;1000/hour"); empty means the role's default.
    rate_limit: str = ""
    # The caller's own monthly model budget (0: none), and whether spending it refuses calls.
    monthly_budget_usd_micros: int = 0
    refuse_over_budget: bool = False

    @property
    def account(self) -> str:
        """What audit records, usage and budgets are kept under: the key id, else the subject."""
        return self.key_id or self.subject


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One model call's use: the step, the backend, tokens and cost."""

    step: int
    backend: str
    input_tokens: int
    output_tokens: int
    usd_micros: int


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

    def check_deadline(self) -> None:
        """Raises DeadlineExceeded once the call's time is up; called between units of work."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded("the deadline expired before the classification was finished")


_current: ContextVar[CallState | None] = ContextVar("triage_call", default=None)


def current_call() -> CallState | None:
    """The state of the call being served, or None outside a call (tests, the evaluator)."""
    return _current.get()


def begin_call(state: CallState) -> None:
    """Makes `state` the current call's; the context variable dies with the call's task."""
    _current.set(state)
