"""A loopback HTTP proxy in front of the S3 server that spoils chosen requests.

Faults: an S3 error status, a connection dropped before or after the server acted on
the request, an answer cut short, a request held before it is forwarded (an upload in
flight) or an answer held after the server stored the object; a fault can also just
say when a request has been answered. The proxy runs on the caller's event loop
(``async with``) or on its own thread (``in_thread``), so a test can block, for
instance while it waits for a worker process, without stalling S3 traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Fault:
    """What the proxy does to one request.

    ``status``: answer with an S3 error; ``drop``: close the connection before forwarding;
    ``lost_answer``: forward it and close without answering; ``cut_answer``: forward it
    and pass on half of the answer; ``stall``: wait ``delay_s`` before forwarding it;
    ``held_answer``: forward it, then wait ``delay_s`` before answering; ``answered``:
    nothing but the ``signal``. ``signal`` is set once the fault has taken hold: for
    ``stall`` and ``held_answer`` as the wait begins, for ``answered`` once the answer
    has been sent, for the others when the request arrives.
    """

    kind: Literal["status", "drop", "lost_answer", "cut_answer", "stall", "held_answer", "answered"]
    status: int = 503
    code: str = "SlowDown"
    delay_s: float = 0.0
    signal: threading.Event | None = None

    def set_signal(self) -> None:
        if self.signal is not None:
            self.signal.set()


Rule = Callable[[int, str], Fault | None]
"""(request number from 0, request line such as ``PUT /bucket/key HTTP/1.1``) → its fault."""


class FaultyProxy:
    """An HTTP proxy on loopback in front of the S3 server that spoils chosen requests.

    It serves one request per connection and tells both sides to close, so requests are
    numbered in arrival order; ``faults`` maps a request number to its fault, or is a
    rule deciding for each request. Every connection is bounded by a timeout and all
    are cancelled when the proxy stops.
    """

    def __init__(self, upstream: str, faults: dict[int, Fault] | Rule, port: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        if isinstance(faults, dict):
            table = faults
            self.rule: Rule = lambda number, _line: table.get(number)
        else:
            self.rule = faults
        self.port = port
        self.requests: list[str] = []
        self._accepted = 0
        self._connections: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[str]:
        """Serve from a thread of its own for the duration of the ``with`` block."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="faulty-s3", daemon=True)
        thread.start()
        try:
            yield asyncio.run_coroutine_threadsafe(self.__aenter__(), loop).result(10)
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.__aexit__(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        number = self._accepted
        self._accepted += 1
        try:
            async with asyncio.timeout(30):
                head, body = await self._read_request(reader, writer)
                line = head.split(b"\r\n", 1)[0].decode()
                self.requests.append(line)
                fault = self.rule(number, line) or Fault("answered")
                if fault.kind in ("status", "drop", "lost_answer", "cut_answer"):
                    fault.set_signal()
                if fault.kind == "drop":
                    writer.transport.abort()
                    return
                if fault.kind == "status":
                    writer.write(error_response(fault))
                    await writer.drain()
                    return
                if fault.kind == "stall":
                    fault.set_signal()
                    await asyncio.sleep(fault.delay_s)
                response = await self._forward(head, body)
                if fault.kind == "held_answer":
                    fault.set_signal()
                    await asyncio.sleep(fault.delay_s)
                if fault.kind == "lost_answer":
                    writer.transport.abort()
                    return
                if fault.kind == "cut_answer":
                    head_end = response.index(b"\r\n\r\n") + 4
                    response = response[: head_end + (len(response) - head_end) // 2]
                writer.write(response)
                await writer.drain()
                if fault.kind == "answered":
                    fault.set_signal()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away, as a killed worker does
        finally:
            writer.close()
            self._connections.discard(task)

    @staticmethod
    async def _read_request(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = parse_headers(head)
        assert "chunked" not in headers.get("transfer-encoding", ""), "chunked bodies unsupported"
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return head, body

    async def _forward(self, head: bytes, body: bytes) -> bytes:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        try:
            upstream_writer.write(with_connection_close(head, drop=("expect",)) + body)
            await upstream_writer.drain()
            response = await upstream_reader.read()  # moto closes after answering
        finally:
            upstream_writer.close()
        response_head, separator, response_body = response.partition(b"\r\n\r\n")
        return with_connection_close(response_head + separator) + response_body


def parse_headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


def with_connection_close(head: bytes, drop: tuple[str, ...] = ()) -> bytes:
    lines = head.decode("latin-1").split("\r\n")
    kept = [
        line
        for line in lines[1:]
        if line and line.split(":", 1)[0].strip().lower() not in ("connection", *drop)
    ]
    return "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")


def error_response(fault: Fault) -> bytes:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{fault.code}</Code><Message>injected fault</Message></Error>"
    ).encode()
    return (
        f"HTTP/1.1 {fault.status} Injected\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
