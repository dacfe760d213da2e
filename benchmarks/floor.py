"""The floor: the least a Python fan-out server can do per delivery, measured the
same way as the gateway.

``python -m benchmarks.floor --clients N --rate R|max --duration S [--pin]``
runs the fan-out scenario (:mod:`benchmarks.fanout`, same origin, same load
generator, same JSON fields, ``"server": "floor"``) against the server below.

The server (``--serve-fd FD --upstream HOST:PORT``) is a raw uvloop program:
it answers every GET with ``200 text/event-stream`` (chunked) and ``: ok``,
keeps the transports in a dict, reads the origin's stream with a raw
protocol, and for every read from the origin frames the complete events once
as one chunk and calls ``transport.write(frame)`` on every client in a loop.
No ASGI, no HTTP library, no per-client queue, task or coroutine: what is left
is the Python-level loop, uvloop's write path and the kernel. The gap between
its ``server_cpu_us_per_delivery`` and the gateway's is what the gateway's
layers cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from typing import cast

import uvloop

from benchmarks.proc import die_with_parent, raise_nofile

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
FIRST = b"6\r\n: ok\n\n\r\n"
HEALTH = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


class Hub:
    def __init__(self) -> None:
        self.clients: dict[asyncio.Transport, None] = {}

    def publish(self, events: bytes) -> None:
        frame = b"%x\r\n%s\r\n" % (len(events), events)
        for transport in self.clients:
            transport.write(frame)


class ClientProtocol(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""  # None once streaming

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.head is None:
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        if self.head.startswith(b"GET /healthz "):
            self.transport.write(HEALTH)
            self.transport.close()
            return
        self.head = None
        self.transport.write(HEAD + FIRST)
        self.hub.clients[self.transport] = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.hub.clients.pop(self.transport, None)


class UpstreamProtocol(asyncio.Protocol):
    """Reads the origin's chunked SSE stream; publishes complete events per read."""

    def __init__(self, hub: Hub, request: bytes, lost: asyncio.Future[None]) -> None:
        self.hub = hub
        self.request = request
        self.lost = lost
        self.head: bytes | None = b""
        self.raw = b""  # chunked bytes not yet de-framed
        self.body = b""  # de-framed bytes not yet a complete event

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data, self.head = self.head[end + 4 :], None
        raw = self.raw + data
        pos, parts = 0, [self.body]
        while True:  # de-chunk whole chunks only (the origin sends small ones)
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(raw[pos:eol], 16)
            if len(raw) < eol + 2 + size + 2:
                break
            parts.append(raw[eol + 2 : eol + 2 + size])
            pos = eol + 4 + size
        self.raw = raw[pos:]
        body = b"".join(parts)
        end = body.rfind(b"\n\n")
        if end < 0:
            self.body = body
            return
        self.body = body[end + 2 :]
        self.hub.publish(body[: end + 2])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def serve(fd: int, upstream: str) -> None:
    loop = asyncio.get_running_loop()
    hub = Hub()
    sock = socket.socket(fileno=fd)
    server = await loop.create_server(lambda: ClientProtocol(hub), sock=sock, backlog=4096)
    host, _, port = upstream.rpartition(":")
    request = b"GET /stream HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n" % (
        upstream.encode()
    )
    lost = loop.create_future()
    await loop.create_connection(lambda: UpstreamProtocol(hub, request, lost), host, int(port))
    async with server:
        await lost  # the run ends when the origin goes away (or on SIGTERM)


def serve_main(fd: int, upstream: str) -> int:
    die_with_parent()
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):  # SIGTERM: the scenario is done
        uvloop.run(serve(fd, upstream))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.serve_fd is not None:
        import signal

        signal.signal(signal.SIGTERM, signal.default_int_handler)
        return serve_main(args.serve_fd, args.upstream)
    from benchmarks import fanout

    return fanout.main(rest, server_kind="floor")


if __name__ == "__main__":
    sys.exit(main())
