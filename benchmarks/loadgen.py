"""Load generator: SSE clients on raw asyncio protocols over uvloop, in worker processes.

Each worker process (``multiprocessing``, spawn) holds up to ~15,000 clients
from its own source address (127.0.0.2, 127.0.0.3, ...). A client connects
(``loop.sock_connect`` on a socket bound with ``IP_BIND_ADDRESS_NO_PORT``, then
``loop.create_connection(sock=...)``), sends one fixed HTTP/1.1 GET (with
``Last-Event-ID`` on a reconnect), de-chunks the body and splits it on blank
lines. With ``kind="h2"`` a worker instead opens h2c (prior knowledge)
connections with the ``h2`` library and one GET stream per client.

Measured, per client, with O(1) state (:class:`Tracker`):

- *established*: the first body bytes (the gateway's ``: ok`` comment)
  arrived; connect time is from just before ``connect()`` to then;
- per event: ``seq`` and the publish timestamp from the ``data:`` line
  (``<seq> <CLOCK_MONOTONIC ns> <pad>``, see :mod:`benchmarks.upstream`), and
  the ``id:`` value (for ``Last-Event-ID``). Latency = receive time (one
  ``monotonic_ns()`` per read) minus publish time; the clock is system-wide,
  so the subtraction across processes is valid;
- loss: every client is connected before the first event is published, so it
  should see every ``seq`` from 1 to the last published one. Events are
  expected in order: a ``seq`` above the last one seen counts as received
  (gaps show up as loss), anything else as a duplicate.

With a feedback port (closed-loop "max" rate) each worker counts, per ``seq``,
how many of its live clients have it, and reports over UDP the highest ``seq``
up to which all of them have everything; the origin uses that as its window.

The parent's :class:`LoadGen` sends each phase command to every worker and
merges their replies (sums, histograms).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import multiprocessing.connection
import socket
import time
from array import array
from collections import Counter
from collections.abc import Callable
from typing import Any

import uvloop

from benchmarks import stats
from benchmarks.proc import IP_BIND_ADDRESS_NO_PORT, child_setup, self_cpu_seconds

MAX_CLIENTS_PER_WORKER = 15000
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
        buf = self.pending + data if self.pending else data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.pending = buf
            return
        self.pending = buf[end + 2 :]
        worker = self.worker
        latencies = worker.latencies
        count = 0
        for block in buf[:end].split(b"\n\n"):
            i = block.find(b"data: ")
            if i < 0:
                continue  # comments, retry:, id-only blocks
            j = block.find(b" ", i + 6)
            k = block.find(b" ", j + 1)
            seq = int(block[i + 6 : j])
            latencies.append((now - int(block[j + 1 : k])) // 1000)
            count += 1
            if seq > self.last:
                self.last = seq
                self.unique += 1
            else:
                self.dups += 1
            if block.startswith(b"id: "):
                self.last_id = block[4 : block.index(b"\n")]
            if worker.feedback is not None:
                worker.count_seq(seq)
        if count:
            worker.deliveries += count
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


def _error_kind(exc: BaseException | None) -> str:
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
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

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
        self.worker.lost(self.slot, _error_kind(exc))


class Worker:
    """The clients of one process and everything they measured."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.loop = asyncio.get_running_loop()
        self.index: int = spec["index"]
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.path: str = spec["path"]
        self.source: str | None = spec.get("source")
        self.kind: str = spec.get("kind", "h1")
        self.h2_connections: int = spec.get("h2_connections", 1)
        self.trackers = [Tracker(self) for _ in range(spec["clients"])]
        self.latencies: array[int] = array("q")
        self.connect_us: array[int] = array("q")
        self.deliveries = 0
        self.reads = 0
        self.last_rx_ns = 0
        self.live = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.disconnects: Counter[str] = Counter()
        self.h2_protocols: list[Any] = []
        self.feedback: tuple[str, int] | None = None
        if spec.get("feedback_port"):
            self.feedback = ("127.0.0.1", int(spec["feedback_port"]))
            self.feedback_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.feedback_sock.setblocking(False)
        self.seq_counts: dict[int, int] = {}
        self.complete: set[int] = set()
        self.watermark = 0
        self.feedback_due = False

    # -- per-slot events -----------------------------------------------------------

    def established(self, slot: Slot, now: int) -> None:
        slot.established = True
        self.live += 1
        self.connect_us.append((now - slot.started_ns) // 1000)
        if not slot.ready.done():
            slot.ready.set_result(None)

    def fail(self, slot: Slot, kind: str) -> None:
        """The slot never got established (refused, reset, bad status)."""
        if slot.established or slot.ready.done():
            return
        self.failed += 1
        self.errors[kind] += 1
        slot.tracker.dead = True
        slot.ready.set_result(None)

    def lost(self, slot: Slot, kind: str) -> None:
        if slot.closing:
            return  # we closed it on purpose (reconnect, shutdown)
        if not slot.established:
            self.fail(slot, kind)
            return
        slot.tracker.dead = True
        self.disconnects[kind] += 1
        self.live -= 1
        if self.feedback is not None:
            self._recount()

    # -- closed-loop feedback ------------------------------------------------------

    def count_seq(self, seq: int) -> None:
        counts = self.seq_counts
        have = counts.get(seq, 0) + 1
        if have >= self.live:
            counts.pop(seq, None)
            self.complete.add(seq)
            self._advance()
        else:
            counts[seq] = have

    def _recount(self) -> None:
        for seq, have in list(self.seq_counts.items()):
            if have >= self.live:
                del self.seq_counts[seq]
                self.complete.add(seq)
        self._advance()

    def _advance(self) -> None:
        watermark, complete = self.watermark, self.complete
        while watermark + 1 in complete:
            watermark += 1
            complete.discard(watermark)
        if watermark != self.watermark:
            self.watermark = watermark
            if not self.feedback_due:  # one datagram per loop iteration at most
                self.feedback_due = True
                self.loop.call_soon(self._send_feedback)

    def _send_feedback(self) -> None:
        self.feedback_due = False
        assert self.feedback is not None
        with contextlib.suppress(OSError):
            self.feedback_sock.sendto(b"%d %d" % (self.index, self.watermark), self.feedback)

    # -- HTTP/1.1 ------------------------------------------------------------------

    def request(self, last_id: bytes) -> bytes:
        extra = b"Last-Event-ID: %s\r\n" % last_id if last_id else b""
        return b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n%s\r\n" % (
            self.path.encode(),
            self.host.encode(),
            self.port,
            extra,
        )

    async def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.source is not None:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source, 0))
            await self.loop.sock_connect(sock, (self.host, self.port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def connect_h1(
        self, tracker: Tracker, sem: asyncio.Semaphore | None, last_id: bytes = b""
    ) -> None:
        slot = Slot(tracker, self.loop.create_future())
        tracker.pending = b""
        tracker.dead = False
        async with sem if sem is not None else contextlib.nullcontext():
            slot.started_ns = monotonic_ns()
            try:
                sock = await self._open_socket()
                request = self.request(last_id)
                _, protocol = await self.loop.create_connection(
                    lambda: H1Client(self, slot, request), sock=sock
                )
                tracker.protocol = protocol
            except OSError as exc:
                self.fail(slot, _error_kind(exc))
            await slot.ready

    # -- phases --------------------------------------------------------------------

    async def connect(self, args: dict[str, Any]) -> dict[str, Any]:
        started = monotonic_ns()
        timeout = float(args.get("timeout", 60.0))
        if self.kind == "h2":
            coro = self._connect_h2()
        else:
            concurrency = args.get("concurrency")
            sem = asyncio.Semaphore(int(concurrency)) if concurrency else None
            coro = asyncio.gather(*(self.connect_h1(tracker, sem) for tracker in self.trackers))
        try:
            async with asyncio.timeout(timeout):
                await coro
        except TimeoutError:
            self.errors["connect_phase_timeout"] += 1
        return self._connect_report(started)

    async def _connect_h2(self) -> None:
        from benchmarks.h2client import H2Client

        groups = [self.trackers[i :: self.h2_connections] for i in range(self.h2_connections)]
        slots: list[Slot] = []

        async def one(group: list[Tracker]) -> None:
            group_slots = [Slot(tracker, self.loop.create_future()) for tracker in group]
            slots.extend(group_slots)
            try:
                sock = await self._open_socket()
                _, protocol = await self.loop.create_connection(
                    lambda: H2Client(self, group_slots, self.host, self.port, self.path), sock=sock
                )
                self.h2_protocols.append(protocol)
            except OSError as exc:
                for slot in group_slots:
                    self.fail(slot, _error_kind(exc))
            await asyncio.gather(*(slot.ready for slot in group_slots))

        await asyncio.gather(*(one(group) for group in groups if group))

    def _connect_report(self, started: int) -> dict[str, Any]:
        last = max(self.connect_us) if self.connect_us else 0
        report: dict[str, Any] = {
            "established": self.live,
            "failed": self.failed,
            "connect_hist": stats.compact(self.connect_us),
            "all_established_s": round(last / 1e6, 3) if self.live else None,
            "phase_s": round((monotonic_ns() - started) / 1e9, 3),
            "errors": dict(self.errors),
        }
        self.connect_us = array("q")
        return report

    async def reconnect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every live client closes and, at once, reconnects with the id of the
        last event it received as ``Last-Event-ID``."""
        alive = [t for t in self.trackers if not t.dead and t.protocol is not None]
        for tracker in alive:
            protocol = tracker.protocol
            assert protocol is not None
            tracker.protocol = None
            protocol.slot.closing = True
            self.live -= 1
            protocol.close()
        started = monotonic_ns()
        try:
            async with asyncio.timeout(float(args.get("timeout", 60.0))):
                await asyncio.gather(*(self.connect_h1(t, None, t.last_id) for t in alive))
        except TimeoutError:
            self.errors["reconnect_phase_timeout"] += 1
        return self._connect_report(started)

    async def drain(self, args: dict[str, Any]) -> dict[str, Any]:
        """Wait until every live client has ``last_seq`` (or the timeout), then
        report what was received."""
        last_seq = int(args["last_seq"])
        deadline = time.monotonic() + float(args.get("timeout", 10.0))
        while time.monotonic() < deadline:
            if all(t.last >= last_seq or t.dead for t in self.trackers):
                break
            await asyncio.sleep(0.01)
        lost = 0
        lossy = 0
        for tracker in self.trackers:
            missing = max(0, last_seq - tracker.unique) if last_seq else 0
            lost += missing
            lossy += missing > 0
        return {
            "deliveries": self.deliveries,
            "reads": self.reads,
            "lost": lost,
            "clients_with_loss": lossy,
            "dups": sum(t.dups for t in self.trackers),
            "disconnects": dict(self.disconnects),
            "errors": dict(self.errors),
            "live": self.live,
            "latency_hist": stats.compact(self.latencies),
            "last_rx_ns": self.last_rx_ns,
            "cpu_s": self_cpu_seconds(),
        }

    def close_all(self) -> None:
        for tracker in self.trackers:
            if tracker.protocol is not None:
                tracker.protocol.slot.closing = True
                tracker.protocol.close()
                tracker.protocol = None
        for h2 in self.h2_protocols:
            h2.close()


def worker_main(conn: multiprocessing.connection.Connection, spec: dict[str, Any]) -> None:
    """Entry point of one load-generator process (multiprocessing, spawn)."""
    child_setup(spec.get("cpu"))
    uvloop.run(_worker(conn, spec))


async def _worker(conn: multiprocessing.connection.Connection, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(spec)
    done = loop.create_future()
    tasks: set[asyncio.Task[None]] = set()
    phases: dict[str, Callable[[dict[str, Any]], Any]] = {
        "connect": worker.connect,
        "reconnect": worker.reconnect,
        "drain": worker.drain,
    }

    async def run(command: str, args: dict[str, Any]) -> None:
        try:
            result = await phases[command](args)
        except Exception as exc:  # report, do not hang the parent
            result = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send((command, result))

    def on_command() -> None:
        try:
            command, args = conn.recv()
        except EOFError:
            command, args = "close", {}
        if command in phases:
            task = loop.create_task(run(command, args))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif command == "close" and not done.done():
            done.set_result(None)

    loop.add_reader(conn.fileno(), on_command)
    conn.send(("hello", {}))
    await done
    loop.remove_reader(conn.fileno())
    worker.close_all()
    await asyncio.sleep(0.05)  # let the FINs go out
    with contextlib.suppress(OSError, ValueError):
        conn.send(("close", {}))


# -- the parent's side ---------------------------------------------------------------


def _merge(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum numbers, merge histograms and counters, keep the max of times."""
    out: dict[str, Any] = {}
    errors = [reply["error"] for reply in replies if "error" in reply]
    if errors:
        return {"error": "; ".join(errors)}
    for reply in replies:
        for key, value in reply.items():
            if key.endswith("_hist"):
                out[key] = stats.merge([out.get(key, {}), value])
            elif isinstance(value, dict):
                merged = Counter(out.get(key, {}))
                merged.update(value)
                out[key] = dict(merged)
            elif key in ("last_rx_ns", "all_established_s", "phase_s"):
                if value is not None:
                    out[key] = value if key not in out else max(out[key], value)
                else:
                    out.setdefault(key, None)
            elif isinstance(value, int | float):
                out[key] = out.get(key, 0) + value
            else:
                out[key] = value
    return out


class LoadGen:
    """Worker processes with ``clients`` between them, driven phase by phase."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        clients: int,
        workers: int | None = None,
        kind: str = "h1",
        h2_connections: int = 0,
        cpu: int | None = None,
        feedback_port: int | None = None,
    ) -> None:
        if workers is None:
            workers = max(1, math.ceil(clients / MAX_CLIENTS_PER_WORKER))
        if kind == "h2":
            workers = max(1, min(workers, h2_connections))
        self.workers = workers
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(workers):
            share = clients // workers + (index < clients % workers)
            spec = {
                "index": index,
                "host": host,
                "port": port,
                "path": path,
                "clients": share,
                "source": f"127.0.0.{2 + index}",
                "kind": kind,
                "h2_connections": h2_connections // workers + (index < h2_connections % workers),
                "cpu": cpu,
                "feedback_port": feedback_port,
            }
            parent_conn, child_conn = ctx.Pipe()
            process = ctx.Process(
                target=worker_main, args=(child_conn, spec), name=f"bench-loadgen-{index}"
            )
            process.daemon = True
            process.start()
            child_conn.close()
            self.conns.append(parent_conn)
            self.processes.append(process)
        for conn in self.conns:
            self._recv(conn, "hello", 30.0)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    @staticmethod
    def _recv(conn: multiprocessing.connection.Connection, tag: str, timeout: float) -> Any:
        if not conn.poll(timeout):
            raise TimeoutError(f"load generator: no {tag!r} reply in {timeout:.0f}s")
        got, value = conn.recv()
        if got != tag:
            raise RuntimeError(f"load generator: expected {tag!r}, got {got!r}")
        return value

    def _phase(self, command: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        for conn in self.conns:
            conn.send((command, args))
        replies = [self._recv(conn, command, timeout + 30.0) for conn in self.conns]
        merged = _merge(replies)
        if "error" in merged:
            raise RuntimeError(f"load generator {command}: {merged['error']}")
        return merged

    def connect(
        self, *, all_at_once: bool = False, timeout: float = 60.0, concurrency: int = 256
    ) -> dict[str, Any]:
        args = {"timeout": timeout, "concurrency": None if all_at_once else concurrency}
        return self._phase("connect", args, timeout)

    def reconnect(self, *, timeout: float = 60.0) -> dict[str, Any]:
        return self._phase("reconnect", {"timeout": timeout}, timeout)

    def drain(self, last_seq: int, *, timeout: float = 10.0) -> dict[str, Any]:
        return self._phase("drain", {"last_seq": last_seq, "timeout": timeout}, timeout)

    def close(self) -> None:
        for conn, process in zip(self.conns, self.processes, strict=True):
            if process.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    conn.send(("close", {}))
        for process in self.processes:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
        for conn in self.conns:
            conn.close()
