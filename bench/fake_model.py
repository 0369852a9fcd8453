"""`python -m bench.fake_model`: an OpenAI-compatible model server that answers after a set delay.

A standalone process (so that a fault script may stop, hang or kill it) that
answers decision points B and C and the narrative with plausible content,
each after `--delay-seconds`, and logs {"event": "serving", "port": N} once it
listens. The replies are the test suite's (tests/fake_llm.py); the server is
asyncio rather than its thread per connection, so that thousands of calls
waiting on the model at once cost the benchmark machine almost nothing: at
5,000 in flight the server under test must be the bottleneck, not its model.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
from typing import Any

from tests.fake_llm import FakeLLM, Reply, answer, completion, events

_REASONS = {200: b"OK", 500: b"Internal Server Error"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: a free one")
    parser.add_argument("--delay-seconds", type=float, default=1.0, help="how long each answer takes")
    args = parser.parse_args()
    fake = FakeLLM()
    for question, reply in {
        "high_risk": answer(high_risk=False, reasons=[]),
        "resources": answer(resources=[{"kind": "labs", "reason": "troponin"}]),
        "narrative": Reply(chunks=("A narrative.",)),
    }.items():
        fake.defaults[question] = dataclasses.replace(reply, delay_seconds=args.delay_seconds)
    # Nothing reads the record of requests in a long run: keep memory flat.
    fake.requests = _Discard()
    asyncio.run(_serve(fake, args.port))


async def _serve(fake: FakeLLM, port: int) -> None:
    server = await asyncio.start_server(lambda r, w: _connection(fake, r, w), "127.0.0.1", port, backlog=4096)
    print(json.dumps({"event": "serving", "port": server.sockets[0].getsockname()[1]}), flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    async with server:
        await stopped.wait()


async def _connection(fake: FakeLLM, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive: one request after another on the connection, as the client pools them."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (int(value) for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                 if name.strip().lower() == b"content-length"),
                0,
            )  # fmt: skip
            request = json.loads(await reader.readexactly(length))
            reply = fake._next(request)
            await asyncio.sleep(reply.delay_seconds)
            if reply.status != 200:
                _send(writer, reply.status, {"error": {"message": "planned failure", "type": "server_error"}})
            elif request.get("stream"):
                await _stream(writer, request, reply)
            else:
                _send(writer, 200, completion(request, reply))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client closed the connection, or gave up on a call: as a real server, carry on
    finally:
        writer.close()


def _send(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    writer.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (status, _REASONS.get(status, b"Error"), len(data))
        + data
    )


async def _stream(writer: asyncio.StreamWriter, request: dict[str, Any], reply: Reply) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    for event in events(request, reply):
        await asyncio.sleep(reply.chunk_delay_seconds)
        data = f"data: {event}\n\n".encode()
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\n\r\n")


class _Discard(list[dict[str, object]]):
    """A request log that keeps nothing."""

    def append(self, item: dict[str, object]) -> None:
        pass


if __name__ == "__main__":
    main()
