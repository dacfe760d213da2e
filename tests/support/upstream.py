"""A real SSE origin server on loopback whose every byte the test controls.

The gateway under test holds one upstream connection per topic; to test reconnects, replay,
stalls and broken streams we need an upstream that misbehaves on command. ``FakeUpstream`` is a
plain ``asyncio`` server (protocol callbacks, no framework) that parses requests with ``h11`` and
writes responses by hand: the response head, then one explicitly framed HTTP/1.1 chunk per
``publish`` / ``send_raw`` call, so what reaches the wire is exactly what the test asked for.

It runs inside the test's own event loop (the gateway is another process), so every method is a
plain call from the loop thread and no thread synchronisation is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import cast

import h11

__all__ = ["FakeUpstream", "UpstreamConnection", "UpstreamEvent", "encode_event", "frame_chunk"]

# SO_LINGER on with a zero timeout turns close() into an immediate RST: that is what a crashed or
# firewalled origin looks like to the gateway, as opposed to the orderly FIN of a finished stream.
_LINGER_RST = struct.pack("ii", 1, 0)
# Upper bound on waiting for transports to report connection_lost() during stop().
_STOP_GRACE_S = 5.0
_DEFAULT_HEARTBEAT = b":\n\n"


def frame_chunk(payload: bytes) -> bytes:
    """Frame ``payload`` as one HTTP/1.1 chunk (``<hex size>\\r\\n<payload>\\r\\n``)."""
    if not payload:
        # A zero-size chunk is the end-of-body marker; sending one by accident would end the
        # stream, so refuse it here and make ending a stream an explicit FakeUpstream.end().
        raise ValueError("an empty chunk terminates the body; use FakeUpstream.end() for that")
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


def encode_event(data: str, *, id: str | None = None, event: str | None = None) -> bytes:
    """Encode one SSE event the way ``FakeUpstream.publish`` puts it on the wire.

    Field order is ``id``, ``event``, then one ``data`` line per ``\\n``-separated line of
    ``data``, then the blank line that dispatches the event. Only ``\\n`` splits lines: a test that
    wants ``\\r`` line endings or other odd framing should use ``send_raw``.
    """
    parts: list[str] = []
    if id is not None:
        parts.append(f"id: {id}\n")
    if event is not None:
        parts.append(f"event: {event}\n")
    parts.extend(f"data: {line}\n" for line in data.split("\n"))
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _abort_with_rst(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Best effort: on some transports the socket may already be gone; a plain abort still
        # drops the connection, just with a FIN instead of a RST.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


@dataclass(frozen=True)
class UpstreamEvent:
    """One event published on a path, as recorded in ``FakeUpstream.history``."""

    data: str
    id: str | None
    event: str | None
    wire: bytes  # the exact SSE bytes (before chunk framing)


@dataclass(frozen=True)
class _PathConfig:
    status: int = 200
    content_type: str = "text/event-stream"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    replay: bool = False
    prelude: bytes = b""
    stream: bool | None = None
    reason: str | None = None

    @property
    def streams(self) -> bool:
        if self.stream is not None:
            return self.stream
        media_type = self.content_type.split(";", 1)[0].strip().lower()
        return self.status == 200 and media_type == "text/event-stream"


_DEFAULT_CONFIG = _PathConfig()


@dataclass(eq=False)
class UpstreamConnection:
    """One request the fake upstream received, and what became of it.

    ``open`` means the upstream still treats the connection as live (it gets published events).
    It turns false as soon as the client goes away, or the test kills / ends it, or a finite
    (non-stream) response has been written.
    """

    path: str
    target: str  # full request target, query string included
    method: str
    headers: dict[str, str]  # lower-cased names, last value wins
    raw_headers: list[tuple[str, str]]  # every header line in order (names lower-cased by h11)
    last_event_id: str | None
    peer: tuple[str, int]
    opened_at: float  # time.monotonic()
    closed_at: float | None = None
    responded: bool = False  # response head written (false while the path is stalled)
    streaming: bool = False  # the response is an open-ended chunked stream
    replayed: int = 0  # history events re-sent because of Last-Event-ID
    bytes_sent: int = 0  # bytes handed to the transport, head and chunk framing included
    _proto: _UpstreamProtocol | None = field(default=None, repr=False)

    @property
    def open(self) -> bool:
        return self.closed_at is None

    @property
    def pending_bytes(self) -> int:
        """Bytes written but still queued in user space because the peer's receive window and
        our kernel send buffer are full: non-zero means the client is not keeping up."""
        proto = self._proto
        if proto is None or proto.transport is None or proto.lost:
            return 0
        return proto.transport.get_write_buffer_size()


class _UpstreamProtocol(asyncio.Protocol):
    """Per-connection state. Callback based so there are no per-connection tasks to clean up."""

    def __init__(self, owner: FakeUpstream) -> None:
        self._owner = owner
        self._h11 = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None
        self.conn: UpstreamConnection | None = None
        self.dead = False  # nothing more may be written (killed, ended, or finite response done)
        self.lost = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._owner._protocols.add(self)

    def data_received(self, data: bytes) -> None:
        # One request per connection: once it is parsed, anything else the client sends is
        # ignored (we only keep reading so that EOF tells us the client hung up).
        if self.conn is not None or self.dead:
            return
        self._h11.receive_data(data)
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError:
            self._reject_malformed()
            return
        if isinstance(event, h11.Request):
            self._owner._on_request(self, event)

    def eof_received(self) -> bool:
        # The client hung up: that is how a subscriber leaving is observed. Returning False lets
        # the transport close our side too.
        self._owner._connection_gone(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.dead = True
        self._owner._protocols.discard(self)
        self._owner._connection_gone(self)

    # -- used by FakeUpstream ----------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Write without ever raising: a vanished peer just means the bytes are dropped."""
        transport = self.transport
        if not data or transport is None or self.dead or self.lost or transport.is_closing():
            return False
        try:
            transport.write(data)
        except (OSError, RuntimeError):
            return False
        if self.conn is not None:
            self.conn.bytes_sent += len(data)
        return True

    def finish(self) -> None:
        """Orderly close: flush what is queued, then FIN."""
        self.dead = True
        if self.transport is not None and not self.lost:
            self.transport.close()

    def abort(self) -> None:
        self.dead = True
        if self.transport is not None and not self.lost:
            _abort_with_rst(self.transport)

    def _reject_malformed(self) -> None:
        self.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.finish()


class FakeUpstream:
    """A real SSE origin server on loopback, driven step by step by the test.

    Per path (exact match on the request path) it answers with a configurable response; open
    streams get events only when the test calls :meth:`publish` / :meth:`send_raw`, and the test
    can stall, kill (RST, optionally after half an event), end, or restart the server on the same
    port. Every request is recorded in :attr:`connections` for assertions, and
    :meth:`wait_connections` / :meth:`wait_closed` let the test await what the gateway does
    instead of sleeping.

    Unconfigured paths answer ``200 text/event-stream`` streams. Configuration, history and
    heartbeat settings survive :meth:`stop` / :meth:`restart`, as they would for a real backend
    that is redeployed.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.connections: list[UpstreamConnection] = []
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocols: set[_UpstreamProtocol] = set()
        self._configs: dict[str, _PathConfig] = {}
        self._history: dict[str, list[UpstreamEvent]] = {}
        self._stalled: set[str] = set()
        self._heartbeats: dict[str, tuple[float, bytes]] = {}
        self._heartbeat_tasks: dict[str, asyncio.Task[None]] = {}
        # Cancelled heartbeat tasks that may not have finished yet; stop() awaits them too.
        self._retired_tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen. Port 0 picks an ephemeral port, which later starts reuse."""
        if self._server is not None:
            raise RuntimeError("FakeUpstream is already running")
        loop = asyncio.get_running_loop()
        self._loop = loop
        # reuse_address so a restart can rebind the port while old connections sit in TIME_WAIT.
        self._server = await loop.create_server(
            lambda: _UpstreamProtocol(self), self.host, self.port, reuse_address=True
        )
        if self.port == 0:
            self.port = int(self._server.sockets[0].getsockname()[1])
        for path in self._heartbeats:
            self._spawn_heartbeat(path)

    async def stop(self) -> None:
        """Close the listener, reset every open connection, and wait until all are gone.

        Idempotent. Leaves no task or transport behind, so the test's loop closes cleanly.
        """
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
        tasks = [*self._heartbeat_tasks.values(), *self._retired_tasks]
        self._heartbeat_tasks.clear()
        self._retired_tasks.clear()
        for task in tasks:
            task.cancel()
        for proto in list(self._protocols):
            if proto.conn is not None:
                self._mark_closed(proto.conn)
            proto.abort()
        self._notify()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        # connection_lost() runs on a later loop iteration; wait for it so that no transport
        # (and its socket) outlives stop().
        await self._wait_until(
            lambda: not self._protocols,
            _STOP_GRACE_S,
            lambda: f"{len(self._protocols)} transport(s) still not closed after stop()",
        )

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down for ``down_s`` seconds, then start again on the same port."""
        await self.stop()
        if down_s > 0:
            # Deliberate: the test asks for the server to be unreachable for this long.
            await asyncio.sleep(down_s)
        await self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def url(self, path: str) -> str:
        """``http://127.0.0.1:<port><path>``; the port is known only after the first start()."""
        if self.port == 0:
            raise RuntimeError("FakeUpstream.url() before start(): the port is not known yet")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    # -- behaviour ---------------------------------------------------------------------------

    def configure(
        self,
        path: str,
        *,
        status: int = 200,
        content_type: str = "text/event-stream",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        replay: bool = False,
        prelude: bytes = b"",
        stream: bool | None = None,
        reason: str | None = None,
    ) -> None:
        """Set how requests for ``path`` are answered (from the next request on).

        ``stream=None`` streams (chunked, open-ended) exactly when the status is 200 and the
        content type is ``text/event-stream``; anything else is a finite response carrying
        ``body`` with a Content-Length, after which the connection is closed. Pass
        ``stream=True``/``False`` to force either shape. ``headers`` are appended after the
        standard ones. ``replay`` makes a reconnect with ``Last-Event-ID`` first receive every
        history event after that id (an unknown id replays nothing). ``prelude`` is written as
        the first chunk of a stream.
        """
        self._configs[path] = _PathConfig(
            status=status,
            content_type=content_type,
            headers=tuple(headers),
            body=body,
            replay=replay,
            prelude=prelude,
            stream=stream,
            reason=reason,
        )

    def publish(
        self, path: str, data: str, *, id: str | None = None, event: str | None = None
    ) -> int:
        """Record one event in the history of ``path`` and write it, as one chunk, to every
        open stream on that path unless the path is stalled. Returns how many got it."""
        wire = encode_event(data, id=id, event=event)
        self._history.setdefault(path, []).append(UpstreamEvent(data, id, event, wire))
        return self._broadcast(path, frame_chunk(wire))

    def send_raw(self, path: str, data: bytes, *, framed: bool = True) -> int:
        """Write arbitrary body bytes (one chunk) to every open stream on ``path``.

        With ``framed=False`` the bytes go to the socket as they are, without chunk framing,
        for tests of broken HTTP framing. Not recorded in history. Returns the count.
        """
        if not data:
            return 0
        return self._broadcast(path, frame_chunk(data) if framed else data)

    def kill(self, path: str | None = None, *, partial: bytes = b"") -> int:
        """Write ``partial`` (as a chunk) and then reset (RST) every open connection on
        ``path`` (or on every path). Returns how many connections were killed.

        The connections count as closed at once, so a following ``wait_connections`` waits for
        the reconnect rather than returning the dying connection. A reading peer receives
        ``partial`` before the reset; for a peer that is not reading, bytes still queued (those
        included) are discarded by the reset, just as when a real server crashes.
        """
        killed = 0
        for conn in list(self.connections):
            if not conn.open or (path is not None and conn.path != path):
                continue
            proto = conn._proto
            if proto is None:
                continue
            if partial and conn.streaming:
                proto.write(frame_chunk(partial))
            self._mark_closed(conn)
            proto.abort()
            killed += 1
        self._notify()
        return killed

    def end(self, path: str | None = None) -> int:
        """End every open stream on ``path`` (or everywhere) cleanly: terminating zero-size
        chunk, then FIN. This is the orderly counterpart of :meth:`kill`. Returns the count."""
        ended = 0
        for conn in list(self.connections):
            if not conn.open or (path is not None and conn.path != path):
                continue
            proto = conn._proto
            if proto is None:
                continue
            if conn.streaming:
                proto.write(b"0\r\n\r\n")
            self._mark_closed(conn)
            proto.finish()
            ended += 1
        self._notify()
        return ended

    def stall(self, path: str) -> None:
        """Connections on ``path`` receive nothing (no events, heartbeats, or even a response
        head for requests arriving meanwhile) but stay open. Events published meanwhile still go
        to the history but are never delivered to the stalled connections."""
        self._stalled.add(path)

    def unstall(self, path: str) -> None:
        """Undo :meth:`stall`; requests that arrived meanwhile get their response now."""
        self._stalled.discard(path)
        for conn in list(self.connections):
            if conn.path == path and conn.open and not conn.responded:
                self._respond(conn)
        self._notify()

    def start_heartbeat(
        self, path: str, interval_s: float, *, payload: bytes = _DEFAULT_HEARTBEAT
    ) -> None:
        """Every ``interval_s`` write ``payload`` (a ``:`` comment) to the streams on ``path``.

        Paused while the path is stalled; suspended by stop() and resumed by start().
        """
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._heartbeats[path] = (interval_s, payload)
        if self._server is not None:
            self._spawn_heartbeat(path)

    def stop_heartbeat(self, path: str) -> None:
        self._heartbeats.pop(path, None)
        self._retire_heartbeat(path)

    # -- observation -------------------------------------------------------------------------

    def open_connections(self, path: str | None = None) -> list[UpstreamConnection]:
        return [c for c in self.connections if c.open and (path is None or c.path == path)]

    def history(self, path: str) -> list[UpstreamEvent]:
        return list(self._history.get(path, ()))

    def clear_history(self, path: str | None = None) -> None:
        if path is None:
            self._history.clear()
        else:
            self._history.pop(path, None)

    async def wait_connections(
        self, path: str, count: int, timeout: float = 10.0
    ) -> list[UpstreamConnection]:
        """Wait until at least ``count`` connections on ``path`` are open; return them all."""
        await self._wait_until(
            lambda: len(self.open_connections(path)) >= count,
            timeout,
            lambda: f"{count} open connection(s) on {path!r}" + self._describe(path),
        )
        return self.open_connections(path)

    async def wait_requests(
        self, path: str, count: int, timeout: float = 10.0
    ) -> list[UpstreamConnection]:
        """Wait until ``path`` has received at least ``count`` requests in total (open or not),
        e.g. to see a reconnect attempt that got a non-200 answer. Returns them all."""

        def on_path() -> list[UpstreamConnection]:
            return [c for c in self.connections if c.path == path]

        await self._wait_until(
            lambda: len(on_path()) >= count,
            timeout,
            lambda: f"{count} request(s) on {path!r}" + self._describe(path),
        )
        return on_path()

    async def wait_closed(self, path: str, timeout: float = 10.0) -> None:
        """Wait until no connection on ``path`` is open."""
        await self._wait_until(
            lambda: not self.open_connections(path),
            timeout,
            lambda: f"no open connection on {path!r}" + self._describe(path),
        )

    # -- internals ---------------------------------------------------------------------------

    def _describe(self, path: str) -> str:
        on_path = [c for c in self.connections if c.path == path]
        return (
            f"; now {len(self.open_connections(path))} open of {len(on_path)} request(s) on "
            f"that path, requests on all paths: {[c.target for c in self.connections]}"
        )

    async def _wait_until(
        self, predicate: Callable[[], bool], timeout: float, describe: Callable[[], str]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout}s waiting for {describe()}") from None

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _mark_closed(self, conn: UpstreamConnection) -> None:
        if conn.closed_at is None:
            conn.closed_at = time.monotonic()

    def _connection_gone(self, proto: _UpstreamProtocol) -> None:
        if proto.conn is not None:
            self._mark_closed(proto.conn)
        self._notify()

    def _on_request(self, proto: _UpstreamProtocol, request: h11.Request) -> None:
        target = request.target.decode("latin-1")
        raw_headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers]
        headers = dict(raw_headers)  # later duplicates overwrite earlier ones: last wins
        peer = proto.transport.get_extra_info("peername") if proto.transport else None
        conn = UpstreamConnection(
            path=target.split("?", 1)[0],
            target=target,
            method=request.method.decode("latin-1"),
            headers=headers,
            raw_headers=raw_headers,
            last_event_id=headers.get("last-event-id"),
            peer=(str(peer[0]), int(peer[1])) if peer else ("", 0),
            opened_at=time.monotonic(),
            _proto=proto,
        )
        proto.conn = conn
        self.connections.append(conn)
        if conn.path not in self._stalled:
            self._respond(conn)
        self._notify()

    def _respond(self, conn: UpstreamConnection) -> None:
        proto = conn._proto
        if proto is None:
            return
        cfg = self._configs.get(conn.path, _DEFAULT_CONFIG)
        conn.responded = True
        status_line = f"HTTP/1.1 {cfg.status} {cfg.reason or _reason_phrase(cfg.status)}\r\n"
        extra = "".join(f"{name}: {value}\r\n" for name, value in cfg.headers)
        if not cfg.streams:
            head = (
                f"{status_line}content-type: {cfg.content_type}\r\n"
                f"content-length: {len(cfg.body)}\r\nconnection: close\r\n{extra}\r\n"
            )
            proto.write(head.encode("latin-1") + cfg.body)
            self._mark_closed(conn)
            proto.finish()
            return
        conn.streaming = True
        head = (
            f"{status_line}content-type: {cfg.content_type}\r\ncache-control: no-cache\r\n"
            f"transfer-encoding: chunked\r\n{extra}\r\n"
        )
        proto.write(head.encode("latin-1"))
        if cfg.prelude:
            proto.write(frame_chunk(cfg.prelude))
        if cfg.replay and conn.last_event_id is not None:
            # Head, prelude, replay and joining the live set happen in one synchronous step, so
            # no publish can slip in between: the client sees history then live, with no gap.
            for past in self._events_after(conn.path, conn.last_event_id):
                if proto.write(frame_chunk(past.wire)):
                    conn.replayed += 1

    def _events_after(self, path: str, last_id: str) -> list[UpstreamEvent]:
        history = self._history.get(path, [])
        for index in range(len(history) - 1, -1, -1):
            if history[index].id == last_id:
                return history[index + 1 :]
        return []

    def _live_streams(self, path: str) -> list[_UpstreamProtocol]:
        if path in self._stalled:
            return []
        return [
            c._proto
            for c in self.connections
            if c.path == path and c.open and c.streaming and c._proto is not None
        ]

    def _broadcast(self, path: str, data: bytes) -> int:
        return sum(1 for proto in self._live_streams(path) if proto.write(data))

    def _retire_heartbeat(self, path: str) -> None:
        task = self._heartbeat_tasks.pop(path, None)
        if task is not None and not task.done():
            task.cancel()
            self._retired_tasks.add(task)
            task.add_done_callback(self._retired_tasks.discard)

    def _spawn_heartbeat(self, path: str) -> None:
        self._retire_heartbeat(path)
        loop = self._loop
        if loop is None:
            return
        self._heartbeat_tasks[path] = loop.create_task(
            self._heartbeat_loop(path), name=f"FakeUpstream heartbeat {path}"
        )

    async def _heartbeat_loop(self, path: str) -> None:
        while True:
            settings = self._heartbeats.get(path)
            if settings is None:
                return
            interval_s, payload = settings
            # A heartbeat is periodic by nature: sleeping is the behaviour, not a wait for
            # something that could be awaited.
            await asyncio.sleep(interval_s)
            self._broadcast(path, frame_chunk(payload))
