"""Channels and the replay ring, exercised directly: one encoding per event,
exact replay after a cursor, gap signals, id hygiene, multiplexed frames."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import sse
from gateway.channel import Channel, attach_multiplexed
from gateway.hub import CloseReason, Policy, QueueLimits, Subscriber
from gateway.ring import GAP_EVENT, MAX_ID_BYTES, ReplayLimits, Sequence, decode_safe_id, safe_id

LIMITS = ReplayLimits(max_events=100, max_bytes=1 << 20, max_age_s=3600)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def channel(
    path: str = "/t", sequence: Sequence | None = None, limits: ReplayLimits = LIMITS
) -> Channel:
    return Channel("t", path, sequence=sequence or Sequence("e1"), replay=limits, clock=Clock())


def sub() -> Subscriber:
    return Subscriber(QueueLimits(10_000, 1 << 30, Policy.DISCONNECT), beat_interval_s=15)


def publish(ch: Channel, n: int, event_id: str | None = None, type: str = "message") -> None:
    has_id = event_id is not None
    ch.publish_event(sse.Event(data=f"e{n}", type=type, id=event_id or "", id_field=has_id))


def parse(frames: list[bytes]) -> list[sse.Event | sse.IdUpdate]:
    items = sse.SSEParser().feed(b"".join(frames))
    return [item for item in items if isinstance(item, sse.Event | sse.IdUpdate)]


def test_publish_encodes_once_and_shares_the_bytes() -> None:
    ch = channel()
    subs = [sub() for _ in range(3)]
    for s in subs:
        ch.attach(s, None)
    publish(ch, 1, "1")
    frames = [s.queue[0] for s in subs]
    assert frames[0] == b"id: 1\ndata: e1\n\n"
    assert frames[0] is frames[1] is frames[2]
    assert ch.last_event_id == "1"


def test_events_without_upstream_ids_get_epoch_ids() -> None:
    ch = channel()
    s = sub()
    ch.attach(s, None)
    publish(ch, 1)
    publish(ch, 2)
    assert s.take() == b"id: ~ge1.1\ndata: e1\n\nid: ~ge1.2\ndata: e2\n\n"
    assert ch.last_event_id == ""  # nothing to resume the upstream from


def test_first_frame_without_cursor_marks_the_position() -> None:
    ch = channel()
    assert ch.attach(sub(), None) == [b"id: ~ge1.0\n\n"]
    publish(ch, 1, "a")
    assert ch.attach(sub(), None) == [b"id: a\n\n"]


@pytest.mark.parametrize("cursor", ["1", "3", "~ge1.1", "~ge1.3"])
def test_replay_after_a_cursor_then_live(cursor: str) -> None:
    ch = channel()
    for n in range(1, 6):
        publish(ch, n, str(n) if n % 2 else None)  # ids 1, ~ge1.2, 3, ~ge1.4, 5
    s = sub()
    replay = ch.attach(s, cursor)
    publish(ch, 6, "6")
    start = int(cursor[-1])
    expected = [f"e{n}" for n in range(start + 1, 7)]
    got = [e.data for e in parse([*replay, s.take()]) if isinstance(e, sse.Event)]
    assert got == expected


@pytest.mark.parametrize(
    ("cursor", "reason"),
    [
        ("nope", "unknown"),
        ("~gdeadbeef.1", "foreign"),
        ("~ge1.99", "foreign"),  # from the future: not ours
        ("x" * 500, "malformed"),
        ("~b!!", "unknown"),
    ],
)
def test_bad_cursor_gives_a_gap_event_then_live(cursor: str, reason: str) -> None:
    ch = channel()
    publish(ch, 1, "1")
    s = sub()
    (gap,) = ch.attach(s, cursor)
    (event,) = parse([gap])
    assert isinstance(event, sse.Event)
    assert event.type == GAP_EVENT
    assert json.loads(event.data) == {"topic": "/t", "reason": reason}
    assert event.id == "1"  # resumes from here if the client reconnects at once
    publish(ch, 2, "2")
    assert s.take() == b"id: 2\ndata: e2\n\n"


def test_evicted_cursor_is_a_gap_not_a_partial_replay() -> None:
    ch = channel(limits=ReplayLimits(max_events=3, max_bytes=1 << 20, max_age_s=3600))
    for n in range(1, 7):
        publish(ch, n, str(n))
    assert [e.id for e in ch.ring.entries] == ["4", "5", "6"]
    assert parse(ch.attach(sub(), "3"))[0].data == "e4"  # type: ignore[union-attr]
    (gap,) = ch.attach(sub(), "2")
    assert b"event: gateway-gap" in gap
    (gap,) = ch.attach(sub(), "~ge1.2")
    assert b'"reason":"expired"' in gap


def test_ring_bounds_by_bytes_and_age() -> None:
    ch = channel(limits=ReplayLimits(max_events=100, max_bytes=60, max_age_s=10))
    for n in range(1, 6):
        publish(ch, n, str(n))  # 17 bytes each
    assert [e.id for e in ch.ring.entries] == ["3", "4", "5"]
    ch.clock.now += 11  # type: ignore[attr-defined]
    publish(ch, 6, "6")
    assert [e.id for e in ch.ring.entries] == ["6"]


def test_a_cursor_from_before_the_instance_existed_is_a_gap() -> None:
    sequence = Sequence("e1")
    old = channel(sequence=sequence)
    publish(old, 1)
    cursor = sequence.marker()
    publish(channel("/other", sequence), 2)
    new = channel(sequence=sequence)  # the instance came back after a linger
    (gap,) = new.attach(sub(), cursor)
    assert b'"reason":"expired"' in gap


def test_upstream_replay_on_resume_is_not_delivered_twice() -> None:
    ch = channel()
    s = sub()
    ch.attach(s, None)
    publish(ch, 1, "1")
    publish(ch, 2, "2")
    publish(ch, 1, "1")  # the upstream sends again what the ring holds
    publish(ch, 2, "2")
    publish(ch, 3, "3")
    assert [e.id for e in parse([s.take()])] == ["1", "2", "3"]


def test_a_reset_upstream_reusing_ids_is_still_delivered() -> None:
    ch = channel()
    s = sub()
    ch.attach(s, None)
    publish(ch, 1, "1")
    ch.publish_event(sse.Event(data="new life", id="1", id_field=True))
    assert [e.data for e in parse([s.take()]) if isinstance(e, sse.Event)] == ["e1", "new life"]


def test_id_only_events_move_the_cursor() -> None:
    ch = channel()
    s = sub()
    ch.attach(s, None)
    publish(ch, 1, "1")
    ch.publish_id("5")
    publish(ch, 2)
    assert s.take() == b"id: 1\ndata: e1\n\nid: 5\n\nid: ~ge1.3\ndata: e2\n\n"
    assert ch.last_event_id == "5"
    assert [e.data for e in parse(ch.attach(sub(), "5")) if isinstance(e, sse.Event)] == ["e2"]


def test_multiplexed_frames_name_the_topic_and_share_one_cursor() -> None:
    sequence = Sequence("e1")
    prices, orders = channel("/prices", sequence), channel("/orders/42", sequence)
    s = sub()
    assert attach_multiplexed([prices, orders], s, None) == [b"id: ~ge1.0\n\n"]
    publish(prices, 1, "p1")
    publish(orders, 2, "o1", type="shipped")
    publish(prices, 3)
    assert s.take() == (
        b"id: ~ge1.1\nevent: /prices\ndata: e1\n\n"
        b"id: ~ge1.2\nevent: /orders/42#shipped\ndata: e2\n\n"
        b"id: ~ge1.3\nevent: /prices\ndata: e3\n\n"
    )
    # resume from the middle: each topic replays after the one cursor, in order
    again = sub()
    replay = attach_multiplexed([prices, orders], again, "~ge1.1")
    assert b"".join(replay) == (
        b"id: ~ge1.2\nevent: /orders/42#shipped\ndata: e2\n\n"
        b"id: ~ge1.3\nevent: /prices\ndata: e3\n\n"
    )


def test_multiplexed_gap_per_topic() -> None:
    sequence = Sequence("e1")
    small = ReplayLimits(max_events=1, max_bytes=1 << 20, max_age_s=3600)
    busy, quiet = channel("/busy", sequence, small), channel("/quiet", sequence)
    publish(busy, 1, "b1")
    publish(quiet, 2, "q1")
    publish(busy, 3, "b2")
    publish(busy, 4, "b3")  # evicts b2: a cursor at 1 lost /busy events
    frames = attach_multiplexed([busy, quiet], sub(), "~ge1.1")
    items = parse(frames)
    gap, replayed, marker = items
    assert isinstance(gap, sse.Event)
    assert json.loads(gap.data)["topic"] == "/busy"
    assert isinstance(replayed, sse.Event)
    assert replayed.type == "/quiet"
    assert marker == sse.IdUpdate("~ge1.4")


def test_multiplexed_foreign_cursor_gaps_every_topic() -> None:
    sequence = Sequence("e1")
    a, b = channel("/a", sequence), channel("/b", sequence)
    items = parse(attach_multiplexed([a, b], sub(), "3"))
    assert [json.loads(i.data)["topic"] for i in items if isinstance(i, sse.Event)] == ["/a", "/b"]
    assert items[-1] == sse.IdUpdate("~ge1.0")


@given(st.text(max_size=300))
def test_safe_ids_are_safe_and_reversible(raw: str) -> None:
    event_id = safe_id(raw)
    assert 0 < len(event_id.encode()) <= MAX_ID_BYTES
    assert all(0x21 <= ord(c) < 0x7F and c not in '"():<>?@[\\]{}' for c in event_id)
    if not event_id.startswith("~h"):
        assert decode_safe_id(event_id) == raw


def direct_sub(
    writes: list[bytes], *, takes: bool = True, limits: QueueLimits | None = None
) -> Subscriber:
    """A subscriber on the fast path: its connection takes every write (or none)."""
    s = Subscriber(limits or QueueLimits(10_000, 1 << 30, Policy.DISCONNECT), beat_interval_s=15)

    def direct(frame: bytes) -> bool:
        if takes:
            writes.append(frame)
        return takes

    s.direct = direct
    return s


def events(*ids: str) -> list[sse.Event | sse.IdUpdate]:
    return [sse.Event(data=f"e{i}", id=i, id_field=True) for i in ids]


def test_one_read_of_several_events_is_one_write_per_subscriber() -> None:
    ch = channel()
    writes: list[list[bytes]] = [[], []]
    subs = [direct_sub(w) for w in writes]
    for s in subs:
        ch.attach(s, None)
    ch.publish([*events("1", "2"), sse.IdUpdate("3")])
    expected = b"id: 1\ndata: e1\n\nid: 2\ndata: e2\n\nid: 3\n\n"
    assert writes == [[expected], [expected]]
    assert writes[0][0] is writes[1][0]  # joined once, shared
    assert [s.sent_events for s in subs] == [3, 3]
    assert [e.id for e in ch.ring.entries] == ["1", "2", "3"]
    assert ch.published == 3


def test_a_batch_is_queued_event_by_event_when_the_socket_is_full() -> None:
    ch = channel()
    full = direct_sub([], takes=False, limits=QueueLimits(2, 1 << 20, Policy.DROP_OLDEST))
    ch.attach(full, None)
    ch.publish(events("1", "2", "3"))
    assert list(full.queue) == [b"id: 2\ndata: e2\n\n", b"id: 3\ndata: e3\n\n"]
    assert full.dropped == 1


def test_a_batch_overflowing_the_queue_disconnects_the_subscriber() -> None:
    ch = channel()
    aborted: list[bool] = []
    full = direct_sub([], takes=False, limits=QueueLimits(2, 1 << 20, Policy.DISCONNECT))
    full.set_abort(lambda: aborted.append(True))
    ch.attach(full, None)
    ch.publish(events("1", "2", "3"))
    assert aborted == [True]
    assert full.close_reason is CloseReason.SLOW_CONSUMER
    assert not full.queue


def test_a_batch_after_queued_frames_waits_its_turn() -> None:
    ch = channel()
    writes: list[bytes] = []
    s = direct_sub(writes)
    ch.attach(s, None)
    s.queue.append(b": queued\n\n")  # the writer has not run yet
    ch.publish(events("1", "2"))
    assert writes == []
    assert list(s.queue) == [b": queued\n\n", b"id: 1\ndata: e1\n\n", b"id: 2\ndata: e2\n\n"]


def test_upstream_repeats_inside_one_read_are_dropped() -> None:
    ch = channel()
    writes: list[bytes] = []
    ch.attach(direct_sub(writes), None)
    ch.publish(events("1", "1", "2"))
    assert writes == [b"id: 1\ndata: e1\n\nid: 2\ndata: e2\n\n"]


def test_multiplexed_subscribers_get_one_batch_write_too() -> None:
    sequence = Sequence("e1")
    a, b = channel("/a", sequence), channel("/b", sequence)
    writes: list[bytes] = []
    s = direct_sub(writes)
    attach_multiplexed([a, b], s, None)
    a.publish(events("1", "2"))
    assert writes == [b"id: ~ge1.1\nevent: /a\ndata: e1\n\nid: ~ge1.2\nevent: /a\ndata: e2\n\n"]
