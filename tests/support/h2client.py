"""An HTTP/2 client written on the ``h2`` library directly, for tests that must control the
connection: many streams on ONE connection, resets, floods, raw settings.

httpx's HTTP/2 client lost final events against hypercorn (DESIGN.md §3), and hides the
connection; here every frame the test sends is explicit. A background task reads the socket,
feeds ``h2``, acknowledges received DATA at once (so flow control never stalls a stream) and
records per stream: status, headers, body, parsed SSE events with their arrival times, end or
reset. Connection-level GOAWAY is recorded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from tests.support.clients import ParsedEvent, SSEParser

__all__ = ["GoAway", "H2Client", "H2Stream", "flood_bytes"]

WINDOW = 1 << 24


@dataclass
class H2Stream:
    stream_id: int
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    events: list[ParsedEvent] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() per event
    ended: bool = False
    reset_code: int | None = None
    parser: SSEParser = field(default_factory=SSEParser)

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


@dataclass(frozen=True)
class GoAway:
    error_code: int
    last_stream_id: int
    additional_data: bytes | None


class H2Client:
    """One HTTP/2 connection (h2c with prior knowledge, or TLS with ALPN ``h2``)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        authority: str,
        scheme: str,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.authority = authority.encode()
        self.scheme = scheme.encode()
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.streams: dict[int, H2Stream] = {}
        self.goaway: GoAway | None = None
        self.closed = False  # the server closed the socket (EOF or reset)
        self.error: BaseException | None = None
        self.acknowledge = True
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        read_window: bool = True,
    ) -> H2Client:
        """``read_window=False``: keep h2's default 64 KiB windows and never acknowledge
        DATA, so the server's sends block once that much is unread (a stalled client)."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
            )
        if ssl_context is not None:
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object is not None
            assert ssl_object.selected_alpn_protocol() == "h2"
        client = cls(reader, writer, f"{host}:{port}", "https" if ssl_context else "http")
        client.acknowledge = read_window
        client.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW if read_window else 65535,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        client.conn.initiate_connection()
        if read_window:
            client.conn.increment_flow_control_window(1 << 30)
        client._flush()
        client._task = asyncio.get_running_loop().create_task(client._read())
        return client

    # -- requests ---------------------------------------------------------------------------

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        accept_sse: bool = True,
    ) -> H2Stream:
        stream_id = self.conn.get_next_available_stream_id()
        all_headers = [
            (b":method", method.encode()),
            (b":scheme", self.scheme),
            (b":authority", self.authority),
            (b":path", path.encode()),
        ]
        if accept_sse:
            all_headers.append((b"accept", b"text/event-stream"))
        all_headers += [(name.encode(), value.encode()) for name, value in headers]
        stream = H2Stream(stream_id)
        self.streams[stream_id] = stream
        self.conn.send_headers(stream_id, all_headers, end_stream=True)
        self._flush()
        return stream

    def cancel(self, stream: H2Stream) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            self.conn.reset_stream(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
        self._flush()

    async def get(self, path: str, timeout: float = 10.0) -> H2Stream:
        stream = self.request(path, accept_sse=False)
        await self.wait(lambda: stream.done, timeout, f"the response to {path}")
        return stream

    # -- waiting ----------------------------------------------------------------------------

    async def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self.closed and not predicate():
                        raise ConnectionError(f"connection closed while waiting for {what}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None

    async def wait_events(self, stream: H2Stream, count: int, timeout: float = 10.0) -> None:
        await self.wait(
            lambda: len(stream.events) >= count or stream.done,
            timeout,
            f"{count} events on stream {stream.stream_id} (have {len(stream.events)})",
        )
        if len(stream.events) < count:
            raise AssertionError(
                f"stream {stream.stream_id} ended after {len(stream.events)} of {count} events "
                f"(reset={stream.reset_code})"
            )

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await self.wait(lambda: self.closed, timeout, "the server to close the connection")

    # -- internals --------------------------------------------------------------------------

    def abort(self) -> None:
        """Vanish: close the socket with a RST."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as error:
                    self.error = error
                    break
                for event in events:
                    self._handle(event)
                self._flush()
                self._changed.set()
        except (ConnectionError, OSError, ssl.SSLError) as error:
            self.error = error
        finally:
            self.closed = True
            self._changed.set()

    def _handle(self, event: h2.events.Event) -> None:
        now = time.monotonic()
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams[event.stream_id]
            stream.headers = list(event.headers or [])
            status = stream.header(b":status")
            stream.status = int(status) if status else None
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams[event.stream_id]
            data = event.data or b""
            stream.body += data
            for parsed in stream.parser.feed(data):
                stream.events.append(parsed)
                stream.arrivals.append(now)
            if event.flow_controlled_length and self.acknowledge:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.streams:
                self.streams[event.stream_id].reset_code = int(event.error_code or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = GoAway(
                int(event.error_code or 0), int(event.last_stream_id or 0), event.additional_data
            )

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def __aenter__(self) -> H2Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def flood_bytes(authority: str, path: str, pairs: int) -> bytes:
    """A connection preface followed by ``pairs`` HEADERS+RST_STREAM pairs (Rapid Reset,
    CVE-2023-44487), precomputed so that sending it costs the test nothing."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
        (b"accept", b"text/event-stream"),
    ]
    # h2 refuses to open more than the peer's concurrent-stream limit; streams are reset at
    # once, so it never has more than one open.
    for index in range(pairs):
        stream_id = 1 + 2 * index
        conn.send_headers(stream_id, headers, end_stream=True)
        conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
    return bytes(conn.data_to_send())
