"""The fake upstream, checked against independent clients (httpx itself and raw sockets).

Gateway tests trust FakeUpstream to put exactly the requested bytes on the wire and to observe
connections faithfully; these tests hold it to that without involving the gateway. Async tests
run on uvloop (conftest.py); every test that takes only the ``upstream`` fixture runs again on
the stdlib loop (``test_on_stdlib_asyncio``), and this module's ``upstream`` fixture fails a
test that leaves a task behind or lets an error reach the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.clients import (
    ParsedEvent,
    RawSSEClient,
    SSEParser,
    StreamEnded,
    dechunk,
    open_sse,
    request,
)
from tests.support.gateway import GatewayProcess, GatewayStartError
from tests.support.upstream import FakeUpstream, encode_event, frame_chunk

HOST = "127.0.0.1"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
    b"\r\n"
)


@contextlib.asynccontextmanager
async def running_upstream() -> AsyncIterator[FakeUpstream]:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    upstream = FakeUpstream()
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.stop()
        loop.set_exception_handler(previous_handler)
    # stop() promises that nothing of the upstream keeps running, and writes to dead peers must
    # never surface as loop errors.
    leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert leftovers == []
    assert loop_errors == []


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with running_upstream() as up:
        yield up


# -- wire format -----------------------------------------------------------------------------


async def test_published_event_bytes_through_httpx(upstream: FakeUpstream) -> None:
    expected = b"id: 42\nevent: update\ndata: line one\ndata: line two\n\n"
    async with (
        httpx.AsyncClient(trust_env=False) as client,
        client.stream("GET", upstream.url("/t"), timeout=httpx.Timeout(5, read=None)) as response,
    ):
        assert response.status_code == 200
        assert response.http_version == "HTTP/1.1"
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        sent = upstream.publish("/t", "line one\nline two", id="42", event="update")
        assert sent == 1
        assert upstream.end("/t") == 1
        # Read to the end rather than breaking off: an abandoned httpx iterator would leave an
        # async generator for the loop to finalize.
        async with asyncio.timeout(5):
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        assert body == expected
    assert encode_event("line one\nline two", id="42", event="update") == expected


async def test_wire_framing_seen_by_raw_client(upstream: FakeUpstream) -> None:
    async with await RawSSEClient.connect(HOST, upstream.port, "/t") as client:
        assert client.status == 200
        assert client.head_bytes == SSE_HEAD
        assert client.headers == [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("transfer-encoding", "chunked"),
        ]
        assert upstream.publish("/t", "hi") == 1
        assert upstream.send_raw("/t", b"data: x") == 1
        assert upstream.send_raw("/t", b"ZZ", framed=False) == 1
        expected = b"a\r\ndata: hi\n\n\r\n" + b"7\r\ndata: x\r\n" + b"ZZ"
        assert await client.read_body(len(expected)) == expected
        assert frame_chunk(b"data: x") == b"7\r\ndata: x\r\n"


async def test_end_finishes_the_body_cleanly(upstream: FakeUpstream) -> None:
    async with await RawSSEClient.connect(HOST, upstream.port, "/t") as raw:
        async with await open_sse(upstream.url("/t")) as stream:
            await upstream.wait_connections("/t", 2)
            upstream.publish("/t", "last", id="9")
            assert upstream.end("/t") == 2
            assert await stream.wait_closed() is None
            assert stream.events == [ParsedEvent("last", "message", "9")]
        assert await raw.read_to_eof() == b"12\r\nid: 9\ndata: last\n\n\r\n0\r\n\r\n"
    assert dechunk(bytes(raw.body)) == (b"id: 9\ndata: last\n\n", True)
    assert upstream.open_connections("/t") == []


async def test_prelude_is_the_first_chunk(upstream: FakeUpstream) -> None:
    upstream.configure("/p", prelude=b":ok\n\nretry: 1500\n\n")
    async with await open_sse(upstream.url("/p")) as stream:
        upstream.publish("/p", "x")
        assert await stream.wait_events(1) == [ParsedEvent("x")]
        assert bytes(stream.raw) == b":ok\n\nretry: 1500\n\ndata: x\n\n"
        assert stream.comments == ["ok"]
        assert stream.retry == 1500


# -- what the upstream records ---------------------------------------------------------------


async def test_request_details_are_recorded(upstream: FakeUpstream) -> None:
    headers = [("Last-Event-ID", "41"), ("X-Dup", "first"), ("X-Dup", "second")]
    async with await RawSSEClient.connect(HOST, upstream.port, "/t?since=1&a=b", headers):
        (conn,) = await upstream.wait_connections("/t", 1)
    assert conn.path == "/t"
    assert conn.target == "/t?since=1&a=b"
    assert conn.method == "GET"
    assert conn.last_event_id == "41"
    assert conn.headers["x-dup"] == "second"
    assert conn.headers["host"] == f"{HOST}:{upstream.port}"
    assert [v for n, v in conn.raw_headers if n == "x-dup"] == ["first", "second"]
    assert conn.opened_at > 0

    async with await open_sse(upstream.url("/u"), headers={"Last-Event-ID": "abc"}) as stream:
        assert stream.status == 200
        (conn,) = await upstream.wait_connections("/u", 1)
        assert conn.last_event_id == "abc"
        assert conn.headers["accept"] == "text/event-stream"
    (fresh,) = [c for c in upstream.connections if c.path == "/u"]
    assert fresh is conn
    await upstream.wait_closed("/u")
    assert conn.closed_at is not None
    assert conn.closed_at >= conn.opened_at


async def test_publish_reaches_every_open_connection(upstream: FakeUpstream) -> None:
    assert upstream.publish("/f", "nobody listens") == 0
    async with (
        await open_sse(upstream.url("/f")) as one,
        await open_sse(upstream.url("/f")) as two,
        await open_sse(upstream.url("/other")) as other,
    ):
        assert upstream.publish("/f", "to both", id="1") == 2
        assert await one.wait_events(1) == [ParsedEvent("to both", "message", "1")]
        assert await two.wait_events(1) == [ParsedEvent("to both", "message", "1")]
        assert upstream.publish("/other", "only other") == 1
        assert await other.wait_events(1) == [ParsedEvent("only other")]
        assert one.events == two.events == [ParsedEvent("to both", "message", "1")]
    assert [e.data for e in upstream.history("/f")] == ["nobody listens", "to both"]


# -- replay ----------------------------------------------------------------------------------


async def test_replay_sends_history_after_the_id_then_live(upstream: FakeUpstream) -> None:
    upstream.configure("/r", replay=True)
    for n in (1, 2, 3):
        assert upstream.publish("/r", f"e{n}", id=str(n)) == 0
    async with await open_sse(upstream.url("/r"), headers={"Last-Event-ID": "1"}) as resumed:
        assert await resumed.wait_events(2) == [
            ParsedEvent("e2", "message", "2"),
            ParsedEvent("e3", "message", "3"),
        ]
        (conn,) = upstream.open_connections("/r")
        assert conn.replayed == 2
        assert upstream.publish("/r", "e4", id="4") == 1
        assert (await resumed.wait_events(3))[2] == ParsedEvent("e4", "message", "4")

        # Without Last-Event-ID, or with an id the history does not know: live events only.
        async with (
            await open_sse(upstream.url("/r")) as fresh,
            await open_sse(upstream.url("/r"), headers={"Last-Event-ID": "nope"}) as unknown,
        ):
            assert upstream.publish("/r", "e5", id="5") == 3
            assert await fresh.wait_events(1) == [ParsedEvent("e5", "message", "5")]
            assert await unknown.wait_events(1) == [ParsedEvent("e5", "message", "5")]
            assert (await resumed.wait_events(4))[3].data == "e5"
    assert [c.replayed for c in upstream.connections] == [2, 0, 0]


async def test_no_replay_unless_configured(upstream: FakeUpstream) -> None:
    upstream.publish("/n", "old", id="1")
    upstream.publish("/n", "older", id="2")
    async with await open_sse(upstream.url("/n"), headers={"Last-Event-ID": "1"}) as stream:
        upstream.publish("/n", "live", id="3")
        assert await stream.wait_events(1) == [ParsedEvent("live", "message", "3")]


# -- failures --------------------------------------------------------------------------------


async def test_kill_delivers_partial_bytes_then_breaks_httpx(upstream: FakeUpstream) -> None:
    async with await open_sse(upstream.url("/k")) as stream:
        upstream.publish("/k", "whole", id="1")
        await stream.wait_events(1)
        assert upstream.kill("/k", partial=b"data: hal") == 1
        assert upstream.open_connections("/k") == []  # counted closed at once
        error = await stream.wait_closed()
        assert isinstance(error, httpx.ReadError | httpx.RemoteProtocolError)
        assert bytes(stream.raw) == b"id: 1\ndata: whole\n\ndata: hal"
        assert stream.events == [ParsedEvent("whole", "message", "1")]


async def test_kill_resets_the_raw_connection(upstream: FakeUpstream) -> None:
    async with await RawSSEClient.connect(HOST, upstream.port, "/k") as client:
        assert upstream.kill(partial=b"id: 7\nda") == 1  # every path
        with pytest.raises(ConnectionResetError):
            await client.read_to_eof()
        assert bytes(client.body) == b"8\r\nid: 7\nda\r\n"
    assert upstream.kill() == 0


async def test_client_reset_is_detected_and_writes_never_raise(upstream: FakeUpstream) -> None:
    client = await RawSSEClient.connect(HOST, upstream.port, "/gone")
    (conn,) = await upstream.wait_connections("/gone", 1)
    client.abort()
    # Writes racing the reset: dropped silently, never raised into the test or the loop.
    for n in range(20):
        upstream.publish("/gone", f"e{n}")
        upstream.send_raw("/gone", b"x" * 1000)
    await upstream.wait_closed("/gone")
    assert not conn.open
    assert upstream.publish("/gone", "after") == 0


async def test_client_disconnect_is_detected(upstream: FakeUpstream) -> None:
    stream = await open_sse(upstream.url("/d"))
    (conn,) = await upstream.wait_connections("/d", 1)
    await stream.aclose()
    await stream.aclose()  # idempotent, never raises
    await upstream.wait_closed("/d")
    assert conn.closed_at is not None


async def test_paused_raw_client_backs_up_the_server(upstream: FakeUpstream) -> None:
    async with await RawSSEClient.connect(HOST, upstream.port, "/slow", rcvbuf=4096) as client:
        client.pause()
        (conn,) = upstream.open_connections("/slow")
        block = b"x" * 65536
        sent = 0
        # Synchronous writes into a peer that does not read: once the kernel buffers on both
        # ends are full, the transport starts queueing in user space.
        while conn.pending_bytes == 0:
            assert sent < 1024, "64 MiB written and still no backpressure"
            upstream.send_raw("/slow", block)
            sent += 1
        assert conn.open
        framed = frame_chunk(block)
        assert await client.read_body(len(framed) * sent) == framed * sent
        assert conn.pending_bytes == 0


async def test_stall_withholds_events_until_unstall(upstream: FakeUpstream) -> None:
    async with await open_sse(upstream.url("/s")) as stream:
        upstream.publish("/s", "before", id="1")
        await stream.wait_events(1)
        upstream.stall("/s")
        assert upstream.publish("/s", "lost", id="2") == 0
        assert upstream.send_raw("/s", b": nope\n\n") == 0
        assert len(upstream.open_connections("/s")) == 1  # stalled, not closed
        upstream.unstall("/s")
        assert upstream.publish("/s", "after", id="3") == 1
        # Bytes arrive in order, so once "after" is here anything sent while stalled would be.
        assert await stream.wait_events(2) == [
            ParsedEvent("before", "message", "1"),
            ParsedEvent("after", "message", "3"),
        ]
        assert b"lost" not in stream.raw
        assert not stream.closed
    assert [e.data for e in upstream.history("/s")] == ["before", "lost", "after"]


async def test_stall_holds_the_response_head_of_new_requests(upstream: FakeUpstream) -> None:
    upstream.stall("/s")
    connecting = asyncio.ensure_future(RawSSEClient.connect(HOST, upstream.port, "/s"))
    try:
        (conn,) = await upstream.wait_connections("/s", 1)
        assert not conn.responded
        assert not connecting.done()  # nothing was written, so the head cannot have arrived
        upstream.unstall("/s")
        client = await connecting
    finally:
        if not connecting.done():
            connecting.cancel()
    async with client:
        assert client.head_bytes == SSE_HEAD
        assert conn.responded


async def test_heartbeat_comments_arrive_and_pause_while_stalled(upstream: FakeUpstream) -> None:
    upstream.start_heartbeat("/h", 0.02)
    async with await open_sse(upstream.url("/h")) as stream:
        assert await stream.wait_comments(3) == ["", "", ""]
        assert bytes(stream.raw).startswith(b":\n\n:\n\n:\n\n")
        upstream.stall("/h")
        (conn,) = upstream.open_connections("/h")
        sent = conn.bytes_sent
        # Asserting an absence needs a time window: ten heartbeat intervals.
        await asyncio.sleep(0.2)
        assert conn.bytes_sent == sent
        upstream.unstall("/h")
        seen = len(stream.comments)
        await stream.wait_comments(seen + 2)
        upstream.stop_heartbeat("/h")
    assert stream.events == []


# -- other responses -------------------------------------------------------------------------


async def test_non_200_is_a_finite_response(upstream: FakeUpstream) -> None:
    upstream.configure(
        "/e",
        status=503,
        content_type="text/plain",
        body=b"try later",
        headers=[("Retry-After", "3")],
    )
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        response = await client.get(upstream.url("/e"))
    assert response.status_code == 503
    assert response.reason_phrase == "Service Unavailable"
    assert response.content == b"try later"
    assert response.headers["content-length"] == "9"
    assert response.headers["retry-after"] == "3"
    assert "transfer-encoding" not in response.headers
    await upstream.wait_closed("/e")

    status, headers, body = await request(HOST, upstream.port, "GET", "/e")
    assert (status, body) == (503, b"try later")
    assert ("content-type", "text/plain") in headers
    (first, second) = await upstream.wait_requests("/e", 2)
    assert not first.streaming
    assert not second.open


async def test_wrong_content_type(upstream: FakeUpstream) -> None:
    upstream.configure("/j", content_type="application/json", body=b'{"a": 1}')
    status, headers, body = await request(HOST, upstream.port, "GET", "/j")
    assert (status, body) == (200, b'{"a": 1}')
    assert ("content-type", "application/json") in headers

    # Forced into a stream: a 200 chunked body that is not text/event-stream.
    upstream.configure("/html", content_type="text/html", stream=True)
    async with await open_sse(upstream.url("/html")) as stream:
        assert stream.headers["content-type"] == "text/html"
        upstream.publish("/html", "still sse-shaped")
        await stream.wait_bytes(b"still sse-shaped")


async def test_malformed_request_gets_400(upstream: FakeUpstream) -> None:
    reader, writer = await asyncio.open_connection(HOST, upstream.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert upstream.connections == []


# -- lifecycle and waiting -------------------------------------------------------------------


async def test_restart_reuses_the_port(upstream: FakeUpstream) -> None:
    port = upstream.port
    upstream.publish("/r", "kept", id="1")
    async with await open_sse(upstream.url("/r")) as before:
        await upstream.stop()
        assert isinstance(await before.wait_closed(), httpx.ReadError | httpx.RemoteProtocolError)
    assert upstream.open_connections() == []
    await upstream.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        await open_sse(upstream.url("/r"))

    await upstream.start()
    assert upstream.port == port
    async with await open_sse(upstream.url("/r")) as after:
        await upstream.restart()
        assert upstream.port == port
        await after.wait_closed()
    async with await open_sse(upstream.url("/r")) as again:
        assert upstream.publish("/r", "new", id="2") == 1
        assert await again.wait_events(1) == [ParsedEvent("new", "message", "2")]
    assert [e.data for e in upstream.history("/r")] == ["kept", "new"]


async def test_restart_with_downtime_refuses_connections(upstream: FakeUpstream) -> None:
    restarting = asyncio.ensure_future(upstream.restart(down_s=0.5))
    try:
        # One yield lets restart() run up to its first await, by which point stop() has closed
        # the listener.
        await asyncio.sleep(0)
        assert not upstream.running
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(HOST, upstream.port)
        await restarting
    finally:
        await asyncio.gather(restarting, return_exceptions=True)
    async with await open_sse(upstream.url("/x")) as stream:
        assert stream.status == 200


async def test_wait_connections_and_wait_closed(upstream: FakeUpstream) -> None:
    first = await open_sse(upstream.url("/w"))
    second = await open_sse(upstream.url("/w?n=2"))
    try:
        conns = await upstream.wait_connections("/w", 2)
        assert [c.target for c in conns] == ["/w", "/w?n=2"]
        with pytest.raises(TimeoutError, match="3 open connection"):
            await upstream.wait_connections("/w", 3, timeout=0.05)
        with pytest.raises(TimeoutError, match="no open connection"):
            await upstream.wait_closed("/w", timeout=0.05)
        await first.aclose()
        assert upstream.open_connections("/w") != []
        await second.aclose()
        await upstream.wait_closed("/w")
    finally:
        await first.aclose()
        await second.aclose()
    assert all(not c.open for c in upstream.connections)
    assert len(await upstream.wait_requests("/w", 2)) == 2


async def test_stream_client_reports_early_end(upstream: FakeUpstream) -> None:
    async with await open_sse(upstream.url("/z")) as stream:
        upstream.publish("/z", "only one")
        upstream.end("/z")
        with pytest.raises(StreamEnded, match="2 event"):
            await stream.wait_events(2)
        assert stream.events == [ParsedEvent("only one")]


# conftest.py runs every async test on uvloop; the tests above that need nothing but the
# upstream run again on the stdlib selector loop, so the support code is proven on both.
UPSTREAM_CASES: list[Callable[[FakeUpstream], Awaitable[None]]] = [
    test_published_event_bytes_through_httpx,
    test_wire_framing_seen_by_raw_client,
    test_end_finishes_the_body_cleanly,
    test_prelude_is_the_first_chunk,
    test_request_details_are_recorded,
    test_publish_reaches_every_open_connection,
    test_replay_sends_history_after_the_id_then_live,
    test_no_replay_unless_configured,
    test_kill_delivers_partial_bytes_then_breaks_httpx,
    test_kill_resets_the_raw_connection,
    test_client_reset_is_detected_and_writes_never_raise,
    test_client_disconnect_is_detected,
    test_paused_raw_client_backs_up_the_server,
    test_stall_withholds_events_until_unstall,
    test_stall_holds_the_response_head_of_new_requests,
    test_heartbeat_comments_arrive_and_pause_while_stalled,
    test_non_200_is_a_finite_response,
    test_wrong_content_type,
    test_malformed_request_gets_400,
    test_restart_reuses_the_port,
    test_restart_with_downtime_refuses_connections,
    test_wait_connections_and_wait_closed,
    test_stream_client_reports_early_end,
]


@pytest.mark.parametrize("case", UPSTREAM_CASES, ids=lambda case: case.__name__)
def test_on_stdlib_asyncio(case: Callable[[FakeUpstream], Awaitable[None]]) -> None:
    async def scenario() -> None:
        async with running_upstream() as up:
            await case(up)

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        assert type(runner.get_loop()).__module__.startswith("asyncio")
        runner.run(scenario())


# -- the independent SSE parser the clients use ----------------------------------------------

TRICKY_STREAM = (
    "\ufeffdata: a\r\n\r\n"  # BOM, CRLF
    ": c1\r"  # comment, lone CR
    "id: 7\r\n"
    "data:b\n"  # no space after the colon
    "data\n"  # field without a colon: empty data line
    "\n"
    "retry: 150\nretry: 1x\n"  # only the valid retry counts
    "id: a\0b\n"  # NUL: id ignored, 7 stays
    "event: tick\ndata: é\n\n"
    "id\n\n"  # empty id resets the last event id; no data, no event
    "data: after reset\n\n"
    "data: never dispatched\n"  # no blank line before the end
)
TRICKY_EVENTS = [
    ParsedEvent("a", "message", ""),
    ParsedEvent("b\n", "message", "7"),
    ParsedEvent("é", "tick", "7"),
    ParsedEvent("after reset", "message", ""),
]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1000])
def test_parser_is_independent_of_how_bytes_are_split(piece: int) -> None:
    data = TRICKY_STREAM.encode("utf-8")
    parser = SSEParser()
    events: list[ParsedEvent] = []
    for start in range(0, len(data), piece):
        events += parser.feed(data[start : start + piece])
    assert events == TRICKY_EVENTS
    assert parser.comments == [" c1"]
    assert parser.retry == 150
    assert parser.last_event_id == ""


# -- GatewayProcess mechanics, against a stand-in child (the real gateway is not needed) ------

STAND_IN_GATEWAY = """
import asyncio, os, signal, socket, sys
import yaml

mode = os.environ.get("STAND_IN_MODE", "ok")
config = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
(listen,) = config["server"]["listen"]
print("stand-in argv:", *sys.argv[1:], f"listen={listen}", file=sys.stderr, flush=True)
if mode == "crash":
    print("boom: refusing to start", file=sys.stderr, flush=True)
    sys.exit(3)
listener = socket.socket(fileno=int(listen.removeprefix("fd://")))


async def answer(reader, writer):
    await reader.readuntil(b"\\r\\n\\r\\n")
    writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: 3\\r\\nconnection: close\\r\\n\\r\\nok\\n")
    await writer.drain()
    writer.close()


async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if mode == "stubborn":  # replaces the handler above: SIGTERM does nothing at all
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    async with await asyncio.start_server(answer, sock=listener):
        print("stand-in serving", file=sys.stderr, flush=True)
        await stop.wait()
    print("stand-in: clean shutdown", file=sys.stderr, flush=True)


asyncio.run(main())
"""


def stand_in_python(tmp_path: Path) -> str:
    """An executable that, run as ``<it> -m gateway run --config F``, runs the stand-in."""
    script = tmp_path / "stand_in_gateway.py"
    script.write_text(STAND_IN_GATEWAY)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


async def test_gateway_process_start_stop_restart(tmp_path: Path) -> None:
    config = {"topics": [{"name": "t", "path": "/t", "upstream": "http://127.0.0.1:1/t"}]}
    gateway = GatewayProcess(config, tmp_path=tmp_path, python=stand_in_python(tmp_path))
    async with gateway:
        assert gateway.running
        assert config == {"topics": config["topics"]}  # the caller's mapping is not modified
        written = yaml.safe_load(gateway.config_path.read_text())
        assert written["server"]["listen"][0].startswith("fd://")
        assert written["topics"] == config["topics"]
        status, _, body = await request(gateway.host, gateway.port, "GET", "/healthz")
        assert (status, body) == (200, b"ok\n")
        assert f"-m gateway run --config {gateway.config_path}" in gateway.log_text()
        port = gateway.port
        assert await gateway.stop() == 0
        assert await gateway.stop() == 0  # idempotent
        assert "stand-in: clean shutdown" in gateway.log_text()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(gateway.host, port)

        await gateway.start()
        assert gateway.port == port
        assert gateway.url("/t") == f"http://127.0.0.1:{port}/t"
        await gateway.wait_log("stand-in serving")
    assert not gateway.running
    assert gateway.log_text().count("stand-in serving") == 2


async def test_gateway_process_reports_a_crash_with_its_log(tmp_path: Path) -> None:
    gateway = GatewayProcess(
        {"topics": []},
        tmp_path=tmp_path,
        env={"STAND_IN_MODE": "crash"},
        python=stand_in_python(tmp_path),
    )
    with pytest.raises(GatewayStartError, match=r"(?s)exited with 3 during startup.*boom"):
        await gateway.start(timeout=10)
    assert gateway.returncode == 3


async def test_gateway_process_escalates_to_sigkill(tmp_path: Path) -> None:
    gateway = GatewayProcess(
        {"topics": []},
        tmp_path=tmp_path,
        env={"STAND_IN_MODE": "stubborn"},
        python=stand_in_python(tmp_path),
    )
    await gateway.start()
    try:
        assert await gateway.stop(timeout=0.2) == -signal.SIGKILL
    finally:
        await gateway.stop()
    assert "clean shutdown" not in gateway.log_text()


def test_gateway_process_on_stdlib_asyncio(tmp_path: Path) -> None:
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(test_gateway_process_start_stop_restart(tmp_path))
