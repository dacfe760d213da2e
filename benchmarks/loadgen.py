"""Load generator: SSE clients on raw asyncio protocols over uvloop, in worker processes.

Each worker process (``multiprocessing``, spawn) holds up to ~15,000 clients
from its own source address (127.0.0.2, 127.0.0.3, ...). A client connects
(``loop.sock_connect`` on a socket bound with ``IP_BIND_ADDRESS_NO_PORT``, then
``loop.create_connection(sock=...)``), sends one fixed HTTP/1.1 GET (with
``Last-Event-ID`` on a reconnect), de-chunks the body and splits it on blank
lines. With ``kind="h2"`` a worker instead opens h2c (prior knowledge)
connections with the ``h2`` library and one GET stream per client.

Measured, per client (:mod:`benchmarks.sseclient`, O(1) state each):

- *established*: the first body bytes (the gateway's ``: ok`` comment)
  arrived; connect time is from just before ``connect()`` to then;
- per event: publish -> receive latency, from the timestamp the origin put in
  the data (:mod:`benchmarks.upstream`);
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
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from benchmarks import stats
from benchmarks.proc import IP_BIND_ADDRESS_NO_PORT, child_setup, self_cpu_seconds
from benchmarks.sseclient import READ_BYTES, H1Client, RxClock, Slot, Tracker, error_kind

MAX_CLIENTS_PER_WORKER = 15000
# Deferred parsing runs once no read came for this long (checked this often).
IDLE_FLUSH_NS = 3_000_000
IDLE_CHECK_S = 0.005
monotonic_ns = time.monotonic_ns


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
        self.failed_us: array[int] = array("q")  # connect start -> failure
        self.deliveries = 0
        self.foreign = 0  # events whose data is not "<seq> <ts> <pad>"
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
        # (tracker, body, receive time) not parsed yet; None: parse at once
        # (closed-loop runs need every count as it happens).
        self.deferred: list[tuple[Tracker, bytes, int]] | None = (
            [] if self.feedback is None else None
        )
        self.rx_clock = RxClock()
        self.read_view = memoryview(bytearray(READ_BYTES))  # every client reads into it
        self.read_into = [self.read_view]
        self.loop.call_later(IDLE_CHECK_S, self._tick)
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
        self.failed_us.append((monotonic_ns() - slot.started_ns) // 1000)
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

    # -- deferred parsing ----------------------------------------------------------

    def flush_deferred(self) -> None:
        """Parse every read kept so far, in order, with its receive time."""
        deferred = self.deferred
        if deferred:
            self.deferred = []
            for tracker, data, now in deferred:
                tracker.parse(data, now)

    def _tick(self) -> None:
        if self.deferred and monotonic_ns() - self.last_rx_ns > IDLE_FLUSH_NS:
            self.flush_deferred()
        self.rx_clock.resync()
        self.loop.call_later(IDLE_CHECK_S, self._tick)

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
                client = H1Client(self, slot, self.request(last_id), sock)
                tracker.protocol = client
                client.start()
            except OSError as exc:
                self.fail(slot, error_kind(exc))
            await slot.ready

    # -- phases --------------------------------------------------------------------

    async def connect(self, args: dict[str, Any]) -> dict[str, Any]:
        started = monotonic_ns()
        timeout = float(args.get("timeout", 60.0))
        coro: Awaitable[Any]
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
                    self.fail(slot, error_kind(exc))
            await asyncio.gather(*(slot.ready for slot in group_slots))

        await asyncio.gather(*(one(group) for group in groups if group))

    def _connect_report(self, started: int) -> dict[str, Any]:
        last = max(self.connect_us) if self.connect_us else 0
        report: dict[str, Any] = {
            "established": self.live,
            "failed": self.failed,
            "connect_hist": stats.compact(self.connect_us),
            "failed_hist": stats.compact(self.failed_us),
            "all_established_s": round(last / 1e6, 3) if self.live else None,
            "phase_s": round((monotonic_ns() - started) / 1e9, 3),
            "errors": dict(self.errors),
        }
        self.connect_us = array("q")
        self.failed_us = array("q")
        self.failed = 0
        self.errors = Counter()
        return report

    async def reconnect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every live client closes and, at once, reconnects with the id of the
        last event it received as ``Last-Event-ID``."""
        self.flush_deferred()  # every tracker's last id
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
            self.flush_deferred()
            if all(t.last >= last_seq or t.dead for t in self.trackers):
                break
            await asyncio.sleep(0.01)
        self.flush_deferred()
        lost = tail = lossy = 0
        for tracker in self.trackers:
            missing = max(0, last_seq - tracker.unique)
            lost += missing
            # Events after the last one received: not there yet when the drain
            # gave up (late, or never coming). The rest are gaps: skipped for good.
            tail += min(missing, last_seq - tracker.last)
            lossy += missing > 0
        return {
            "deliveries": self.deliveries - self.foreign,
            "foreign_events": self.foreign,
            "reads": self.reads,
            "lost": lost,
            "lost_tail": tail,
            "drain_timed_out": int(time.monotonic() >= deadline),
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
