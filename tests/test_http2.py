"""HTTP/2 at the edge, on connections the test controls frame by frame (the ``h2`` library
directly, h2c): no frozen streams after many requests, 100 streams on one connection, the
Rapid Reset guard, header-list and concurrency limits, ``Upgrade: h2c``, and the hypercorn
internals gateway.hyperglue relies on."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hypercorn.protocol
import pytest
from hypercorn.asyncio.run import worker_serve
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
from hyperframe.frame import Frame, GoAwayFrame

from gateway.config import ServerConfig
from gateway.hyperglue import GuardedH2Protocol, ResetBudget, h2_guard_installed
from tests.support.gateway import GatewayProcess
from tests.support.h2client import H2Client, H2Stream, flood_bytes
from tests.support.upstream import FakeUpstream

# The documented defaults (the gateway below runs with them).
RESET_BURST = 100
RESETS_PER_S = 20.0
MAX_STREAMS = 100
HEADER_LIST_BYTES = 16384


def test_documented_defaults() -> None:
    server = ServerConfig()
    assert server.h2_reset_burst == RESET_BURST
    assert server.h2_max_resets_per_s == RESETS_PER_S
    assert server.h2_max_concurrent_streams == MAX_STREAMS
    assert server.h2_max_header_list_bytes == HEADER_LIST_BYTES


@pytest.fixture
async def gateway(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    config = {
        "topics": [
            {"name": "t", "path": "/t", "upstream": upstream.url("/t")},
            {"name": "s", "path": "/s/{n}", "upstream": upstream.url("/u/{n}")},
            {"name": "y", "path": "/y", "upstream": upstream.url("/y"), "linger_s": 0},
            {
                "name": "z",
                "path": "/z",
                "upstream": upstream.url("/z"),
                "linger_s": 0,
                "queue_max_bytes": 65536,
            },
        ],
    }
    process = GatewayProcess(config, tmp_path=tmp_path)
    await process.start()
    yield process
    await process.stop()


async def open_stream(client: H2Client, path: str) -> H2Stream:
    stream = client.request(path)
    await client.wait(lambda: stream.status is not None or stream.done, 10, f"headers of {path}")
    assert stream.status == 200, (path, stream.status, bytes(stream.body))
    return stream


async def wait_all(
    client: H2Client, streams: list[H2Stream], what: str, *, done: bool = False
) -> None:
    def ready() -> bool:
        if client.goaway is not None:
            return True  # the server gave up on this connection: fail below, not by timeout
        return all(s.done if done else s.status is not None for s in streams)

    await client.wait(ready, 10, what)
    assert client.goaway is None, f"GOAWAY while waiting for {what}: {client.goaway}"


async def test_a_stream_survives_1100_requests_on_its_connection(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    """hypercorn's default keep_alive_max_requests (1000) would GOAWAY the connection and
    h2 would then freeze the stream: the events after the requests would never arrive."""
    async with await H2Client.connect(gateway.host, gateway.port) as client:
        sse = await open_stream(client, "/t")
        await upstream.wait_connections("/t", 1)
        upstream.publish("/t", "before", id="1")
        await client.wait_events(sse, 1)
        for _ in range(22):
            batch = [client.request("/healthz", accept_sse=False) for _ in range(50)]
            await wait_all(client, batch, "50 /healthz answers", done=True)
            assert [s.status for s in batch] == [200] * 50
            assert all(bytes(s.body) == b"ok\n" for s in batch)
        assert client.goaway is None
        upstream.publish("/t", "after 1,100 requests", id="2")
        upstream.publish("/t", "and more", id="3")
        await client.wait_events(sse, 3, timeout=5)
        assert [(e.id, e.data) for e in sse.events] == [
            ("1", "before"),
            ("2", "after 1,100 requests"),
            ("3", "and more"),
        ]
        assert not sse.done


async def test_100_streams_on_one_connection_get_every_event(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    topics = 10
    per_topic = MAX_STREAMS // topics
    events = 40
    async with await H2Client.connect(gateway.host, gateway.port) as client:
        streams = {n: [client.request(f"/s/{n}") for _ in range(per_topic)] for n in range(topics)}
        everything = [s for group in streams.values() for s in group]
        assert len(everything) == MAX_STREAMS
        await client.wait(
            lambda: all(s.status is not None or s.done for s in everything), 15, "100 heads"
        )
        assert [s.status for s in everything] == [200] * MAX_STREAMS
        for n in range(topics):
            await upstream.wait_connections(f"/u/{n}", 1)
        for i in range(1, events + 1):
            for n in range(topics):
                upstream.publish(f"/u/{n}", f"event {i} of topic {n}", id=str(i))
        for stream in everything:
            await client.wait_events(stream, events, timeout=15)
        for n, group in streams.items():
            for stream in group:
                assert [(e.id, e.data) for e in stream.events] == [
                    (str(i), f"event {i} of topic {n}") for i in range(1, events + 1)
                ]
        assert client.goaway is None
        assert not any(s.done for s in everything)


async def stalled_stream(
    gateway: GatewayProcess, upstream: FakeUpstream, path: str
) -> tuple[H2Client, H2Stream]:
    """A stream whose client stopped reading, with its flow-control window (64 KiB) full
    and more sent after that: the gateway's writer is then blocked in ``send()``."""
    client = await H2Client.connect(gateway.host, gateway.port, read_window=False)
    stream = await open_stream(client, path)
    await upstream.wait_connections(path, 1)
    for i in range(60):  # 240 KB
        upstream.publish(path, "x" * 4000, id=str(i))
    await client.wait(lambda: len(stream.body) >= 60000, 10, "the window to fill")
    await asyncio.sleep(0.3)  # one large send may pass hypercorn's buffer; the next blocks
    for i in range(60, 120):
        upstream.publish(path, "x" * 4000, id=str(i))
    await asyncio.sleep(0.3)
    return client, stream


async def test_a_client_with_a_closed_window_is_a_slow_consumer(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    """hypercorn alone keeps accepting a stream's sends into its own buffer when the
    client's window is 0, without bound: the gateway's queue limit (here 64 KiB, policy
    disconnect) would never act and the process would hold everything sent."""
    client, stream = await stalled_stream(gateway, upstream, "/z")
    async with client:
        await client.wait(lambda: stream.done, 5, "the slow consumer to be cut off")
        assert stream.reset_code == h2.errors.ErrorCodes.CANCEL
        await upstream.wait_closed("/z", timeout=3)  # linger_s: 0, nobody left
        assert client.goaway is None  # only that stream, not the connection


async def test_a_send_blocked_on_a_connection_that_dies_is_released_at_once(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    """The stream's send() is blocked on the closed window when the connection dies.
    hypercorn alone leaves it blocked until the send deadline (send_timeout_s, 10 s), and
    the subscriber stays attached as long."""
    client, stream = await stalled_stream(gateway, upstream, "/y")
    assert not stream.done
    client.abort()
    # linger_s: 0, so the upstream closes as soon as the stream let go of its subscription.
    await upstream.wait_closed("/y", timeout=3)


# -- Rapid Reset -------------------------------------------------------------------------------


async def flood(host: str, port: int, payload: bytes) -> tuple[GoAwayFrame | None, float]:
    """Send ``payload`` (HEADERS+RST_STREAM pairs) on a new connection without reading; then
    read until the server closes. Returns the GOAWAY it sent (if any) and the seconds taken."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        received = bytearray()
        async with asyncio.timeout(10):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionError:
                    break
                if not chunk:
                    break
                received += chunk
    finally:
        writer.transport.abort()
    return goaway_in(bytes(received)), time.monotonic() - started


def goaway_in(data: bytes) -> GoAwayFrame | None:
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        if isinstance(frame, GoAwayFrame):
            return frame
        view = view[9 + length :]
    return None


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def test_rapid_reset_flood_is_cut_off_and_others_keep_their_latency(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    async with await H2Client.connect(gateway.host, gateway.port) as client:
        sse = await open_stream(client, "/t")
        await upstream.wait_connections("/t", 1)
        sent: dict[str, float] = {}

        async def publish(first: int, count: int) -> None:
            for i in range(first, first + count):
                sent[str(i)] = time.monotonic()
                upstream.publish("/t", f"event {i}", id=str(i))
                await asyncio.sleep(0.02)

        def latencies(first: int, count: int) -> list[float]:
            arrived = dict(zip((e.id for e in sse.events), sse.arrivals, strict=True))
            return [arrived[str(i)] - sent[str(i)] for i in range(first, first + count)]

        await publish(1, 100)
        await client.wait_events(sse, 100)
        baseline = latencies(1, 100)

        floods: list[tuple[GoAwayFrame | None, float]] = []
        # Encoded once, up front: encoding 5,000 HEADERS takes this loop a while, and the
        # measurement must see the gateway's delay, not the test's.
        payload = flood_bytes(f"{gateway.host}:{gateway.port}", "/t", 5000)

        async def flooder() -> None:
            for _ in range(10):
                floods.append(await flood(gateway.host, gateway.port, payload))

        flooding = asyncio.create_task(flooder())
        await publish(101, 100)
        await flooding
        await client.wait_events(sse, 200)
        during = latencies(101, 100)

        assert [e.id for e in sse.events] == [str(i) for i in range(1, 201)]
        assert client.goaway is None
        assert not sse.done
        for goaway, seconds in floods:
            assert goaway is not None, "the flood connection was closed without GOAWAY"
            assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            # Streams the server processed before cutting the connection off: the burst,
            # plus what the sustained rate allowed while the flood lasted (well under 2 s).
            processed = (goaway.last_stream_id + 1) // 2
            assert RESET_BURST <= processed <= RESET_BURST + RESETS_PER_S * 2 + 10, processed
            assert seconds < 5
        print(
            f"latency ms: baseline p50={statistics.median(baseline) * 1000:.1f} "
            f"p99={p99(baseline) * 1000:.1f}; during 10 floods p50="
            f"{statistics.median(during) * 1000:.1f} p99={p99(during) * 1000:.1f}; "
            f"flood cut after {[(g.last_stream_id + 1) // 2 for g, _ in floods if g]} streams"
        )
        assert p99(during) < 0.2, during


async def test_resets_within_the_budget_keep_the_connection(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    async with await H2Client.connect(gateway.host, gateway.port) as client:
        sse = await open_stream(client, "/t")
        await upstream.wait_connections("/t", 1)
        for _ in range(3):  # 90 resets at once: within the burst
            opened = [client.request("/t") for _ in range(30)]
            await wait_all(client, opened, "30 heads")
            for stream in opened:
                client.cancel(stream)
        upstream.publish("/t", "still here", id="1")
        await client.wait_events(sse, 1)
        assert client.goaway is None


async def test_header_list_and_concurrency_limits(gateway: GatewayProcess) -> None:
    async with await H2Client.connect(gateway.host, gateway.port) as client:
        await client.get("/healthz")
        advertised = client.conn.remote_settings
        assert advertised.max_concurrent_streams == MAX_STREAMS
        assert advertised.max_header_list_size == HEADER_LIST_BYTES
        # Under the limit (the app may still refuse it, with a status): answered.
        ok = client.request("/healthz", headers=[("x-big", "a" * 12000)], accept_sse=False)
        await client.wait(lambda: ok.done, 10, "an answer to a 12 KB header list")
        assert ok.status is not None
        # Over it: the connection is closed (ENHANCE_YOUR_CALM), before the client acked
        # anything special: h2 alone would only enforce 64 KiB.
        client.request("/healthz", headers=[("x-big", "a" * 20000)], accept_sse=False)
        await client.wait_closed()
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM

    async with await H2Client.connect(gateway.host, gateway.port) as client:
        opened = [client.request("/t") for _ in range(MAX_STREAMS)]
        await client.wait(lambda: all(s.status for s in opened), 10, f"{MAX_STREAMS} heads")
        # Pretend the server allowed more, to send what a hostile client would.
        client.conn.remote_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000},
        )
        client.request("/t")
        await client.wait_closed()
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


async def test_upgrade_h2c_still_works(gateway: GatewayProcess, upstream: FakeUpstream) -> None:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    settings = conn.initiate_upgrade_connection()
    assert settings is not None
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(
            b"GET /t HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: " + settings + b"\r\n\r\n"  # h2 gives it base64url-encoded
        )
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        writer.write(conn.data_to_send())
        await upstream.wait_connections("/t", 1)
        upstream.publish("/t", "over an upgraded connection", id="7")
        body = bytearray()
        status: bytes | None = None
        async with asyncio.timeout(10):
            while b"over an upgraded connection" not in body:
                data = await reader.read(65536)
                assert data, "connection closed"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 1:
                        status = dict(event.headers or [])[b":status"]
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                        body += event.data or b""
                writer.write(conn.data_to_send())
        assert status == b"200"
        assert b"id: 7\ndata: over an upgraded connection\n\n" in body
    finally:
        writer.close()


# -- the hypercorn internals gateway.hyperglue reaches into ----------------------------------------


def test_hyperglue_h2_guard_still_fits_hypercorn() -> None:
    """If hypercorn moves what GuardedH2Protocol and GatewayHypercornConfig rely on, fail
    here with a clear message rather than lose the Rapid Reset defence silently."""
    assert importlib.metadata.version("hypercorn") == "0.18.0"
    # ProtocolWrapper looks H2Protocol up as a global of hypercorn.protocol at call time,
    # which is what install_h2_guard() replaces (ALPN h2, prior knowledge, Upgrade: h2c).
    assert ProtocolWrapper.__init__.__globals__ is vars(hypercorn.protocol)
    assert "H2Protocol" in ProtocolWrapper.__init__.__code__.co_names
    assert "H2Protocol" in ProtocolWrapper.handle.__code__.co_names
    # Every h2 event of a connection passes through _handle_events(events).
    assert list(inspect.signature(H2Protocol._handle_events).parameters) == ["self", "events"]
    assert "_handle_events" in H2Protocol.handle.__code__.co_names
    assert "receive_data" in H2Protocol.handle.__code__.co_names
    assert {"connection", "stream_buffers", "priority"} <= set(
        H2Protocol.__init__.__code__.co_names
    )
    # The zero-window fix: _send_data(stream_id) pops min(window, frame size) bytes from a
    # StreamBuffer whose pop() releases the writer below the low-water mark.
    assert list(inspect.signature(H2Protocol._send_data).parameters) == ["self", "stream_id"]
    assert "local_flow_control_window" in H2Protocol._send_data.__code__.co_names
    assert {"_paused", "buffer"} <= set(StreamBuffer.pop.__code__.co_names)
    assert inspect.iscoroutinefunction(StreamBuffer.close)
    # worker_serve takes the TLS context from the config object.
    assert {"ssl_enabled", "create_ssl_context"} <= set(worker_serve.__code__.co_names)
    assert issubclass(GuardedH2Protocol, H2Protocol)
    assert not h2_guard_installed() or vars(hypercorn.protocol)["H2Protocol"] is GuardedH2Protocol


def test_reset_budget_is_a_token_bucket() -> None:
    budget = ResetBudget(rate=10.0, burst=5.0, tokens=5.0, stamp=0.0)
    assert all(budget.spend(0.0) for _ in range(5))
    assert not budget.spend(0.0)
    assert budget.spend(0.25)  # 2.5 tokens refilled, 1 of them owed
    assert not ResetBudget(rate=1.0, burst=1.0, tokens=0.0, stamp=0.0).spend(0.5)
