"""Lighter per-request objects for hypercorn, and ``http.disconnect`` without a task.

An idle SSE connection is mostly objects hypercorn and asyncio make per
connection, and an empty ``collections.deque`` is 760 bytes. hypercorn 0.18
gives every request an ``asyncio.Queue`` for ``receive`` (three deques and an
``asyncio.Event`` with a fourth) and every HTTP/1.1 connection an
``asyncio.Event`` (``can_read``, a fifth); asyncio's stream protocol under
hypercorn's ``TCPServer`` has a sixth. Measured with tracemalloc over 2,000
idle streams, these were about 4.5 KiB of the ~23 KiB per connection; the
task a stream needed only to wait for ``http.disconnect`` was ~1 KiB more.

- :class:`AppQueue` is the receive queue: one consumer, bounded like
  hypercorn's (``max_app_queue_size``), waiters made only while waiting. Its
  ``on_disconnect`` callback runs as ``http.disconnect`` is put, so a stream
  learns that its client left without a task parked in ``receive()``.
- :class:`LeanEvent` is hypercorn's ``Event`` (async ``set``/``clear``/
  ``wait``, ``is_set``) with its waiters made only while somebody waits.

- :class:`LeanTCPServer` is hypercorn's per-connection server with those
  drain waiters in a list and no ``asyncio.wait_for`` around reads that have
  no timeout.

:func:`install_lean_requests` puts them where hypercorn 0.18 looks them up:
``TCPServer`` in ``hypercorn.asyncio.run``, ``TaskGroup`` in
``hypercorn.asyncio.tcp_server`` (which creates the queue in ``spawn_app``)
and ``WorkerContext.event_class``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from ssl import SSLError
from typing import Any

import hypercorn.asyncio.run
import hypercorn.asyncio.tcp_server
from hypercorn.asyncio.task_group import TaskGroup, _handle
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, RawData

Message = dict[str, Any]


class AppQueue:
    """What hypercorn puts (``http.request``, ``http.disconnect``) and the
    application's ``receive`` gets, in order."""

    __slots__ = ("_getter", "_items", "_putters", "maxsize", "on_disconnect")

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: list[Message] = []
        self._getter: asyncio.Future[None] | None = None
        self._putters: list[asyncio.Future[None]] | None = None
        self.on_disconnect: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, message: Message) -> None:
        while self.maxsize > 0 and len(self._items) >= self.maxsize:
            putter = asyncio.get_running_loop().create_future()
            if self._putters is None:
                self._putters = []
            self._putters.append(putter)
            try:
                await putter
            finally:
                if putter in self._putters:
                    self._putters.remove(putter)
        self._items.append(message)
        getter, self._getter = self._getter, None
        if getter is not None and not getter.done():
            getter.set_result(None)
        callback = self.on_disconnect
        if callback is not None and message.get("type") == "http.disconnect":
            self.on_disconnect = None
            callback()

    async def get(self) -> Message:
        while not self._items:
            if self._getter is not None:
                raise RuntimeError("AppQueue has one consumer")
            getter = asyncio.get_running_loop().create_future()
            self._getter = getter
            try:
                await getter
            finally:
                if self._getter is getter:
                    self._getter = None
        message = self._items.pop(0)
        if self._putters:
            putter = self._putters.pop(0)
            if not putter.done():
                putter.set_result(None)
        return message


class LeanEvent:
    """hypercorn's ``Event`` interface; no waiter structure until a wait."""

    __slots__ = ("_is_set", "_waiters")

    def __init__(self) -> None:
        self._is_set = False
        # A dict: O(1) removal of a cancelled waiter (a connection's idle task
        # waits on the worker's ``terminated`` event; thousands may).
        self._waiters: dict[asyncio.Future[None], None] | None = None

    async def clear(self) -> None:
        self._is_set = False

    async def set(self) -> None:
        if self._is_set:
            return
        self._is_set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        if self._is_set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = {}
        waiters = self._waiters
        waiters[waiter] = None
        try:
            await waiter
        finally:
            waiters.pop(waiter, None)

    def is_set(self) -> bool:
        return self._is_set


def _call_soon(loop: asyncio.AbstractEventLoop, func: Callable[..., Any], *args: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(func(*args), loop).result()


# (loop, sync_spawn, call_soon): hypercorn makes both per request, for WSGI
# applications only; one pair per loop serves every request.
_helpers: tuple[asyncio.AbstractEventLoop, Any, Any] | None = None


def _helpers_for(loop: asyncio.AbstractEventLoop) -> tuple[Any, Any]:
    global _helpers
    if _helpers is None or _helpers[0] is not loop:
        _helpers = (loop, partial(loop.run_in_executor, None), partial(_call_soon, loop))
    return _helpers[1], _helpers[2]


class LeanTaskGroup(TaskGroup):
    """hypercorn 0.18's ``TaskGroup``; ``spawn_app`` gives the request an
    :class:`AppQueue` instead of an ``asyncio.Queue`` (otherwise the same code)."""

    async def spawn_app(
        self,
        app: Any,
        config: Config,
        scope: Any,
        send: Callable[[Any], Awaitable[None]],
    ) -> Callable[[Any], Awaitable[None]]:
        app_queue = AppQueue(config.max_app_queue_size)
        sync_spawn, call_soon = _helpers_for(self._loop)
        self.spawn(_handle, app, config, scope, app_queue.get, send, sync_spawn, call_soon)
        return app_queue.put


class LeanTCPServer(TCPServer):
    """hypercorn 0.18's per-connection ``TCPServer``, lighter while it waits:

    - the stream protocol's drain waiters (a deque, 760 bytes, for a writer that
      is almost never blocked) become a list, which has the same operations;
    - without a ``read_timeout`` (the gateway never sets one: it would cut idle
      SSE streams) a read is awaited directly, not through ``asyncio.wait_for``,
      whose coroutine stayed suspended for the whole life of an idle connection.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        protocol = getattr(self.writer, "_protocol", None)
        waiters = getattr(protocol, "_drain_waiters", None)
        if isinstance(waiters, deque) and not waiters:
            protocol._drain_waiters = []  # type: ignore[union-attr]

    async def _read_data(self) -> None:
        if self.config.read_timeout is not None:
            await super()._read_data()
            return
        reader = self.reader
        while not reader.at_eof():
            try:
                data = await reader.read(MAX_RECV)
            except (ConnectionError, OSError, SSLError):
                break
            await self.protocol.handle(RawData(data))
        await self.protocol.handle(Closed())


def install_lean_requests() -> None:
    """Make hypercorn use :class:`LeanTCPServer`, :class:`LeanTaskGroup` and
    :class:`LeanEvent`. Idempotent; process-wide."""
    vars(hypercorn.asyncio.run)["TCPServer"] = LeanTCPServer
    vars(hypercorn.asyncio.tcp_server)["TaskGroup"] = LeanTaskGroup
    WorkerContext.event_class = LeanEvent


def lean_requests_installed() -> bool:
    return (
        vars(hypercorn.asyncio.run).get("TCPServer") is LeanTCPServer
        and vars(hypercorn.asyncio.tcp_server).get("TaskGroup") is LeanTaskGroup
        and WorkerContext.event_class is LeanEvent
    )


def on_disconnect(receive: Callable[..., Any], callback: Callable[[], None]) -> bool:
    """Have ``callback`` run (once, synchronously) when hypercorn puts
    ``http.disconnect`` for the request whose ASGI ``receive`` this is (now, if
    it is already queued). False when ``receive`` is not an
    :class:`AppQueue`'s: the caller must then wait in ``receive()`` itself."""
    queue = getattr(receive, "__self__", None)
    if not isinstance(queue, AppQueue):
        return False
    if any(message.get("type") == "http.disconnect" for message in queue._items):
        callback()
    else:
        queue.on_disconnect = callback
    return True
