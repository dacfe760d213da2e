"""One SSE client of the load generator, on a raw asyncio protocol.

:class:`Tracker` is what a logical client measured, across reconnects, with O(1)
state: the last ``seq`` seen, how many distinct events arrived (in order; a gap
shows up as loss), duplicates, the last ``id:`` value (for ``Last-Event-ID``),
and per event the publish -> receive latency, appended to its worker's array.
The origin writes ``data: <seq> <CLOCK_MONOTONIC ns> <pad>``; the clock is
system-wide, so the subtraction across processes is valid; the receive time is
one ``monotonic_ns()`` per read. An event whose data is not in that form (a
gateway's gap signal) is counted as foreign, not parsed.

:class:`Slot` is one attempt to stream for a tracker (a TCP connection or an
HTTP/2 stream); :class:`H1Client` is the HTTP/1.1 connection: it writes one
fixed GET, checks the status line, de-chunks the body (a fast path for reads
that are exactly one chunk) and feeds the tracker. "Established" means the
first body bytes (the gateway's ``: ok``) arrived.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from benchmarks.loadgen import Worker

HEAD_LIMIT = 16384
monotonic_ns = time.monotonic_ns


class Tracker:
    """One logical client: what it received, across reconnects."""

    __slots__ = ("dead", "dups", "last", "last_id", "pending", "protocol", "unique", "worker")

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.protocol: H1Client | None = None  # the live HTTP/1.1 connection
        self.last = 0
        self.unique = 0
        self.dups = 0
        self.last_id = b""
        self.pending = b""
        self.dead = False

    def feed(self, data: bytes, now: int) -> None:
        """A piece of the SSE body (de-framed) received at ``now``."""
        if self.pending:
            data = self.pending + data
            self.pending = b""
        if not data.endswith(b"\n\n"):  # keep an incomplete last block for later
            end = data.rfind(b"\n\n")
            if end < 0:
                self.pending = data
                return
            self.pending = data[end + 2 :]
            data = data[: end + 2]
        parts = data.split(b"data: ")
        if len(parts) == 1:
            return  # comments, retry:, id-only blocks
        worker = self.worker
        append = worker.latencies.append
        feedback = worker.feedback
        last = self.last
        del parts[0]
        for part in parts:
            try:
                seq_text, ts_text, _ = part.split(b" ", 2)
                seq = int(seq_text)
                append((now - int(ts_text)) // 1000)
            except ValueError:  # not one of ours: a gap signal, an overload notice
                worker.foreign += 1
                continue
            if seq > last:
                last = seq
                self.unique += 1
            else:
                self.dups += 1
            if feedback is not None:
                worker.count_seq(seq)
        self.last = last
        p = data.rfind(b"id: ")
        if p >= 0 and (p == 0 or data[p - 1] == 10):
            self.last_id = data[p + 4 : data.find(b"\n", p)]
        worker.deliveries += len(parts)  # (foreign events are subtracted at the end)
        worker.reads += 1
        worker.last_rx_ns = now


class Slot:
    """One attempt to stream for a tracker: a TCP connection (HTTP/1.1) or an
    HTTP/2 stream. Resolves ``ready`` when established or failed."""

    __slots__ = ("closing", "established", "ready", "started_ns", "tracker")

    def __init__(self, tracker: Tracker, ready: asyncio.Future[None]) -> None:
        self.tracker = tracker
        self.started_ns = monotonic_ns()
        self.established = False
        self.closing = False
        self.ready = ready


def error_kind(exc: BaseException | None) -> str:
    if exc is None:
        return "eof"
    return type(exc).__name__


class H1Client(asyncio.Protocol):
    """One HTTP/1.1 SSE client connection; de-chunks and feeds its tracker."""

    def __init__(self, worker: Worker, slot: Slot, request: bytes) -> None:
        self.worker = worker
        self.slot = slot
        self.tracker = slot.tracker
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""
        self.chunked = False
        self.left = 0  # bytes left in the current chunk
        self.skip = 0  # bytes of CRLF after a chunk still to skip
        self.tail = b""  # an incomplete chunk-size line
        self.failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = monotonic_ns()
        if self.failed:
            return
        if self.head is not None:
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                if len(head) > HEAD_LIMIT:
                    self._fail("head_too_long")
                return
            self.head = None
            status = head[9:12]
            if not head.startswith(b"HTTP/1.") or status != b"200":
                self._fail(f"status_{status.decode('latin-1')}")
                return
            self.chunked = b"transfer-encoding: chunked" in head[:end].lower()
            data = head[end + 4 :]
            if not data:
                return
        body = self._dechunk(data) if self.chunked else data
        if body:
            if not self.slot.established:
                self.worker.established(self.slot, now)
            self.tracker.feed(body, now)

    def _dechunk(self, data: bytes) -> bytes:
        if not (self.left or self.skip or self.tail):
            # Fast path: the read is exactly one whole chunk (the common case).
            eol = data.find(b"\r\n")
            if 0 < eol < 9 and data[:eol].isalnum():
                end = eol + 2 + int(data[:eol], 16)
                if len(data) == end + 2 and end > eol + 2:
                    return data[eol + 2 : end]
        if self.tail:
            data = self.tail + data
            self.tail = b""
        out = []
        pos, size = 0, len(data)
        while pos < size:
            if self.left:
                end = pos + self.left
                if end <= size:
                    out.append(data[pos:end])
                    self.left = 0
                    self.skip = 2
                    pos = end
                else:
                    out.append(data[pos:])
                    self.left -= size - pos
                    pos = size
            elif self.skip:
                step = min(self.skip, size - pos)
                self.skip -= step
                pos += step
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self.tail = data[pos:]
                    break
                length = int(data[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if length == 0:  # the server ended the response
                    break
                self.left = length
        return out[0] if len(out) == 1 else b"".join(out)

    def _fail(self, kind: str) -> None:
        self.failed = True
        self.worker.fail(self.slot, kind)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.lost(self.slot, error_kind(exc))
