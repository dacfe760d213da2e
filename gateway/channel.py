"""One topic instance: its replay ring and its subscribers.

``publish_*`` is the fan-out hot path: an upstream event becomes one
:class:`~gateway.ring.Entry`, encoded once for single-topic streams (and once
more, on first need, for multiplexed streams), appended to the ring and offered
to every subscriber. ``attach_*`` connects a subscriber, with its replay or gap
signal, in one synchronous step: no publish can fall between the replay and
the live stream, so there is neither a gap nor a duplicate at the seam.

Multiplexed frames name their topic in ``event:``: ``<instance path>`` for the
upstream's default type, ``<instance path>#<type>`` otherwise (paths never
contain ``#``). Their ``id:`` is a process-wide position (``~g<epoch>.<seq>``),
which is one compact cursor for every topic of the connection, because a
connection receives events in ``seq`` order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway import sse
from gateway.hub import CloseReason, Subscriber
from gateway.metrics import OFF, Counter, Gauge, Metrics, Off
from gateway.ring import MAX_CURSOR_BYTES, Entry, ReplayLimits, Ring, gap_frame, safe_id
from gateway.ring import Sequence as EventSequence


class Channel:
    __slots__ = (
        "_deliveries",
        "_events_in",
        "_subscribed",
        "clock",
        "lag_s",
        "last_event_id",
        "metrics",
        "mux_subscribers",
        "name",
        "path",
        "published",
        "ring",
        "sequence",
        "subscribers",
    )

    def __init__(
        self,
        name: str,
        path: str,
        *,
        sequence: EventSequence,
        replay: ReplayLimits,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self._events_in: Counter | Off = OFF
        self._deliveries: Counter | Off = OFF
        self._subscribed: Gauge | Off = OFF
        if metrics is not None:
            self._events_in = metrics.events_in.labels(name)
            self._deliveries = metrics.deliveries.labels(name)
            self._subscribed = metrics.subscribers.labels(name)
        self.path = path
        self.sequence = sequence
        self.clock = clock
        self.ring = Ring(replay, start_seq=sequence.last)
        self.subscribers: dict[Subscriber, None] = {}
        self.mux_subscribers: dict[Subscriber, None] = {}
        # The raw upstream id to resume the upstream from (never shown to browsers).
        self.last_event_id = ""
        self.published = 0
        self.lag_s = 0.0  # upstream receive to the end of the last fan-out

    def __repr__(self) -> str:
        return f"Channel({self.path!r}, subscribers={self.subscriber_count})"

    @property
    def subscriber_count(self) -> int:
        return len(self.subscribers) + len(self.mux_subscribers)

    # -- publishing (the hot path) ------------------------------------------------

    def publish(self, items: Sequence[sse.Event | sse.IdUpdate]) -> None:
        """Fan out what one upstream read produced, in order. Every event is
        encoded once; a subscriber whose socket takes it at once gets all of
        them in one write. A gateway that falls behind reads several events per
        upstream read, so its cost per event drops exactly when it must."""
        entries: list[Entry] = []
        for item in items:
            if isinstance(item, sse.Event):
                entry = self._event_entry(item)
            else:
                entry = self._id_entry(item.id)
            if entry is not None:
                self.ring.append(entry, entry.at)
                entries.append(entry)
        if entries:
            self._fan_out(entries)

    def publish_event(self, event: sse.Event) -> None:
        """Fan one parsed upstream event out."""
        self.publish((event,))

    def publish_id(self, upstream_id: str) -> None:
        """An id-only block: it moves every browser's ``lastEventId``."""
        self.publish((sse.IdUpdate(upstream_id),))

    def _event_entry(self, event: sse.Event) -> Entry | None:
        upstream_id = event.id if event.id_field and event.id else None
        if event.id_field:
            self.last_event_id = event.id
        if upstream_id is not None:
            event_id = safe_id(upstream_id)
            held = self.ring.index.get(event_id)
            frame = sse.encode_event(event.data, type=event.type, id=event_id)
            if held is not None and held.frame == frame:
                return None  # an upstream replaying on resume: already delivered
            seq = self.sequence.next()
        else:
            seq = self.sequence.next()
            event_id = self.sequence.marker(seq)
            frame = sse.encode_event(event.data, type=event.type, id=event_id)
        return Entry(seq, event_id, frame, self.clock(), upstream_id=upstream_id)

    def _id_entry(self, upstream_id: str) -> Entry | None:
        self.last_event_id = upstream_id
        if upstream_id:
            event_id = safe_id(upstream_id)
            if event_id in self.ring.index:
                return None
            seq = self.sequence.next()
        else:
            seq = self.sequence.next()
            event_id = self.sequence.marker(seq)
        frame = sse.encode_id_only(event_id)
        return Entry(seq, event_id, frame, self.clock(), upstream_id=upstream_id)

    def _fan_out(self, entries: list[Entry]) -> None:
        count = len(entries)
        self.published += count
        if self.subscribers:
            if count == 1:
                frame = entries[0].frame
                for subscriber in self.subscribers:
                    subscriber.offer(frame)
            else:
                frames = [entry.frame for entry in entries]
                joined = b"".join(frames)
                for subscriber in self.subscribers:
                    subscriber.offer_many(joined, frames)
        if self.mux_subscribers:
            frames = [self.mux_frame(entry) for entry in entries]
            joined = frames[0] if count == 1 else b"".join(frames)
            for subscriber in self.mux_subscribers:
                subscriber.offer_many(joined, frames)
        self._events_in.inc(count)
        self._deliveries.inc(count * (len(self.subscribers) + len(self.mux_subscribers)))
        # Frames written at once (the fast path) reached their sockets within
        # this loop: its duration is their lag. Queued ones are timed by their
        # writer.
        self.lag_s = self.clock() - entries[0].at
        if self.metrics is not None:
            self.metrics.lag.observe(self.lag_s)

    def mux_frame(self, entry: Entry) -> bytes:
        """``entry`` as a multiplexed stream sends it, encoded once and kept."""
        if entry.mux_frame is None:
            entry.mux_frame = _retag(entry.frame, self.path, self.sequence.marker(entry.seq))
        return entry.mux_frame

    # -- attaching subscribers -----------------------------------------------------

    def attach(self, subscriber: Subscriber, cursor: str | None) -> list[bytes]:
        """Subscribe a single-topic stream; returns the frames to send before
        the live ones: the replay after ``cursor``, or a gap event, or (no
        cursor) an id-only marker so that even a client that receives nothing
        before a reconnect resumes from here."""
        ring = self.ring
        ring.expire(self.clock())
        position = ring.tail_id() or self.sequence.marker()
        if not cursor:
            frames = [sse.encode_id_only(position)]
            outcome = "fresh"
        else:
            entries, reason = self._entries_after(cursor)
            if entries is None:
                frames = [gap_frame(self.path, reason, position)]
                outcome = f"gap_{reason}"
            else:
                frames = [entry.frame for entry in entries]
                outcome = "replayed"
        self.subscribers[subscriber] = None
        self._count_attach(outcome, len(frames) if outcome == "replayed" else 0)
        return frames

    def _count_attach(self, outcome: str, replayed: int) -> None:
        if self.metrics is not None and outcome:
            self.metrics.resumes.labels(outcome).inc()
            if replayed:
                self.metrics.replayed_events.inc(replayed)
        self._subscribed.inc()

    def _entries_after(self, cursor: str) -> tuple[list[Entry] | None, str]:
        if len(cursor) > MAX_CURSOR_BYTES:
            return None, "malformed"
        seq = self.sequence.parse_marker(cursor)
        if seq is not None:
            return self.ring.after_seq(seq), "expired"
        if cursor.startswith("~g"):
            return None, "foreign"
        return self.ring.after_id(cursor), "unknown"

    def detach(self, subscriber: Subscriber) -> None:
        found = self.subscribers.pop(subscriber, 0) is None
        found = self.mux_subscribers.pop(subscriber, 0) is None or found
        if found:
            self._subscribed.dec()

    def close_all(self, reason: CloseReason) -> None:
        for subscriber in [*self.subscribers, *self.mux_subscribers]:
            subscriber.close(reason)


def attach_multiplexed(
    channels: Sequence[Channel], subscriber: Subscriber, cursor: str | None
) -> list[bytes]:
    """Subscribe one multiplexed stream to several channels of one process;
    returns the frames to send first. A cursor is one position for all topics:
    each topic replays what came after it, or signals a gap of its own."""
    sequence = channels[0].sequence
    now = channels[0].clock()
    frames: list[bytes] = []
    outcome = "replayed"
    replayed = 0
    if not cursor:
        frames.append(sse.encode_id_only(sequence.marker()))
        outcome = "fresh"
    else:
        seq = sequence.parse_marker(cursor) if len(cursor) <= MAX_CURSOR_BYTES else None
        if seq is None:
            reason = "foreign" if cursor.startswith("~g") else "malformed"
            frames.extend(gap_frame(channel.path, reason, None) for channel in channels)
            frames.append(sse.encode_id_only(sequence.marker()))
            outcome = f"gap_{reason}"
        else:
            replay: list[tuple[int, Channel, Entry]] = []
            gapped = False
            for channel in channels:
                channel.ring.expire(now)
                entries = channel.ring.after_seq(seq)
                if entries is None:
                    frames.append(gap_frame(channel.path, "expired", None))
                    gapped = True
                else:
                    replay.extend((entry.seq, channel, entry) for entry in entries)
            replay.sort(key=lambda item: item[0])
            frames.extend(channel.mux_frame(entry) for _, channel, entry in replay)
            replayed = len(replay)
            if gapped:
                frames.append(sse.encode_id_only(sequence.marker()))
                outcome = "gap_expired"
    for index, channel in enumerate(channels):
        channel.mux_subscribers[subscriber] = None
        channel._count_attach(outcome if index == 0 else "", replayed if index == 0 else 0)
    return frames


def _retag(frame: bytes, path: str, event_id: str) -> bytes:
    """A single-topic frame (``id``, optional ``event``, ``data`` lines, as
    :func:`gateway.sse.encode_event` writes them) with the multiplexed ``id``
    and the topic in ``event``."""
    _, _, rest = frame.partition(b"\n")  # drop "id: ..."
    if rest == b"\n":  # an id-only frame
        return sse.encode_id_only(event_id)
    event_type = path
    if rest.startswith(b"event: "):
        line, _, rest = rest.partition(b"\n")
        event_type = f"{path}#{line[7:].decode()}"
    return f"id: {event_id}\nevent: {event_type}\n".encode() + rest
