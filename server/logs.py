"""Structured JSON logs on stderr, one object per line.

Log calls pass data only as `extra={"fields": {...}}` with ids, codes, levels
and timings. Nothing here formats patient content, and callers must never put
it in a message or a field. A line written inside a trace span (tracing on)
carries the span's trace_id and span_id, to find the call's trace from its log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, event, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            # Which worker process, when several serve one port.
            "pid": record.process,
            "event": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = trace.format_trace_id(span.trace_id)
            entry["span_id"] = trace.format_span_id(span.span_id)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: an exception's text may carry request content.
            entry["error_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    # Our lines never name a source file, and finding the caller walks the stack
    # on every call (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    # The model SDK and its HTTP stack may log request bodies (patient content)
    # or headers (provider keys) at DEBUG, whatever our own level.
    for name in ("openai", "httpx", "httpcore", "httpx2", "httpcore2", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Alembic narrates every schema check at INFO (each worker checks at start); its warnings still show.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
