"""gateway.hyperglue.lean: hypercorn's per-request objects made lighter, and
``http.disconnect`` as a callback. Unit tests of the replacements, then
hypercorn 0.18 serving with them installed, over HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
from collections.abc import AsyncIterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import hypercorn.asyncio.run
import hypercorn.asyncio.tcp_server
import pytest
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.protocol.h11 import H11Protocol

from gateway import hyperglue
from gateway.asgi import Receive, Scope, Send
from gateway.hyperglue import AppQueue, LeanEvent, on_disconnect
from gateway.hyperglue.lean import LeanTaskGroup, LeanTCPServer, lean_requests_installed
from tests.support.inprocess import hypercorn_objects, serve_asgi

# -- the replacements alone ------------------------------------------------------------------


async def test_app_queue_delivers_in_order_and_waits_for_a_message() -> None:
    queue = AppQueue(maxsize=0)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.put({"type": "http.request", "body": b"a"})
    await queue.put({"type": "http.request", "body": b"b"})
    assert (await getter)["body"] == b"a"
    assert (await queue.get())["body"] == b"b"
    assert len(queue) == 0


async def test_app_queue_bounds_its_putter() -> None:
    queue = AppQueue(maxsize=2)
    await queue.put({"n": 1})
    await queue.put({"n": 2})
    third = asyncio.create_task(queue.put({"n": 3}))
    await asyncio.sleep(0.01)
    assert not third.done()  # full: the putter waits, as with asyncio.Queue(maxsize)
    assert (await queue.get())["n"] == 1
    await asyncio.wait_for(third, 1)
    assert [(await queue.get())["n"] for _ in range(2)] == [2, 3]


async def test_a_cancelled_get_leaves_the_queue_usable() -> None:
    queue = AppQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    await queue.put({"type": "http.disconnect"})
    assert await queue.get() == {"type": "http.disconnect"}


async def test_on_disconnect_runs_once_as_the_disconnect_is_put() -> None:
    queue = AppQueue()
    calls: list[str] = []
    assert on_disconnect(queue.get, lambda: calls.append("gone"))
    await queue.put({"type": "http.request", "body": b"", "more_body": False})
    assert calls == []
    await queue.put({"type": "http.disconnect"})
    assert calls == ["gone"]  # synchronously, before anybody reads the queue
    await queue.put({"type": "http.disconnect"})
    assert calls == ["gone"]
    # and the messages are still there for a reader
    assert [(await queue.get())["type"] for _ in range(3)] == [
        "http.request",
        "http.disconnect",
        "http.disconnect",
    ]


async def test_on_disconnect_when_the_disconnect_came_first() -> None:
    queue = AppQueue()
    await queue.put({"type": "http.disconnect"})
    calls: list[str] = []
    assert on_disconnect(queue.get, lambda: calls.append("gone"))
    assert calls == ["gone"]


async def test_on_disconnect_refuses_other_receive_callables() -> None:
    plain: asyncio.Queue[Any] = asyncio.Queue()
    assert not on_disconnect(plain.get, lambda: None)


async def test_lean_event_wakes_every_waiter_and_forgets_cancelled_ones() -> None:
    event = LeanEvent()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert event._waiters is not None
    assert len(event._waiters) == 3
    await event.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert event.is_set()
    await event.wait()  # set: returns at once
    await event.clear()
    assert not event.is_set()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0.01)
    assert not late.done()
    await event.set()
    await asyncio.wait_for(late, 1)


# -- hypercorn serving with them -------------------------------------------------------------

seen: dict[str, Any] = {}
flags: dict[str, asyncio.Event] = {}


def flag(name: str) -> asyncio.Event:
    return flags.setdefault(name, asyncio.Event())


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/upload":
        await asyncio.sleep(0.2)  # let the body pile up against the queue's bound
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})
        return
    seen[path] = receive
    gone = asyncio.Event()
    seen[path + ":registered"] = on_disconnect(receive, gone.set)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    await gone.wait()  # nobody waits in receive(): only the callback can end this
    flag(path + ":gone").set()


@pytest.fixture
async def port() -> AsyncIterator[int]:
    seen.clear()
    flags.clear()
    with hypercorn_objects(lean=True):
        async with serve_asgi(app) as bound:
            yield bound


async def wait_for_flag(name: str, timeout: float = 5.0) -> None:
    await asyncio.wait_for(flag(name).wait(), timeout)


def test_install_puts_them_where_hypercorn_looks() -> None:
    hyperglue.install()
    assert lean_requests_installed()
    assert vars(hypercorn.asyncio.run)["TCPServer"] is LeanTCPServer
    assert vars(hypercorn.asyncio.tcp_server)["TaskGroup"] is LeanTaskGroup
    assert WorkerContext.event_class is LeanEvent


def test_lean_replacements_still_fit_hypercorn() -> None:
    """If hypercorn moves what lean.py replaces, fail here, not silently fall
    back to the heavier objects (or break)."""
    assert importlib.metadata.version("hypercorn") == "0.18.0"
    callback = next(
        const
        for const in hypercorn.asyncio.run.worker_serve.__code__.co_consts
        if inspect.iscode(const) and const.co_name == "_server_callback"
    )
    assert "TCPServer" in callback.co_names  # looked up in hypercorn.asyncio.run
    assert "TaskGroup" in TCPServer.run.__code__.co_names  # in hypercorn.asyncio.tcp_server
    assert "event_class" in H11Protocol.__init__.__code__.co_names
    assert "Queue" in TaskGroup.spawn_app.__code__.co_names  # what AppQueue replaces
    assert list(inspect.signature(TCPServer.__init__).parameters) == [
        "self",
        "app",
        "loop",
        "config",
        "context",
        "state",
        "reader",
        "writer",
    ]
    assert "_read_data" in TCPServer.run.__code__.co_names


async def test_http11_disconnect_reaches_the_callback(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /h1 HTTP/1.1\r\nhost: x\r\n\r\n")
    await reader.readuntil(b"hello")
    assert seen["/h1:registered"] is True
    assert isinstance(seen["/h1"].__self__, AppQueue)
    writer.close()
    await wait_for_flag("/h1:gone")


async def test_http2_stream_reset_reaches_the_callback_of_that_stream_only(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for stream_id, path in ((1, "/a"), (3, "/b")):
        conn.send_headers(
            stream_id,
            [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
        )
    writer.write(conn.data_to_send())
    bodies: dict[int, bytes] = {1: b"", 3: b""}
    async with asyncio.timeout(5):
        while not all(bodies.values()):
            for event in conn.receive_data(await reader.read(65536)):
                if isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
            writer.write(conn.data_to_send())
    conn.reset_stream(1)
    writer.write(conn.data_to_send())
    await wait_for_flag("/a:gone")
    await asyncio.sleep(0.1)
    assert not flag("/b:gone").is_set()  # the other stream lives on
    writer.close()
    await wait_for_flag("/b:gone")


async def test_a_request_body_larger_than_the_queue_bound_arrives_whole(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    size = 0
    writer.write(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    for _ in range(100):  # far more messages than max_app_queue_size (10)
        piece = b"y" * 1000
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        size += len(piece)
        await writer.drain()
        await asyncio.sleep(0.001)
    writer.write(b"0\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert size == 100_000
    body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert body == b"6\r\n100000\r\n0\r\n\r\n"
    writer.close()
