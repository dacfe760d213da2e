"""The downstream side of one SSE response: headers, first bytes, the writer
loop that drains a :class:`Subscriber`, and cleanup.

The writer is the request's own ASGI task. ``http.disconnect`` must be
noticed as it comes (hypercorn makes sends after a disconnect silent no-ops, so
otherwise a vanished client would be noticed only when heartbeats fail): under
hypercorn it closes the subscriber from a callback
(:func:`gateway.hyperglue.on_disconnect`); under any other server a second,
tiny task waits in ``receive()``.
Aborts (slow consumer, send deadline) come from other tasks: they tear the
connection down through :mod:`gateway.hyperglue` and cancel the writer, which
may be blocked in a send that will never complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from gateway import sse
from gateway.asgi import Headers, Receive, Scope, Send
from gateway.hub import CloseReason, Housekeeper, Subscriber
from gateway.hyperglue import Connection, DirectWriter, connection_of, on_disconnect
from gateway.logs import fields
from gateway.metrics import OFF, Metrics

log = logging.getLogger("gateway.stream")

REPLAY_BATCH_BYTES = 64 * 1024


def stream_headers(scope: Scope) -> Headers:
    headers: Headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        # no-transform: intermediaries must not compress (compression buffers).
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-accel-buffering", b"no"),
    ]
    if scope.get("http_version") == "1.1":
        headers.append((b"connection", b"keep-alive"))
    return headers


def first_bytes(retry_min_ms: int, retry_max_ms: int) -> bytes:
    """A comment so that ``open`` fires at once, and a per-connection jittered
    ``retry:`` so that clients dropped together do not return together."""
    return b": ok\n" + retry_frame(retry_min_ms, retry_max_ms)


def retry_frame(retry_min_ms: int, retry_max_ms: int) -> bytes:
    return sse.encode_retry(random.randint(retry_min_ms, retry_max_ms))


@dataclass(slots=True)
class StreamPlan:
    """One stream, prepared (subscribed, replay computed) before it is served."""

    subscriber: Subscriber
    prelude: list[bytes]  # sent before the live frames: first bytes, replay or gap
    on_close: Callable[[], None]  # detaches the subscriber; runs exactly once
    topics: str  # for the log line
    user_timeout_s: float
    extra_headers: Headers = field(default_factory=list)


async def run_stream(
    scope: Scope,
    receive: Receive,
    send: Send,
    plan: StreamPlan,
    *,
    housekeeper: Housekeeper,
    metrics: Metrics | None = None,
) -> None:
    """Serve ``plan.subscriber`` until it is closed, the client leaves or an
    abort. ``plan.on_close`` runs exactly once, synchronously, as soon as the
    stream ends, to detach the subscriber from its channels."""
    subscriber = plan.subscriber
    task = asyncio.current_task()
    assert task is not None
    connection = connection_of(send)
    subscriber.set_abort(partial(_abort, connection, task))
    if connection is not None:
        connection.set_user_timeout(plan.user_timeout_s)
    housekeeper.register(subscriber)
    watcher: asyncio.Task[None] | None = None
    if not on_disconnect(receive, subscriber.client_gone):
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, subscriber))
    started = time.monotonic()
    direct: DirectWriter | None = None
    protocol = f"HTTP/{scope.get('http_version', '?')}"
    lag = metrics.lag if metrics is not None else OFF
    dropped = metrics.dropped if metrics is not None else OFF
    bytes_out = metrics.bytes_out.labels(protocol) if metrics is not None else OFF
    if metrics is not None:
        metrics.connections.labels(protocol).inc()
    try:
        headers = stream_headers(scope) + plan.extra_headers
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        del headers
        if connection is not None:
            direct = connection.direct_writer()
        prelude, plan.prelude = plan.prelude, []  # not kept for the life of the stream
        await _send_prelude(subscriber, send, prelude, direct)
        del prelude
        subscriber.last_write_at = time.monotonic()
        subscriber.direct = direct
        # The writer: whatever is queued, all of it in one send, until closed.
        # Inline, not a helper coroutine: every frame of this task lives as
        # long as the stream, and memory per idle stream is a figure we keep low.
        while True:
            await subscriber.wait()
            if subscriber.queue:
                queued_at = subscriber.queued_at
                data = subscriber.take()
                subscriber.sending_since = time.monotonic()
                await send({"type": "http.response.body", "body": data, "more_body": True})
                now = time.monotonic()
                subscriber.last_write_at = now
                subscriber.sending_since = 0.0
                subscriber.sent_bytes += len(data)
                bytes_out.inc(len(data))
                del data  # not held while the stream idles
                lag.observe(now - queued_at)
                if subscriber.dropped:
                    dropped.inc(subscriber.dropped)
                    subscriber.dropped = 0
            elif subscriber.closed:
                break
        subscriber.direct = None  # nothing may follow the end of the response
        if subscriber.close_reason is not CloseReason.CLIENT_GONE:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not subscriber.closed:
            raise  # not our abort: the server is cancelling us
    finally:
        subscriber.direct = None
        if direct is not None:
            subscriber.sent_bytes += direct.written
            bytes_out.inc(direct.written)
        housekeeper.unregister(subscriber)
        subscriber.close(CloseReason.ERROR)
        plan.on_close()
        if watcher is not None:
            watcher.cancel()
        reason = subscriber.close_reason.value if subscriber.close_reason else "error"
        if metrics is not None:
            metrics.connections.labels(protocol).dec()
            metrics.streams_closed.labels(reason).inc()
        log.info(
            "stream closed",
            extra=fields(
                path=scope["path"],  # never the query: it may carry a token
                topics=plan.topics,
                protocol=protocol,
                reason=reason,
                duration_s=round(time.monotonic() - started, 3),
                events=subscriber.sent_events,
                bytes=subscriber.sent_bytes,
            ),
        )


async def _send_prelude(
    subscriber: Subscriber, send: Send, frames: list[bytes], direct: DirectWriter | None
) -> None:
    """The first bytes and the replay: written at once while the socket takes
    them (in a connect storm, hypercorn's send chain was a tenth of the cost
    of a new stream), else sent through ASGI under the send deadline."""
    for batch in batched(frames, REPLAY_BATCH_BYTES):
        if direct is not None and direct(batch):
            continue  # counted in direct.written
        subscriber.sending_since = time.monotonic()
        await send({"type": "http.response.body", "body": batch, "more_body": True})
        subscriber.sent_bytes += len(batch)
    subscriber.sending_since = 0.0


def batched(frames: list[bytes], limit: int) -> list[bytes]:
    """Frames joined into sends of about ``limit`` bytes: a long replay is not
    one huge write (the send deadline applies to each)."""
    batches: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for frame in frames:
        current.append(frame)
        size += len(frame)
        if size >= limit:
            batches.append(b"".join(current))
            current, size = [], 0
    if current:
        batches.append(b"".join(current))
    return batches


def _abort(connection: Connection | None, task: asyncio.Task[None]) -> None:
    """Tear the connection down and cancel the writer, which may be blocked in
    a send that will never complete."""
    if connection is not None:
        connection.abort()
    task.cancel()


async def _watch_disconnect(receive: Receive, subscriber: Subscriber) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                subscriber.close(CloseReason.CLIENT_GONE)
                return
