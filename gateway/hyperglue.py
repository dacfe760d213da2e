"""What the gateway needs from hypercorn that ASGI does not expose.

Pinned to hypercorn 0.18.0 (see pyproject.toml); tests/test_hyperglue.py covers
each function on HTTP/1.1 and HTTP/2, so an upgrade that moves these internals
fails loudly instead of silently.

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

    def set_user_timeout(self, timeout_s: float) -> None:
        sock = self.transport.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(timeout_s * 1000))


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
