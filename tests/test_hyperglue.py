"""gateway.hyperglue against the pinned hypercorn, over HTTP/1.1 and HTTP/2:
if an upgrade moves the internals it reaches into, these fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import pytest

from gateway.asgi import Receive, Scope, Send
from gateway.hyperglue import (
    Connection,
    DirectH2Writer,
    DirectH11Writer,
    chunk_of,
    connection_of,
)
from gateway.hyperglue.h2guard import _transport_of
from tests.support.clients import RawSSEClient
from tests.support.inprocess import hypercorn_objects, serve_asgi

found: dict[str, Connection | None] = {}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/direct":
        await direct_app(send)
        return
    if scope["path"] == "/direct2":
        await direct_h2_app(send)
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


h2_results: dict[str, object] = {}


async def direct_h2_app(send: Send) -> None:
    """DATA frames handed straight to h2 between ASGI sends, and every case in
    which the writer must refuse (the frame then goes through ASGI)."""
    connection = connection_of(send)
    assert connection is not None
    assert connection.http2
    await send({"type": "http.response.start", "status": 200, "headers": []})
    writer = connection.direct_writer()
    assert isinstance(writer, DirectH2Writer)
    pending = asyncio.ensure_future(
        send({"type": "http.response.body", "body": b"first;", "more_body": True})
    )
    await asyncio.sleep(0)  # "first;" is in hypercorn's stream buffer, not sent yet
    h2_results["refused_while_buffered"] = not writer(b"early;")
    await pending
    async with asyncio.timeout(5):
        # polled: nothing signals that hypercorn's sender has sent "first;"
        while not writer(b"a;"):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    assert writer(b"b;")
    h2_results["refused_too_big"] = not writer(b"x" * 20_000)  # > one frame (16,384)
    h2_results["written"] = writer.written
    h2_results["transport_found"] = _transport_of(connection.protocol) is connection.transport
    await send({"type": "http.response.body", "body": b"last", "more_body": False})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    found.clear()
    with hypercorn_objects(lean=True):  # as the gateway runs: GuardedH2Protocol batches the writes
        async with serve_asgi(app) as bound:
            yield bound


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


async def h2_get(
    port: int, path: str, *, window: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, h2.connection.H2Connection]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    if window is not None:
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    conn.send_headers(
        1,
        [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
        end_stream=True,
    )
    writer.write(conn.data_to_send())
    return reader, writer, conn


async def test_direct_h2_writes_keep_order_flow_control_and_the_end_of_stream(port: int) -> None:
    reader, writer, conn = await h2_get(port, "/direct2")
    body = b""
    frames: list[bytes] = []
    ended = False
    async with asyncio.timeout(5):
        while not ended:
            data = await reader.read(65536)
            assert data, "connection closed"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                    body += event.data
                    frames.append(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            writer.write(conn.data_to_send())
    assert body == b"first;a;b;last"
    assert b"a;" in frames  # a DATA frame of its own, not re-buffered by hypercorn
    assert h2_results == {
        "refused_while_buffered": True,
        "refused_too_big": True,
        "written": 4,
        # the GOAWAY grace abort finds uvloop's transport (it once looked for a subclass)
        "transport_found": True,
    }
    writer.close()


async def test_direct_h2_writer_respects_the_clients_window_and_resets(port: int) -> None:
    found.clear()
    reader, writer, conn = await h2_get(port, "/window", window=8)
    async with asyncio.timeout(5):
        got = b""
        while b"hello" not in got:  # the app's 5 bytes fit the 8-byte window
            for event in conn.receive_data(await reader.read(65536)):
                if isinstance(event, h2.events.DataReceived):
                    got += event.data
            writer.write(conn.data_to_send())
    connection = found["/window"]
    assert connection is not None
    direct = connection.direct_writer()
    assert isinstance(direct, DirectH2Writer)
    assert not direct(b"1234")  # 3 bytes of window left
    assert direct(b"123")
    assert not direct(b"4")  # window exhausted: the queue and hypercorn take over
    conn.reset_stream(1)
    writer.write(conn.data_to_send())
    await asyncio.sleep(0.1)
    assert not direct(b"after reset")  # refused, no exception
    writer.close()
