"""The transport under an ASGI request: abort it, and write to it directly
(the fan-out fast path, on HTTP/1.1 and HTTP/2).

ASGI gives an application ``send`` and nothing else, but a gateway must be able
to *abort* a connection whose client stopped reading: hypercorn has no write
timeout, and ``transport.close()`` waits forever for a buffer that a
non-reading client never drains. hypercorn 0.18 hands the application
``HTTPStream.app_send``; from it we reach the protocol (``H11Protocol`` or
``H2Protocol``) and the ``TCPServer`` that owns the asyncio transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h2.connection
import h2.errors
import h2.exceptions

# Linux: how long written data may stay unacknowledged before the kernel gives
# up on the connection. Catches peers that vanished without a FIN (the
# heartbeats give the kernel something to retransmit).
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)


@dataclass(slots=True)
class Connection:
    """The transport under one ASGI request, and how to end just that request."""

    transport: asyncio.Transport
    protocol: Any  # hypercorn's H11Protocol or H2Protocol
    stream_id: int
    http2: bool

    def abort(self) -> None:
        """Drop the request now. HTTP/1.1: abort the TCP connection (RST, buffer
        discarded). HTTP/2: reset just this stream, unless the whole connection
        is backed up, in which case no frame would get through and the
        connection itself is aborted."""
        if self.transport.is_closing():
            return
        if not self.http2:
            self.transport.abort()
            return
        if self.transport.get_write_buffer_size() >= self.transport.get_write_buffer_limits()[1]:
            self.transport.abort()
            return
        connection = self.protocol.connection
        try:
            connection.reset_stream(self.stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.ProtocolError, KeyError):
            return
        data = connection.data_to_send()
        if data:
            self.transport.write(data)

    def direct_writer(self) -> DirectWriter:
        """The fast-path writer for this request's response (already started)."""
        limit = self.transport.get_write_buffer_limits()[1]
        if self.http2:
            return DirectH2Writer(self.transport, self.protocol, self.stream_id, limit)
        return DirectH11Writer(self.transport, limit)

    def set_user_timeout(self, timeout_s: float) -> None:
        sock = self.transport.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(timeout_s * 1000))


class DirectH11Writer:
    """Writes frames of a started HTTP/1.1 chunked response straight to the
    transport, for :attr:`gateway.hub.Subscriber.direct`.

    The ASGI path costs one task switch and hypercorn's whole send chain
    (HTTPStream.app_send → H11Protocol → h11 → TCPServer.protocol_send with its
    lock and drain) per frame per client; benchmarks/RESULTS.md measured about
    30 µs of a 50 µs delivery there. h11 keeps no byte count for a chunked
    body, so chunks written here, framed exactly as h11 frames them, leave its
    state valid: the end of the response still goes through ASGI (h11 writes
    the last chunk). Writes happen only while the transport's buffer is below
    ``limit``; past it the frame goes through the queue and the writer, whose
    send waits for the client (backpressure, send deadline, slow-consumer
    policy) as before.
    """

    __slots__ = ("limit", "transport", "written")

    def __init__(self, transport: Any, limit: int) -> None:
        self.transport = transport
        self.limit = limit
        self.written = 0

    def __call__(self, frame: bytes) -> bool:
        transport = self.transport
        if transport.get_write_buffer_size() >= self.limit or transport.is_closing():
            return False
        chunk = chunk_of(frame)
        transport.write(chunk)
        self.written += len(chunk)
        return True


class DirectH2Writer:
    """Writes frames of a started HTTP/2 response as DATA frames straight to the
    transport, for :attr:`gateway.hub.Subscriber.direct`.

    hypercorn 0.18 sends a body through a per-stream ``StreamBuffer`` and a
    sender task that walks a priority tree (about 75 µs per delivery measured,
    benchmarks/RESULTS.md). This hands the frame to the connection's ``h2``
    state machine (which does the framing and the flow-control accounting)
    and writes what it produces at once, but only when that cannot reorder
    anything:

    - the stream's ``StreamBuffer`` is empty and not complete (nothing of this
      stream waits in hypercorn);
    - the connection's send lock is free: whoever holds it may have taken bytes
      from ``h2`` that are not written yet, and ours must not overtake them
      (hypercorn takes and writes in one step when the lock is free);
    - the frame fits the stream's and the connection's flow-control windows and
      one frame (``max_outbound_frame_size``);
    - the transport's buffer is below ``limit``.

    Otherwise the frame goes through the queue and the ASGI send, as before.
    Under :class:`GuardedH2Protocol` (always, in the gateway) the bytes h2
    produced are written at the end of this loop turn, once per connection.
    """

    __slots__ = (
        "buffers",
        "connection",
        "flush_soon",
        "limit",
        "send_lock",
        "stream_id",
        "transport",
        "written",
    )

    def __init__(self, transport: Any, protocol: Any, stream_id: int, limit: int) -> None:
        self.transport = transport
        self.connection: h2.connection.H2Connection = protocol.connection
        self.buffers: dict[int, Any] = protocol.stream_buffers
        self.send_lock: asyncio.Lock = protocol.send.__self__.send_lock  # TCPServer's
        # GuardedH2Protocol writes once per connection per loop turn; without
        # it, every frame is written at once.
        self.flush_soon: Callable[[], None] | None = getattr(protocol, "gateway_flush_soon", None)
        self.stream_id = stream_id
        self.limit = limit
        self.written = 0

    def __call__(self, frame: bytes) -> bool:
        transport = self.transport
        if (
            transport.get_write_buffer_size() >= self.limit
            or transport.is_closing()
            or self.send_lock.locked()
        ):
            return False
        buffer = self.buffers.get(self.stream_id)
        if buffer is None or buffer.buffer or buffer.complete:
            return False
        connection = self.connection
        try:
            window = connection.local_flow_control_window(self.stream_id)
            if len(frame) > min(window, connection.max_outbound_frame_size):
                return False
            connection.send_data(self.stream_id, frame)
        except (h2.exceptions.ProtocolError, KeyError):  # reset or closed meanwhile
            return False
        if self.flush_soon is not None:
            self.flush_soon()
        else:
            transport.write(connection.data_to_send())
        self.written += len(frame)
        return True


DirectWriter = DirectH11Writer | DirectH2Writer

_last_frame: bytes = b""
_last_chunk: bytes = b""


def chunk_of(frame: bytes) -> bytes:
    """``frame`` in HTTP/1.1 chunked framing. A publish offers one frame object
    to every subscriber in turn, so a one-entry cache frames it once."""
    global _last_frame, _last_chunk
    if frame is not _last_frame:
        _last_chunk = b"%x\r\n%b\r\n" % (len(frame), frame)
        _last_frame = frame
    return _last_chunk


def connection_of(send: Callable[..., Any]) -> Connection | None:
    """The :class:`Connection` behind an ASGI ``send`` given by hypercorn 0.18,
    or None when the server is not hypercorn or its internals have moved."""
    try:
        stream = send.__self__  # type: ignore[attr-defined]  # HTTPStream
        protocol = stream.send.__self__  # H11Protocol / H2Protocol
        tcp_server = protocol.send.__self__  # TCPServer
        transport = tcp_server.writer.transport
        stream_id = int(stream.stream_id)
    except AttributeError:
        return None
    if not callable(getattr(transport, "abort", None)):
        return None
    http2 = hasattr(protocol, "stream_buffers")
    return Connection(transport=transport, protocol=protocol, stream_id=stream_id, http2=http2)
