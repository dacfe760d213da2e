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

Two more reaches, for the edge (see :func:`install_h2_guard`):

- :class:`GatewayHypercornConfig` hands hypercorn an ``ssl.SSLContext`` the
  gateway owns (hypercorn's ``worker_serve`` asks ``config.ssl_enabled`` and
  ``config.create_ssl_context()`` once per process), so a certificate reload
  changes the very context the listeners use.
- :class:`GuardedH2Protocol` replaces ``H2Protocol`` where hypercorn's
  ``ProtocolWrapper`` looks it up (the ``hypercorn.protocol`` module global). It
  sees every h2 event of its connection, counts the client's RST_STREAM frames
  against a token bucket (Rapid Reset, CVE-2023-44487) and enforces
  ``MAX_HEADER_LIST_SIZE`` from the first frame: hypercorn passes the setting as
  an *initial* value, which h2 advertises but never applies to its HPACK decoder
  (the decoder only changes when a *changed* setting is acknowledged). It feeds
  h2 in small slices; keeps a stream's ``send()`` blocked while the client's
  flow-control window is 0 (hypercorn would buffer without bound); and when the
  connection closes it releases the streams' send buffers, so that no
  application task stays blocked in ``send()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hypercorn.protocol
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h2 import H2Protocol

log = logging.getLogger("gateway.h2")

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


# -- TLS: a context owned by the gateway ------------------------------------------------------


class GatewayHypercornConfig(HypercornConfig):
    """hypercorn settings plus what the gateway owns: the TLS context (hypercorn uses
    it instead of building one from ``certfile``/``keyfile``) and the HTTP/2 limits
    read by :class:`GuardedH2Protocol`."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, h2_limits: H2Limits | None = None
    ) -> None:
        super().__init__()
        self.gateway_ssl_context = ssl_context
        self.gateway_h2_limits = h2_limits

    @property
    def ssl_enabled(self) -> bool:
        return self.gateway_ssl_context is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.gateway_ssl_context


# -- HTTP/2: rapid reset and header list size ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class H2Limits:
    max_header_list_bytes: int
    resets_per_s: float
    reset_burst: int


@dataclass(slots=True)
class ResetBudget:
    """A token bucket: ``burst`` resets at once, ``rate`` per second sustained."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: int) -> ResetBudget:
        return cls(rate=rate, burst=float(burst), tokens=float(burst), stamp=time.monotonic())

    def spend(self, now: float) -> bool:
        """Take one token; False when the budget is exhausted."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return self.tokens >= 0.0


# At most this much received data is parsed by h2 in one go (about 150 HEADERS+RST_STREAM
# pairs of a flood, a few milliseconds of CPU).
H2_SLICE_BYTES = 4096
_H2_CLOSED = h2.connection.ConnectionState.CLOSED
# After GOAWAY, a client that does not read would keep the connection (and its
# buffers) forever: hypercorn's close waits for the write buffer to drain.
GOAWAY_GRACE_S = 1.0
CUTOFF_LOG_INTERVAL_S = 10.0


class _CutoffLog:
    """One warning per interval, with the count of connections cut off meanwhile: a
    flood of abusive connections must not become a flood of log lines."""

    def __init__(self) -> None:
        self.last = -CUTOFF_LOG_INTERVAL_S
        self.suppressed = 0

    def note(self, client: object, processed: int) -> None:
        now = time.monotonic()
        if now - self.last < CUTOFF_LOG_INTERVAL_S:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        log.warning(
            "h2: client %s reset streams faster than allowed: GOAWAY ENHANCE_YOUR_CALM after "
            "%d stream(s)%s",
            client,
            processed,
            more,
        )
        self.last = now
        self.suppressed = 0


_cutoff_log = _CutoffLog()


class GuardedH2Protocol(H2Protocol):
    """hypercorn 0.18's ``H2Protocol`` with the gateway's per-connection limits (read
    from ``config.gateway_h2_limits``; without them, no reset budget, no header list
    limit and no slicing) and two fixes that always apply: backpressure on a zero
    flow-control window, and send buffers released when the connection closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits: H2Limits | None = getattr(self.config, "gateway_h2_limits", None)
        self.gateway_budget: ResetBudget | None = None
        self.gateway_cut_off = False
        if limits is not None:
            self.connection.decoder.max_header_list_size = limits.max_header_list_bytes
            self.gateway_budget = ResetBudget.full(limits.resets_per_s, limits.reset_burst)

    async def handle(self, event: Event) -> None:
        """Feed h2 at most :data:`H2_SLICE_BYTES` at a time, yielding to the loop in
        between: h2 parses a whole read (64 KiB, thousands of frames, hundreds of
        milliseconds of CPU) before returning any event, so without slicing a flood would
        cost that much before the budget could even be checked, and delay every other
        connection of the process meanwhile."""
        if isinstance(event, Closed):
            await super().handle(event)
            # hypercorn 0.18 leaves the streams' send buffers open when the connection
            # closes; an app blocked in send() (draining the end of its response while
            # the client vanished) would wait until cancelled. Release it now.
            for buffer in list(self.stream_buffers.values()):
                await buffer.close()
            return
        if not isinstance(event, RawData) or self.gateway_budget is None:
            await super().handle(event)
            return
        data = event.data
        for start in range(0, len(data), H2_SLICE_BYTES):
            if self.gateway_cut_off or self.connection.state_machine.state is _H2_CLOSED:
                return
            if start:
                await asyncio.sleep(0)
            await super().handle(RawData(data=data[start : start + H2_SLICE_BYTES]))

    async def _send_data(self, stream_id: int) -> None:
        """Keep hypercorn's backpressure when the client's flow-control window is 0.
        hypercorn 0.18 then pops 0 bytes from the stream's buffer, and popping less than
        the low-water mark releases the writer: a client that never opens its window
        would make hypercorn buffer everything the stream sends, without bound, while
        the gateway's own queue limits and send deadline never see a blocked send."""
        buffer = self.stream_buffers.get(stream_id)
        try:
            window = self.connection.local_flow_control_window(stream_id)
        except (h2.exceptions.ProtocolError, KeyError):
            # A closed (e.g. reset) stream: hypercorn's own path cleans it up, which costs
            # O(open streams) in its priority tree and never yields. Yield after it, so
            # that cleaning up after many resets does not hold up every other connection.
            await super()._send_data(stream_id)
            await asyncio.sleep(0)
            return
        if buffer is not None and window <= 0 and buffer.buffer:
            self.priority.block(stream_id)  # unblocked by the client's WINDOW_UPDATE
            return
        await super()._send_data(stream_id)

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        budget = self.gateway_budget
        if self.gateway_cut_off:
            return  # frames read after the GOAWAY: ignore them
        if budget is not None:
            now = time.monotonic()
            for index, event in enumerate(events):
                if (
                    isinstance(event, h2.events.StreamReset)
                    and event.remote_reset
                    and not budget.spend(now)
                ):
                    await super()._handle_events(events[: index + 1])
                    await self._cut_off(event.stream_id)
                    return
        await super()._handle_events(events)

    async def _cut_off(self, last_stream_id: int) -> None:
        """GOAWAY (ENHANCE_YOUR_CALM) naming the last stream processed, then close.
        Streams still open on this connection get ``http.disconnect``."""
        self.gateway_cut_off = True
        _cutoff_log.note(self.client, last_stream_id // 2 + 1)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.connection.close_connection(
                error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                last_stream_id=last_stream_id,
                additional_data=b"too many stream resets",
            )
        transport = _transport_of(self)
        if transport is not None:
            # Before flushing: both the flush and the close wait for the buffer to drain.
            asyncio.get_running_loop().call_later(GOAWAY_GRACE_S, _abort, transport)
        await self._flush()
        await self.send(Closed())


def _transport_of(protocol: H2Protocol) -> asyncio.Transport | None:
    try:
        transport = protocol.send.__self__.writer.transport  # type: ignore[attr-defined]
    except AttributeError:
        return None
    return transport if isinstance(transport, asyncio.Transport) else None


def _abort(transport: asyncio.Transport) -> None:
    with contextlib.suppress(Exception):  # already gone: nothing to do
        transport.abort()


def install_h2_guard() -> None:
    """Make hypercorn create :class:`GuardedH2Protocol` for every HTTP/2 connection
    (ALPN h2, h2c prior knowledge and ``Upgrade: h2c``). Idempotent; process-wide
    (the limits come from each server's config)."""
    vars(hypercorn.protocol)["H2Protocol"] = GuardedH2Protocol


def h2_guard_installed() -> bool:
    return vars(hypercorn.protocol).get("H2Protocol") is GuardedH2Protocol
