"""The SSE origin that the benchmarks drive, in its own process.

It serves ``GET <any path>`` as ``text/event-stream`` (HTTP/1.1, chunked, or
close-delimited with ``framing="close"``) and publishes numbered events:

    id: <seq>
    data: <seq> <CLOCK_MONOTONIC ns at publish> <padding>

``seq`` counts from 1 per origin. Every event is written to every open stream
(through the gateway that is one connection; in ``backend_load``'s direct run it
is every client). In ``post`` mode it is instead the publisher of an nchan peer:
each event is one HTTP POST of the same ``data`` payload (pipelined on one
keep-alive connection).

Publishing runs either at a fixed rate (open loop: event ``i`` leaves at
``start + i / rate`` whatever the downstream does; ``rate x duration``
events in all) or, for ``rate=None``
("max"), closed loop: at most ``window`` events may be published and not yet
received by *every* client. Load-generator workers report, over UDP, the
highest ``seq`` that all their clients have (their watermark); the origin
publishes a burst whenever the window opens. That is "as fast as the
downstream takes" without letting a backlog build up in socket buffers (which
would turn into slow-consumer disconnects, not throughput). If no watermark
moves for ``stall_s`` the window is forced open and the stall is counted.

Measured here, and reported by :meth:`OriginHandle.stats`: connections
accepted (total, and streams open), requests served, the origin's own CPU
time (``getrusage``), bytes written; per publish run: events, achieved rate,
window stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import time
from dataclasses import dataclass, field
from typing import Any, cast

import uvloop

from benchmarks.proc import child_setup, listen_socket, self_cpu_seconds

RESPONSE_HEAD = {
    "chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    "close": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
    ),
}
FIRST_COMMENT = b": origin\n\n"
DEFAULT_PAD = 48  # bytes of padding: a ~90-byte event, typical of a small JSON update


def event_data(seq: int, ts_ns: int, pad: bytes) -> bytes:
    return b"%d %d %s" % (seq, ts_ns, pad)


def event_block(seq: int, ts_ns: int, pad: bytes) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (seq, event_data(seq, ts_ns, pad))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class OriginState:
    framing: str
    accepted: int = 0
    requests: int = 0
    bytes_written: int = 0
    streams: set[asyncio.Transport] = field(default_factory=set)
    joined: asyncio.Event = field(default_factory=asyncio.Event)  # a stream was added


class OriginProtocol(asyncio.Protocol):
    """One downstream connection: read the request head, answer, then stream."""

    def __init__(self, state: OriginState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.state.accepted += 1

    def data_received(self, data: bytes) -> None:
        if self.streaming or self.transport is None:
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > 16384:
                self.transport.abort()
            return
        self.streaming = True
        self.state.requests += 1
        first = RESPONSE_HEAD[self.state.framing]
        body = FIRST_COMMENT if self.state.framing == "close" else chunk(FIRST_COMMENT)
        self.transport.write(first + body)
        self.state.streams.add(self.transport)
        self.state.joined.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.state.streams.discard(self.transport)


class SSESink:
    """Writes a burst of events to every open stream, framed once."""

    def __init__(self, state: OriginState, pad: bytes) -> None:
        self.state = state
        self.pad = pad

    def emit(self, events: list[tuple[int, int]]) -> None:
        pad = self.pad
        blocks = b"".join([event_block(seq, ts, pad) for seq, ts in events])
        data = blocks if self.state.framing == "close" else chunk(blocks)
        streams = self.state.streams
        for transport in streams:
            transport.write(data)
        self.state.bytes_written += len(data) * len(streams)


class PostSink(asyncio.Protocol):
    """The nchan publisher: one keep-alive connection, one pipelined POST per event."""

    def __init__(self, host: str, port: int, path: str, pad: bytes) -> None:
        self.host, self.port, self.path, self.pad = host, port, path, pad
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.responses = 0
        self.errors = 0
        self.dropped = 0
        self.connects = 0
        self.statuses: dict[int, int] = {}

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, self.host, self.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connects += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.errors += 1

    def emit(self, events: list[tuple[int, int]]) -> None:
        if self.transport is None:
            self.dropped += len(events)
            return
        requests = []
        for seq, ts in events:
            body = event_data(seq, ts, self.pad)
            requests.append(
                b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n%s"
                % (self.path.encode(), self.host.encode(), self.port, len(body), body)
            )
        self.transport.write(b"".join(requests))

    def data_received(self, data: bytes) -> None:
        # Count responses and their status; bodies are skipped (nchan's are small).
        buf = self.buffer + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(buf) < end + 4 + length:
                break
            status = int(head.split(" ", 2)[1])
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.responses += 1
            if status >= 400:
                self.errors += 1
            buf = buf[end + 4 + length :]
        self.buffer = buf


class Publisher:
    """Numbered events at a fixed rate, or closed loop within a window."""

    def __init__(self, sink: SSESink | PostSink) -> None:
        self.sink = sink
        self.seq = 0
        self.watermarks: dict[int, int] = {}
        self.forced = 0
        self.progress = asyncio.Event()
        self.stopping = False

    def on_feedback(self, worker: int, watermark: int) -> None:
        if watermark > self.watermarks.get(worker, 0):
            self.watermarks[worker] = watermark
            self.progress.set()

    def _watermark(self) -> int:
        low = min(self.watermarks.values()) if self.watermarks else self.seq
        return max(low, self.forced)

    def _emit(self, count: int) -> None:
        now = time.monotonic_ns
        events = []
        for _ in range(count):
            self.seq += 1
            events.append((self.seq, now()))
        self.sink.emit(events)

    async def run(
        self,
        *,
        rate: float | None,
        duration_s: float | None,
        count: int | None,
        window: int,
        workers: int,
        stall_s: float,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.stopping = False
        first = self.seq + 1
        self.watermarks = {worker: self.seq for worker in range(workers)}
        stalls = 0
        started = loop.time()
        end = started + duration_s if duration_s is not None else float("inf")
        if rate is not None and count is None and duration_s is not None:
            # A fixed rate publishes exactly rate x duration events, late if the
            # origin's core is busy (the achieved rate says so), within a bound.
            count = round(rate * duration_s)
            end = started + 3 * duration_s + 30.0
        limit = self.seq + count if count is not None else None
        started_ns = time.monotonic_ns()
        while not self.stopping and loop.time() < end and (limit is None or self.seq < limit):
            room = limit - self.seq if limit is not None else window
            if rate is not None:
                due = started + (self.seq + 1 - first) / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(min(delay, end - loop.time()))
                    continue
                self._emit(1)
                continue
            inflight = self.seq - self._watermark()
            if inflight < window:
                self._emit(min(window - inflight, room))
                continue
            self.progress.clear()
            try:
                async with asyncio.timeout(min(stall_s, max(0.0, end - loop.time()))):
                    await self.progress.wait()
            except TimeoutError:
                if loop.time() < end:
                    # Nobody's watermark moved: a client was lost or is stuck. Open
                    # the window rather than hang; the loss shows in the results.
                    stalls += 1
                    self.forced = self.seq
        elapsed_ns = time.monotonic_ns() - started_ns
        published = self.seq - first + 1
        return {
            "first_seq": first,
            "last_seq": self.seq,
            "published": published,
            "publish_s": round(elapsed_ns / 1e9, 3),
            "publish_rate": round(published / (elapsed_ns / 1e9), 1) if elapsed_ns else 0.0,
            "window_stalls": stalls,
            "started_ns": started_ns,
        }


class FeedbackProtocol(asyncio.DatagramProtocol):
    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        worker, _, watermark = data.partition(b" ")
        with contextlib.suppress(ValueError):
            self.publisher.on_feedback(int(worker), int(watermark))


def origin_main(conn: multiprocessing.connection.Connection, spec: dict[str, Any]) -> None:
    """Entry point of the origin process (multiprocessing, spawn)."""
    child_setup(spec.get("cpu"))
    uvloop.run(_origin(conn, spec))


async def _origin(conn: multiprocessing.connection.Connection, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    pad = b"x" * int(spec.get("pad", DEFAULT_PAD))
    state = OriginState(framing=spec.get("framing", "chunked"))
    sock = listen_socket()
    server = await loop.create_server(lambda: OriginProtocol(state), sock=sock, backlog=4096)
    sink: SSESink | PostSink
    if spec.get("post") is not None:
        host, port, path = spec["post"]
        sink = PostSink(host, port, path, pad)
        await sink.connect()
    else:
        sink = SSESink(state, pad)
    publisher = Publisher(sink)
    udp, _ = await loop.create_datagram_endpoint(
        lambda: FeedbackProtocol(publisher), local_addr=("127.0.0.1", 0)
    )
    conn.send(
        (
            "hello",
            {"port": sock.getsockname()[1], "feedback_port": udp.get_extra_info("sockname")[1]},
        )
    )
    done = loop.create_future()
    tasks: set[asyncio.Task[None]] = set()

    def stats() -> dict[str, Any]:
        out: dict[str, Any] = {
            "connections_total": state.accepted,
            "requests": state.requests,
            "streams_open": len(state.streams),
            "cpu_s": self_cpu_seconds(),
            "bytes_written": state.bytes_written,
        }
        if isinstance(sink, PostSink):
            out.update(
                connections_total=sink.connects,
                post_responses=sink.responses,
                post_errors=sink.errors,
                post_dropped=sink.dropped,
                post_statuses=sink.statuses,
            )
        return out

    async def publish(args: dict[str, Any]) -> None:
        result = await publisher.run(**args)
        conn.send(("published", result))

    async def wait_streams(n: int, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(state.streams) < n:
                    state.joined.clear()
                    await state.joined.wait()
        conn.send(("streams", len(state.streams)))

    def on_command() -> None:
        try:
            command, args = conn.recv()
        except EOFError:
            command, args = "exit", {}
        if command == "publish":
            task = loop.create_task(publish(args))
        elif command == "wait_streams":
            task = loop.create_task(wait_streams(args["n"], args["timeout"]))
        else:
            if command == "stop_publish":
                publisher.stopping = True
                publisher.progress.set()
            elif command == "stats":
                conn.send(("stats", stats()))
            elif command == "exit" and not done.done():
                done.set_result(None)
            return
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_reader(conn.fileno(), on_command)
    await done
    loop.remove_reader(conn.fileno())
    server.close()
    for transport in list(state.streams):
        transport.abort()
    udp.close()


class OriginHandle:
    """The parent's side of the origin process."""

    def __init__(
        self,
        *,
        cpu: int | None = None,
        framing: str = "chunked",
        pad: int = DEFAULT_PAD,
        post: tuple[str, int, str] | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        spec = {"cpu": cpu, "framing": framing, "pad": pad, "post": post}
        self.process = ctx.Process(
            target=origin_main, args=(child_conn, spec), name="bench-origin", daemon=True
        )
        self.process.start()
        child_conn.close()
        self._stash: dict[str, Any] = {}
        hello = self._recv("hello", 20.0)
        self.port: int = hello["port"]
        self.feedback_port: int = hello["feedback_port"]

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def _recv(self, tag: str, timeout: float) -> Any:
        if tag in self._stash:
            return self._stash.pop(tag)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(left):
                raise TimeoutError(f"origin: no {tag!r} reply in {timeout}s")
            got, value = self.conn.recv()
            if got == tag:
                return value
            self._stash[got] = value

    def start_publish(
        self,
        *,
        rate: float | None,
        duration_s: float | None = None,
        count: int | None = None,
        window: int = 1,
        workers: int = 0,
        stall_s: float = 2.0,
    ) -> None:
        args = {
            "rate": rate,
            "duration_s": duration_s,
            "count": count,
            "window": window,
            "workers": workers,
            "stall_s": stall_s,
        }
        self.conn.send(("publish", args))

    def wait_published(self, timeout: float) -> dict[str, Any]:
        result: dict[str, Any] = self._recv("published", timeout)
        return result

    def stop_publish(self, timeout: float = 10.0) -> dict[str, Any]:
        self.conn.send(("stop_publish", {}))
        return self.wait_published(timeout)

    def stats(self) -> dict[str, Any]:
        self.conn.send(("stats", {}))
        result: dict[str, Any] = self._recv("stats", 10.0)
        return result

    def wait_streams(self, n: int, timeout: float = 10.0) -> int:
        self.conn.send(("wait_streams", {"n": n, "timeout": timeout}))
        count: int = self._recv("streams", timeout + 5.0)
        return count

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("exit", {}))
            self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.conn.close()
