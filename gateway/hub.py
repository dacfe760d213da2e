"""Subscribers: the per-stream side of fan-out.

The hot path is :meth:`gateway.channel.Channel.publish`: each event is
encoded to ``bytes`` once and the same object is offered to every
:class:`Subscriber` (the events of one upstream read together, joined once:
``offer_many``). ``offer`` never awaits and never blocks: while nothing is
queued and the connection's socket takes it, the frame is written at once
(the fast path, see :mod:`gateway.hyperglue.connection`); otherwise it
goes to a bounded per-subscriber queue and wakes that subscriber's writer,
which drains everything queued in one send. When a queue is full the topic's
slow-consumer policy decides:

- ``disconnect`` (default): the subscriber is aborted; its browser reconnects
  with ``Last-Event-ID`` and resumes from the replay ring.
- ``drop_oldest``: the oldest queued events make room for the new one.
- ``latest``: the queue holds only the newest event (conflation, for tickers).

A writer blocked in a send for longer than the send deadline is aborted by the
:class:`Housekeeper`, which also sends heartbeat comments to idle subscribers.
Nothing here knows about HTTP: a subscriber is given an ``abort`` callback by
whoever owns its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from gateway import sse

HEARTBEAT: Final = sse.encode_comment()


class Policy(Enum):
    DISCONNECT = "disconnect"
    DROP_OLDEST = "drop_oldest"
    LATEST = "latest"


class CloseReason(Enum):
    CLIENT_GONE = "client_gone"
    SLOW_CONSUMER = "slow_consumer"
    SEND_TIMEOUT = "send_timeout"
    TOPIC_CLOSED = "topic_closed"
    CREDENTIALS_EXPIRED = "credentials_expired"
    SHUTDOWN = "shutdown"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class QueueLimits:
    max_events: int
    max_bytes: int
    policy: Policy


class Subscriber:
    """One downstream stream: a bounded queue of encoded frames and the state its
    writer and the housekeeper share. Created by the stream handler, attached to
    one or more channels."""

    __slots__ = (
        "_abort",
        "_waiter",
        "beat_interval_s",
        "close_reason",
        "closed",
        "direct",
        "dropped",
        "last_write_at",
        "limits",
        "queue",
        "queued_at",
        "queued_bytes",
        "sending_since",
        "sent_bytes",
        "sent_events",
        "swept_events",
    )

    def __init__(self, limits: QueueLimits, *, beat_interval_s: float) -> None:
        self.limits = limits
        # A list, not a deque: an empty deque is 760 bytes, an empty list 56,
        # and the queue is empty nearly always (the fast path bypasses it).
        self.queue: list[bytes] = []
        self.queued_bytes = 0
        self.closed = False
        self.close_reason: CloseReason | None = None
        self.dropped = 0
        self.sent_events = 0
        self.swept_events = 0  # sent_events at the housekeeper's last sweep
        self.sent_bytes = 0
        self.beat_interval_s = beat_interval_s
        self.last_write_at = time.monotonic()
        self.sending_since = 0.0
        self.queued_at = 0.0  # when the oldest queued frame was queued
        self._waiter: asyncio.Future[None] | None = None
        self._abort: Callable[[], None] | None = None
        # Set by the stream while its connection can take a frame written at
        # once, bypassing the queue and the writer (see gateway.hyperglue).
        self.direct: Callable[[bytes], bool] | None = None

    def set_abort(self, abort: Callable[[], None]) -> None:
        """How to tear the connection down when the subscriber must go at once
        (slow consumer, send deadline): the owner of the connection knows."""
        self._abort = abort

    def offer(self, frame: bytes) -> None:
        """Write one encoded frame at once if the connection takes it, else queue
        it. Never awaits; applies the slow-consumer policy."""
        if self.closed:
            return
        # The fast path: nothing waits before this frame and no send is in
        # flight, so writing now keeps the order; the writer task stays asleep.
        direct = self.direct
        if direct is not None and not self.queue and not self.sending_since and direct(frame):
            self.sent_events += 1
            return
        self._enqueue(frame)

    def offer_many(self, joined: bytes, frames: list[bytes]) -> None:
        """Several frames in order, ``joined`` being their concatenation: one
        write on the fast path; queued one by one otherwise, so that the
        queue's limits and policy count events, not batches."""
        if self.closed:
            return
        direct = self.direct
        if direct is not None and not self.queue and not self.sending_since and direct(joined):
            self.sent_events += len(frames)
            return
        for frame in frames:
            if self.closed:  # the policy disconnected it
                return
            self._enqueue(frame)

    def _enqueue(self, frame: bytes) -> None:
        queue = self.queue
        size = len(frame)
        limits = self.limits
        if limits.policy is Policy.LATEST:
            if queue:  # conflate: only the newest event waits
                self.dropped += len(queue)
                queue.clear()
                self.queued_bytes = 0
        elif len(queue) >= limits.max_events or self.queued_bytes + size > limits.max_bytes:
            if limits.policy is Policy.DISCONNECT:
                self.abort(CloseReason.SLOW_CONSUMER)
                return
            while queue and (
                len(queue) >= limits.max_events or self.queued_bytes + size > limits.max_bytes
            ):
                self.queued_bytes -= len(queue.pop(0))
                self.dropped += 1
        if not queue:
            self.queued_at = time.monotonic()
        queue.append(frame)
        self.queued_bytes += size
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def offer_heartbeat(self) -> None:
        """A comment for an idle stream; skipped when anything is already queued."""
        if not self.queue and not self.sending_since and not self.closed:
            self.queued_at = time.monotonic()
            self.queue.append(HEARTBEAT)
            self.queued_bytes += len(HEARTBEAT)
            self._wake()

    def take(self) -> bytes:
        """Everything queued, as one buffer for one send."""
        queue = self.queue
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        # A heartbeat is only ever queued alone, first; it is not an event.
        self.sent_events += len(queue) - (queue[0] is HEARTBEAT)
        queue.clear()
        self.queued_bytes = 0
        return data

    async def wait(self) -> None:
        """Until something is queued or the subscriber is closed."""
        if self.queue or self.closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        await waiter

    def close(self, reason: CloseReason) -> None:
        """End the stream after what is queued has been written."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._wake()

    def client_gone(self) -> None:
        self.close(CloseReason.CLIENT_GONE)

    def abort(self, reason: CloseReason) -> None:
        """End the stream now, dropping what is queued (the client resumes with
        ``Last-Event-ID``)."""
        if self.closed:
            return
        self.queue.clear()
        self.queued_bytes = 0
        self.close(reason)
        if self._abort is not None:
            self._abort()


class Housekeeper:
    """One periodic sweep over all live subscribers of a worker: heartbeats for
    idle streams and the send deadline. One timer for everybody is cheaper than
    a timer per stream, and the sweep is O(subscribers) once per tick."""

    def __init__(
        self,
        *,
        send_timeout_s: float,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.send_timeout_s = send_timeout_s
        self.tick_s = tick_s
        self.clock = clock
        self.subscribers: dict[Subscriber, None] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self._task: asyncio.Task[None] | None = None

    def register(self, subscriber: Subscriber) -> None:
        self.subscribers[subscriber] = None
        self._empty.clear()

    def unregister(self, subscriber: Subscriber) -> None:
        self.subscribers.pop(subscriber, None)
        if not self.subscribers:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Until no stream is left (a drain waits for this)."""
        await self._empty.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self.sweep()

    def sweep(self) -> None:
        now = self.clock()
        deadline = now - self.send_timeout_s
        for subscriber in list(self.subscribers):
            sending_since = subscriber.sending_since
            if sending_since and sending_since < deadline:
                subscriber.abort(CloseReason.SEND_TIMEOUT)
            elif subscriber.sent_events != subscriber.swept_events:
                # Written since the last sweep. Fast-path writes do not stamp
                # last_write_at (a clock read per delivery); this does, once a tick.
                subscriber.swept_events = subscriber.sent_events
                subscriber.last_write_at = now
            elif now - subscriber.last_write_at >= subscriber.beat_interval_s:
                subscriber.offer_heartbeat()


def jittered(value: float, spread: float = 0.2) -> float:
    """``value`` moved by up to ±``spread``/2, so that timers set at the same
    moment (a restart, a reconnect storm) do not stay in lockstep."""
    return value * (1.0 - spread / 2 + random.random() * spread)
