"""A real HTTP server speaking the OpenAI chat-completions API, for tests of model backends.

Each request is answered by the next planned reply for its question (the
`json_schema` name, or "narrative" for a streamed call), else by that
question's default: content, usage, a delay, an HTTP error, malformed JSON
or a stream of chunks. Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import send_json


@dataclass(frozen=True)
class Reply:
    content: str = "{}"
    status: int = 200
    delay_seconds: float = 0.0
    input_tokens: int = 200
    output_tokens: int = 30
    # For streamed calls: the text chunks, and a pause before each.
    chunks: tuple[str, ...] = ()
    chunk_delay_seconds: float = 0.0


def answer(**content: Any) -> Reply:
    return Reply(content=json.dumps(content))


@dataclass
class FakeLLM:
    url: str = ""
    defaults: dict[str, Reply] = field(default_factory=dict)
    planned: dict[str, list[Reply]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, question: str, *replies: Reply) -> None:
        with self._lock:
            self.planned.setdefault(question, []).extend(replies)

    def asked(self, question: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if _question(r) == question]

    def _next(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(request)
            queue = self.planned.get(_question(request))
            if queue:
                return queue.pop(0)
            return self.defaults.get(_question(request), Reply(status=500))


def _question(request: dict[str, Any]) -> str:
    if request.get("stream"):
        return "narrative"
    return str(request.get("response_format", {}).get("json_schema", {}).get("name", ""))


def _handler(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = fake._next(request)
            time.sleep(reply.delay_seconds)
            try:
                if reply.status != 200:
                    self._send(reply.status, {"error": {"message": "planned failure", "type": "server_error"}})
                elif request.get("stream"):
                    self._stream(request, reply)
                else:
                    self._send(200, completion(request, reply))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: as a real server, carry on

        def _send(self, status: int, body: dict[str, Any]) -> None:
            send_json(self, status, body)

        def _stream(self, request: dict[str, Any], reply: Reply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in events(request, reply):
                time.sleep(reply.chunk_delay_seconds)
                data = f"data: {event}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def completion(request: dict[str, Any], reply: Reply) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content}, "finish_reason": "stop"}],
        "usage": _usage(reply),
    }


def events(request: dict[str, Any], reply: Reply) -> Iterator[str]:
    base = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request["model"],
    }
    for text in reply.chunks:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        yield json.dumps(base | {"choices": [choice]})
    yield json.dumps(base | {"choices": [], "usage": _usage(reply)})
    yield "[DONE]"


class _Server(ThreadingHTTPServer):
    # Thousands of callers at once (bench/fake_model.py) must queue, not be refused.
    request_queue_size = 4096
    daemon_threads = True


def start_fake_llm(port: int = 0) -> tuple[FakeLLM, ThreadingHTTPServer]:
    """Serves on 127.0.0.1:port (0: a free one) from a thread; a fixed port survives a restart."""
    fake = FakeLLM()
    server = _Server(("127.0.0.1", port), _handler(fake))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return fake, server
