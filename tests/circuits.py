"""The circuit breakers' log lines (server/breaker.py), as tests read them."""

from __future__ import annotations

from typing import Any

import pytest


def circuit_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    """Each line's event ("circuit opened", "circuit closed") and fields, in order."""
    return [
        (r.getMessage(), r.fields)  # type: ignore[attr-defined]  # the fields logs.py writes out
        for r in caplog.records
        if r.name == "triage.circuit"
    ]


def dependencies(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    """The dependencies named by the lines of `event`, in order."""
    return [fields["dependency"] for logged, fields in circuit_lines(caplog) if logged == event]
