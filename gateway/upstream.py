"""One upstream SSE subscription per topic instance.

The subscription connects with httpx (HTTP/1.1 by default: DESIGN.md §3 notes
events lost by httpx's HTTP/2 client), parses the stream with
:class:`gateway.sse.SSEParser` and publishes into its :class:`Channel`. It
never ends by itself: every failure (refused, non-200, wrong content type,
reset, a stall with no bytes at all for ``stall_timeout_s``, a clean end of
stream) is logged, counted and retried after a jittered exponential backoff
whose base is the upstream's own ``retry:`` within the configured bounds. The
reconnect carries ``Last-Event-ID``. A partial event cut by a reset is never
published: the parser only dispatches on a blank line and a new connection
gets a new parser. Subscribers stay connected meanwhile; their heartbeats come
from the housekeeper, not from upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

import httpx

from gateway import sse
from gateway.channel import Channel
from gateway.logs import fields, redact_url
from gateway.metrics import Metrics

log = logging.getLogger("gateway.upstream")

# An upstream that stays connected this long has proven itself: the next
# failure starts the backoff from the bottom again.
HEALTHY_AFTER_S = 10.0


class UpstreamState(Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class UpstreamFailure(Exception):
    """One failed or ended connection attempt; ``kind`` is the metric label."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    connect_timeout_s: float
    stall_timeout_s: float
    backoff_initial_ms: int
    backoff_max_ms: int
    max_line_bytes: int
    max_event_bytes: int


@dataclass(slots=True)
class UpstreamStats:
    connects: int = 0
    events: int = 0
    discarded: int = 0
    failures: Counter[str] = field(default_factory=Counter)


class Backoff:
    """Exponential backoff with "equal jitter": each delay is drawn from the
    upper half of the current ceiling, so a fleet of gateways that lost the same
    upstream at the same moment does not return in lockstep."""

    def __init__(self, initial_ms: int, max_ms: int) -> None:
        self.initial_ms = initial_ms
        self.max_ms = max_ms
        self.attempt = 0
        self.retry_ms: int | None = None

    def reset(self) -> None:
        self.attempt = 0

    def next_delay_s(self) -> float:
        base_ms = self.initial_ms if self.retry_ms is None else self.retry_ms
        base_ms = min(max(base_ms, self.initial_ms), self.max_ms)
        ceiling_ms = float(min(self.max_ms, base_ms << min(self.attempt, 30)))
        self.attempt += 1
        return ceiling_ms * random.uniform(0.5, 1.0) / 1000


class UpstreamSubscription:
    def __init__(
        self,
        *,
        channel: Channel,
        url: str,
        headers: dict[str, str],
        settings: UpstreamSettings,
        client: httpx.AsyncClient,
        metrics: Metrics | None = None,
    ) -> None:
        self.channel = channel
        self.metrics = metrics
        self.url = url
        self.headers = headers
        self.settings = settings
        self.client = client
        self.state = UpstreamState.STOPPED
        self.stats = UpstreamStats()
        self.backoff = Backoff(settings.backoff_initial_ms, settings.backoff_max_ms)
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pending: list[sse.Event | sse.IdUpdate] = []
        self._flush_scheduled = False
        self._log_fields = {"topic": channel.name, "path": channel.path, "url": redact_url(url)}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_state(UpstreamState.STOPPED)

    def _set_state(self, state: UpstreamState, **extra: object) -> None:
        if state is self.state:
            return
        if self.metrics is not None:
            gauge = self.metrics.upstream_instances
            if self.state is not UpstreamState.STOPPED:
                gauge.labels(self.channel.name, self.state.value).dec()
            if state is not UpstreamState.STOPPED:
                gauge.labels(self.channel.name, state.value).inc()
        self.state = state
        if state is UpstreamState.OPEN:
            self.connected.set()
        else:
            self.connected.clear()
        log.info("upstream %s", state.value, extra=fields(**self._log_fields, **extra))

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            self._set_state(UpstreamState.CONNECTING)
            try:
                await self._stream_once()
                failure = UpstreamFailure("eof", "upstream ended the stream")
            except UpstreamFailure as error:
                failure = error
            except httpx.TimeoutException as error:
                kind = "stall" if isinstance(error, httpx.ReadTimeout) else "timeout"
                failure = UpstreamFailure(kind, type(error).__name__)
            except httpx.ConnectError as error:
                failure = UpstreamFailure("connect", str(error) or type(error).__name__)
            except (httpx.HTTPError, OSError) as error:
                failure = UpstreamFailure("reset", str(error) or type(error).__name__)
            except Exception as error:  # a bug must not end the subscription for good
                log.exception("upstream subscription error", extra=fields(**self._log_fields))
                failure = UpstreamFailure("error", type(error).__name__)
            self.stats.failures[failure.kind] += 1
            if self.metrics is not None:
                self.metrics.upstream_failures.labels(self.channel.name, failure.kind).inc()
            if time.monotonic() - started >= HEALTHY_AFTER_S:
                self.backoff.reset()
            delay = self.backoff.next_delay_s()
            self._set_state(
                UpstreamState.BACKOFF,
                reason=failure.kind,
                detail=failure.detail,
                retry_in_s=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _stream_once(self) -> None:
        settings = self.settings
        fixed = {
            "accept": "text/event-stream",
            "cache-control": "no-cache",
            "accept-encoding": "identity",
            **self.headers,
        }
        last_id = self.channel.last_event_id
        if last_id:
            fixed["last-event-id"] = last_id
        # Any Unicode is a valid event id (and header values come from YAML):
        # sent as UTF-8, as browsers send Last-Event-ID.
        headers = [(name.encode(), value.encode()) for name, value in fixed.items()]
        timeout = httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.stall_timeout_s,
            write=settings.connect_timeout_s,
            pool=settings.connect_timeout_s,
        )
        async with self.client.stream("GET", self.url, headers=headers, timeout=timeout) as reply:
            if reply.status_code != 200:
                raise UpstreamFailure("status", f"HTTP {reply.status_code}")
            media_type = reply.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "text/event-stream":
                raise UpstreamFailure("content_type", f"content-type {media_type or 'missing'!r}")
            self.stats.connects += 1
            self._set_state(UpstreamState.OPEN)
            parser = sse.SSEParser(
                max_line_bytes=settings.max_line_bytes,
                max_event_bytes=settings.max_event_bytes,
                last_event_id=last_id,
            )
            try:
                async for chunk in reply.aiter_bytes():
                    self._dispatch(parser.feed(chunk))
            finally:
                self._flush()  # before the next attempt reads last_event_id

    def _dispatch(self, items: list[sse.Item]) -> None:
        """Events go to the batch :meth:`_flush` publishes; the rest is handled now."""
        pending = self._pending
        events = 0
        for item in items:
            if isinstance(item, sse.Event):
                pending.append(item)
                events += 1
            elif isinstance(item, sse.IdUpdate):
                pending.append(item)
            else:
                self._handle(item)
        if events:
            self.stats.events += events
            self.backoff.reset()
        if pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Publish everything parsed since the last flush, as one batch.

        httpx yields an HTTP/1.1 chunked body one chunk at a time, and an
        upstream usually writes one event per chunk; but the chunks already
        read from the socket come out without suspending this task. This runs
        at the next turn of the event loop, when the task waits for the
        network again: the batch is everything one socket read brought. A
        gateway that falls behind reads more per socket read, so it then
        writes several events to each subscriber at once (see
        :meth:`gateway.channel.Channel.publish`) and its cost per event drops.
        """
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if pending:
            self.channel.publish(pending)

    def _handle(self, item: sse.Retry | sse.Discarded) -> None:
        if isinstance(item, sse.Retry):
            self.backoff.retry_ms = item.ms
        else:
            self.stats.discarded += 1
            if self.metrics is not None:
                self.metrics.upstream_discarded.labels(self.channel.name).inc()
            log.warning(
                "upstream event discarded",
                extra=fields(**self._log_fields, reason=item.reason, size=item.size),
            )
