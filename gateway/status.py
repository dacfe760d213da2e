"""The status page's data: a snapshot of every live topic instance, pushed
once a second over SSE by the gateway itself (``/status`` renders it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from gateway import sse
from gateway.hub import Subscriber
from gateway.logs import redact_url
from gateway.registry import Registry

STATUS_EVENT = "status"


class StatusFeed:
    """Snapshots for status-page streams. It runs only while someone watches."""

    def __init__(self, registry: Registry, *, interval_s: float = 1.0) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.subscribers: dict[Subscriber, None] = {}
        self.started = time.time()
        self._previous: dict[str, tuple[float, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def attach(self, subscriber: Subscriber) -> list[bytes]:
        self.subscribers[subscriber] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return [self.frame()]

    def detach(self, subscriber: Subscriber) -> None:
        self.subscribers.pop(subscriber, None)
        if not self.subscribers and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(self.interval_s)
                frame = self.frame()
                for subscriber in self.subscribers:
                    subscriber.offer(frame)

    def frame(self) -> bytes:
        return sse.encode_event(json.dumps(self.snapshot()), type=STATUS_EVENT)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        topics = []
        for path, live in sorted(self.registry.live.items()):
            channel, upstream = live.channel, live.upstream
            before = self._previous.get(path)
            rate = 0.0
            if before is not None and now > before[0]:
                rate = (channel.published - before[1]) / (now - before[0])
            self._previous[path] = (now, channel.published)
            topics.append(
                {
                    "path": path,
                    "topic": channel.name,
                    "subscribers": channel.subscriber_count,
                    "events": channel.published,
                    "rate_per_s": round(rate, 2),
                    "replay_held": len(channel.ring),
                    "lag_ms": round(channel.lag_s * 1000, 2),
                    "upstream": {
                        "url": redact_url(upstream.url),
                        "state": upstream.state.value,
                        "connects": upstream.stats.connects,
                        "failures": dict(upstream.stats.failures),
                        "last_event_id": channel.last_event_id[:64],
                    },
                }
            )
        for path in set(self._previous) - set(self.registry.live):
            del self._previous[path]
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "topic_instances": len(topics),
            "subscribers": sum(topic["subscribers"] for topic in topics),
            "topics": topics,
        }
