"""HTTP/2 connections under the gateway's limits.

:class:`GuardedH2Protocol` replaces ``H2Protocol`` where hypercorn's
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
import time
from dataclasses import dataclass
from typing import Any

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hypercorn.protocol
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h2 import H2Protocol

log = logging.getLogger("gateway.h2")


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
        self.gateway_flush_due = False
        if limits is not None:
            self.connection.decoder.max_header_list_size = limits.max_header_list_bytes
            self.gateway_budget = ResetBudget.full(limits.resets_per_s, limits.reset_burst)

    def gateway_flush_soon(self) -> None:
        """Write what h2 has to send at the end of this turn of the event loop:
        a fan-out that hands DATA frames for many streams of this connection to
        h2 (:class:`gateway.hyperglue.connection.DirectH2Writer`) then costs one
        write, not one per stream."""
        if not self.gateway_flush_due:
            self.gateway_flush_due = True
            asyncio.get_running_loop().call_soon(self._gateway_flush)

    def _gateway_flush(self) -> None:
        self.gateway_flush_due = False
        transport = _transport_of(self)
        if transport is None or transport.is_closing():
            return
        if self.send.__self__.send_lock.locked():  # type: ignore[attr-defined]
            # A holder or a waiter may have bytes taken from h2 before ours and
            # not written yet: hypercorn's own flush takes ours and queues on
            # the lock behind them, which keeps the order.
            self.task_group.spawn(self._flush)
            return
        data = self.connection.data_to_send()
        if data:
            transport.write(data)

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
    # Not isinstance(asyncio.Transport): uvloop's transports are not registered
    # as its subclasses (this check once made the GOAWAY grace abort a no-op).
    if callable(getattr(transport, "write", None)) and callable(getattr(transport, "abort", None)):
        return transport  # type: ignore[no-any-return]
    return None


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
