"""gateway.hyperglue against the pinned hypercorn, over HTTP/1.1 and HTTP/2:
if an upgrade moves the internals it reaches into, these fail."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from gateway.asgi import Receive, Scope, Send
from gateway.hyperglue import Connection, DirectH11Writer, chunk_of, connection_of
from tests.support.clients import RawSSEClient

found: dict[str, Connection | None] = {}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/direct":
        await direct_app(send)
        return
    found[scope["path"]] = connection_of(send)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


async def direct_app(send: Send) -> None:
    """Chunks written straight to the transport between ASGI sends."""
    connection = connection_of(send)
    assert connection is not None
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first;", "more_body": True})
    writer = DirectH11Writer(connection.transport, 1 << 20)
    frame = b"x" * 300
    assert writer(b"direct;")
    assert writer(frame)
    assert writer(frame)  # the same frame object: framed once, from the cache
    assert chunk_of(frame) is chunk_of(frame)
    assert writer.written == len(b"7\r\ndirect;\r\n") + 2 * len(b"12c\r\n" + frame + b"\r\n")
    assert not DirectH11Writer(connection.transport, 0)(b"refused")  # over the limit
    await send({"type": "http.response.body", "body": b"last", "more_body": False})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    found.clear()
    yield sock.getsockname()[1]
    stop.set()
    await asyncio.wait_for(server, 10)
    sock.detach()


async def test_http11_abort_resets_the_connection(port: int) -> None:
    client = await RawSSEClient.connect("127.0.0.1", port, "/one")
    await client.read_until(b"hello")
    connection = found["/one"]
    assert connection is not None
    assert not connection.http2
    assert connection.stream_id == 1
    connection.abort()
    with pytest.raises((ConnectionError, EOFError)):
        await client.read_until(b"never", timeout=5)


async def test_http2_abort_resets_only_that_stream(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h2conn.initiate_connection()
    for stream_id, path in ((1, "/a"), (3, "/b")):
        h2conn.send_headers(
            stream_id,
            [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
            end_stream=True,
        )
    writer.write(h2conn.data_to_send())
    events: list[h2.events.Event] = []

    async def pump(until: object) -> None:
        assert callable(until)
        async with asyncio.timeout(5):
            while not until():
                data = await reader.read(65536)
                assert data, "connection closed"
                events.extend(h2conn.receive_data(data))
                writer.write(h2conn.data_to_send())

    def got_data(stream_id: int) -> bool:
        return any(
            isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id for e in events
        )

    await pump(lambda: got_data(1) and got_data(3))
    connection = found["/a"]
    assert connection is not None
    assert connection.http2
    assert connection.stream_id == 1
    connection.abort()
    await pump(lambda: any(isinstance(e, h2.events.StreamReset) for e in events))
    (reset,) = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert reset.stream_id == 1
    # stream 3 and the connection live on
    h2conn.ping(b"12345678")
    writer.write(h2conn.data_to_send())
    await pump(lambda: any(isinstance(e, h2.events.PingAckReceived) for e in events))
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    other = found["/b"]
    assert other is not None
    assert not other.transport.is_closing()
    writer.close()


async def test_direct_writes_keep_http11_framing_and_keep_alive(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /direct HTTP/1.1\r\nhost: x\r\n\r\n"
    frame = b"x" * 300
    expected_body = (
        b"6\r\nfirst;\r\n7\r\ndirect;\r\n"
        + (b"12c\r\n" + frame + b"\r\n") * 2
        + b"4\r\nlast\r\n0\r\n\r\n"
    )
    for _ in range(2):  # the connection is reusable afterwards: h11's state is intact
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"transfer-encoding: chunked" in head.lower()
        body = await asyncio.wait_for(reader.readexactly(len(expected_body)), 5)
        assert body == expected_body
    writer.close()
