"""Live topic instances: one :class:`Channel` and one upstream subscription each.

Reference counted (the Pushpin shape): the first subscriber of an instance
starts its upstream subscription, the last one to leave starts a linger timer,
and if nobody has come back when it fires the upstream connection is closed.
Eager topics are started at startup and never lingered away.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import httpx

from gateway.channel import Channel
from gateway.config import GatewayConfig, TopicConfig
from gateway.errors import HTTPError
from gateway.hub import CloseReason, Policy, QueueLimits
from gateway.logs import fields
from gateway.metrics import Metrics
from gateway.ring import ReplayLimits, Sequence
from gateway.topics import TopicInstance, TopicRouter
from gateway.upstream import UpstreamSettings, UpstreamSubscription

log = logging.getLogger("gateway.registry")


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """A topic's effective settings: its own keys over the global sections."""

    queue: QueueLimits
    replay: ReplayLimits
    upstream: UpstreamSettings
    headers: dict[str, str]
    linger_s: float
    eager: bool


def topic_settings(config: GatewayConfig, topic: TopicConfig) -> TopicSettings:
    stream, upstream = config.stream, config.upstream
    queue = QueueLimits(
        max_events=topic.queue_max_events or stream.queue_max_events,
        max_bytes=topic.queue_max_bytes or stream.queue_max_bytes,
        policy=Policy(topic.policy or stream.policy),
    )
    settings = UpstreamSettings(
        connect_timeout_s=upstream.connect_timeout_s,
        stall_timeout_s=topic.stall_timeout_s or upstream.stall_timeout_s,
        backoff_initial_ms=upstream.backoff_initial_ms,
        backoff_max_ms=upstream.backoff_max_ms,
        max_line_bytes=upstream.max_line_bytes,
        max_event_bytes=upstream.max_event_bytes,
    )
    replay_config = topic.replay or config.replay
    replay = ReplayLimits(
        max_events=replay_config.max_events,
        max_bytes=replay_config.max_bytes,
        max_age_s=replay_config.max_age_s,
    )
    headers = {**upstream.headers, **topic.headers}
    return TopicSettings(queue, replay, settings, headers, topic.linger_s, topic.eager)


@dataclass(slots=True)
class LiveTopic:
    instance: TopicInstance
    settings: TopicSettings
    channel: Channel
    upstream: UpstreamSubscription
    refs: int = 0
    held: bool = False  # an eager topic holds one reference of its own
    linger: asyncio.TimerHandle | None = field(default=None, repr=False)


class Registry:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        client: httpx.AsyncClient,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.router = TopicRouter(config.topics)
        self.client = client
        self.settings = {topic.name: topic_settings(config, topic) for topic in config.topics}
        self.live: dict[str, LiveTopic] = {}
        self.sequence = Sequence()
        self._stopping: set[asyncio.Task[None]] = set()

    def start_eager(self) -> None:
        for topic in self.config.topics:
            if topic.eager:
                live = self._live(self.router.resolve(topic.path))
                if not live.held:
                    live.held = True
                    live.refs += 1

    def acquire(self, instance: TopicInstance) -> LiveTopic:
        live = self._live(instance)
        live.refs += 1
        if live.linger is not None:
            live.linger.cancel()
            live.linger = None
        return live

    def release(self, live: LiveTopic) -> None:
        live.refs -= 1
        if live.refs > 0 or self.live.get(live.instance.path) is not live:
            return
        loop = asyncio.get_running_loop()
        live.linger = loop.call_later(live.settings.linger_s, self._expire, live)

    def _live(self, instance: TopicInstance) -> LiveTopic:
        live = self.live.get(instance.path)
        if live is None:
            settings = self.settings[instance.topic.name]
            channel = Channel(
                instance.topic.name,
                instance.path,
                sequence=self.sequence,
                replay=settings.replay,
                metrics=self.metrics,
            )
            upstream = self._upstream(channel, instance, settings)
            live = LiveTopic(instance, settings, channel, upstream)
            self.live[instance.path] = live
            upstream.start()
            log.info("topic instance started", extra=fields(path=instance.path))
        return live

    def _upstream(
        self, channel: Channel, instance: TopicInstance, settings: TopicSettings
    ) -> UpstreamSubscription:
        return UpstreamSubscription(
            channel=channel,
            url=instance.upstream_url,
            headers=settings.headers,
            settings=settings.upstream,
            client=self.client,
            metrics=self.metrics,
        )

    def reload(self, config: GatewayConfig) -> list[LiveTopic]:
        """Switch to ``config`` without dropping what did not change: instances
        of unchanged topics keep their subscribers, ring and upstream
        connection; a topic whose upstream (URL, headers, timeouts) changed
        re-subscribes upstream under the same subscribers. Returns the live
        instances whose topic is gone (removed, or its path changed): the
        caller ends their streams."""
        self.config = config
        self.router = TopicRouter(config.topics)
        self.settings = {topic.name: topic_settings(config, topic) for topic in config.topics}
        topics = {topic.name: topic for topic in config.topics}
        removed: list[LiveTopic] = []
        for path, live in list(self.live.items()):
            topic = topics.get(live.instance.topic.name)
            instance = None
            if topic is not None and topic.path == live.instance.topic.path:
                try:
                    instance = self.router.resolve(path)
                except HTTPError:  # e.g. a params regex that no longer admits it
                    instance = None
            if instance is None or instance.topic.name != live.instance.topic.name:
                del self.live[path]
                if live.linger is not None:
                    live.linger.cancel()
                self._stop_later(live.upstream)
                removed.append(live)
                log.info("topic instance removed by reload", extra=fields(path=path))
                continue
            settings = self.settings[instance.topic.name]
            resubscribe = (
                instance.upstream_url != live.instance.upstream_url
                or settings.headers != live.settings.headers
                or settings.upstream != live.settings.upstream
            )
            live.instance, live.settings = instance, settings
            live.channel.ring.limits = settings.replay
            if resubscribe:
                self._stop_later(live.upstream)
                live.upstream = self._upstream(live.channel, instance, settings)
                live.upstream.start()
                log.info("topic instance re-subscribed by reload", extra=fields(path=path))
            if live.held and not settings.eager:
                live.held = False
                self.release(live)
        self.start_eager()
        return removed

    def _stop_later(self, upstream: UpstreamSubscription) -> None:
        task = asyncio.get_running_loop().create_task(upstream.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _expire(self, live: LiveTopic) -> None:
        live.linger = None
        if live.refs > 0 or self.live.get(live.instance.path) is not live:
            return
        del self.live[live.instance.path]
        log.info("topic instance released", extra=fields(path=live.instance.path))
        self._stop_later(live.upstream)

    async def close(self, reason: CloseReason = CloseReason.SHUTDOWN) -> None:
        lives = list(self.live.values())
        self.live.clear()
        for live in lives:
            if live.linger is not None:
                live.linger.cancel()
            live.channel.close_all(reason)
        await asyncio.gather(*(live.upstream.stop() for live in lives), *self._stopping)
