"""One SSE client of the load generator, on a raw socket read by the event loop.

:class:`Tracker` is what a logical client measured, across reconnects, with O(1)
state: the last ``seq`` seen, how many distinct events arrived (in order; a gap
shows up as loss), duplicates, the last ``id:`` value (for ``Last-Event-ID``),
and per event the publish -> receive latency, appended to its worker's array.
The origin writes ``data: <seq> <CLOCK_MONOTONIC ns> <pad>``; the clock is
system-wide, so the subtraction across processes is valid. The receive time is
the kernel's timestamp of the read's data reaching the socket (see
:class:`RxClock`): what a client with a core of its own would see, not when
this busy load generator got round to reading. At a fixed rate a worker also
parses later, when its clients are idle, so that parsing does not hold up the
next reads. An event whose data is not in that form (a gateway's gap signal)
is counted as foreign, not parsed.

:class:`Slot` is one attempt to stream for a tracker (a TCP connection or an
HTTP/2 stream); :class:`H1Client` is the HTTP/1.1 connection: it writes one
fixed GET, checks the status line, de-chunks the body (a fast path for reads
that are exactly one chunk) and feeds the tracker. "Established" means the
first body bytes (the gateway's ``: ok``) arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.loadgen import Worker

HEAD_LIMIT = 16384
READ_BYTES = 65536
# Linux (include/uapi/asm-generic/socket.h, linux/net_tstamp.h); Python names
# none of them. RX_SOFTWARE | SOFTWARE: report software receive timestamps.
SO_TIMESTAMPING = 37
SCM_TIMESTAMPING = SO_TIMESTAMPING
TIMESTAMPING_RX_SOFTWARE = (1 << 3) | (1 << 4)
TIMESPEC = struct.Struct("qq")
TIMESTAMP_CMSG_SPACE = socket.CMSG_SPACE(3 * TIMESPEC.size)
MAX_DEFERRED = 500_000  # reads kept unparsed at most (about 100 MB)
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
        """A piece of the SSE body (de-framed) received at ``now``: parsed now,
        or kept for later when the worker defers parsing (see
        :meth:`benchmarks.loadgen.Worker.flush_deferred`)."""
        worker = self.worker
        deferred = worker.deferred
        if deferred is None:
            self.parse(data, now)
            return
        deferred.append((self, data, now))
        worker.last_rx_ns = now
        if len(deferred) >= MAX_DEFERRED:
            worker.flush_deferred()

    def parse(self, data: bytes, now: int) -> None:
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


class H1Client:
    """One HTTP/1.1 SSE client connection on a connected non-blocking socket,
    read with ``recvmsg`` from an event-loop reader; de-chunks and feeds its
    tracker. Each read carries the kernel's receive timestamp (see
    :class:`RxClock`), so a busy load generator does not add its own delay to
    the latencies it measures."""

    def __init__(self, worker: Worker, slot: Slot, request: bytes, sock: socket.socket) -> None:
        self.worker = worker
        self.slot = slot
        self.tracker = slot.tracker
        self.request = request
        self.sock: socket.socket | None = sock
        self.head: bytes | None = b""
        self.chunked = False
        self.left = 0  # bytes left in the current chunk
        self.skip = 0  # bytes of CRLF after a chunk still to skip
        self.tail = b""  # an incomplete chunk-size line
        self.failed = False

    def start(self) -> None:
        sock = self.sock
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TIMESTAMPING_RX_SOFTWARE)
        sock.send(self.request)  # a few hundred bytes into an empty send buffer
        self.worker.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        worker = self.worker
        try:
            # Into the worker's one buffer: recvmsg(65536) would allocate 64 KiB per read.
            size, ancillary, _, _ = sock.recvmsg_into(worker.read_into, TIMESTAMP_CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._closed(exc)
            return
        if not size:
            self._closed(None)
            return
        data = worker.read_view[:size].tobytes()
        self.data_received(data, worker.rx_clock.receive_time(ancillary))

    def data_received(self, data: bytes, now: int) -> None:
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
        self._closed(None)

    def _closed(self, exc: BaseException | None) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        with contextlib.suppress(ValueError, OSError):
            self.worker.loop.remove_reader(sock.fileno())
        sock.close()
        self.worker.lost(self.slot, error_kind(exc))


class RxClock:
    """Receive times on CLOCK_MONOTONIC (the origin's clock), from the kernel's
    software receive timestamps (``SO_TIMESTAMPING``, CLOCK_REALTIME: when the
    data reached the socket), or from ``monotonic_ns()`` at the read when a read
    carries none. The realtime-to-monotonic offset is sampled again by
    :meth:`resync`, so clock adjustments during a run do not creep in."""

    def __init__(self) -> None:
        self.offset = 0
        self.resync()

    def resync(self) -> None:
        # The closest pair of three samples bounds the error by one clock read.
        best = None
        for _ in range(3):
            before = time.monotonic_ns()
            real = time.time_ns()
            after = time.monotonic_ns()
            if best is None or after - before < best[0]:
                best = (after - before, real - (before + after) // 2)
        assert best is not None
        self.offset = best[1]

    def receive_time(self, ancillary: list[tuple[int, int, bytes]]) -> int:
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPING and len(payload) >= 16:
                seconds: int
                nanoseconds: int
                seconds, nanoseconds = TIMESPEC.unpack_from(payload)
                if seconds or nanoseconds:
                    return seconds * 1_000_000_000 + nanoseconds - self.offset
        return monotonic_ns()
