"""Subscribers, exercised directly: queue bounds, policies, heartbeats, deadline."""

from __future__ import annotations

import asyncio

import pytest

from gateway.hub import (
    HEARTBEAT,
    CloseReason,
    Housekeeper,
    Policy,
    QueueLimits,
    Subscriber,
)


def make(policy: Policy, max_events: int = 3, max_bytes: int = 1 << 20) -> Subscriber:
    return Subscriber(QueueLimits(max_events, max_bytes, policy), beat_interval_s=15.0)


def test_take_drains_everything_in_one_buffer() -> None:
    sub = make(Policy.DISCONNECT, max_events=10)
    for n in range(4):
        sub.offer(f"f{n};".encode())
    assert sub.take() == b"f0;f1;f2;f3;"
    assert not sub.queue
    assert sub.queued_bytes == 0
    assert sub.sent_events == 4


def test_disconnect_policy_aborts_on_overflow() -> None:
    aborted: list[bool] = []
    sub = make(Policy.DISCONNECT, max_events=2)
    sub.set_abort(lambda: aborted.append(True))
    sub.offer(b"a")
    sub.offer(b"b")
    assert not sub.closed
    sub.offer(b"c")
    assert sub.closed
    assert sub.close_reason is CloseReason.SLOW_CONSUMER
    assert aborted == [True]
    assert not sub.queue
    sub.offer(b"d")  # ignored once closed
    assert not sub.queue


def test_disconnect_policy_counts_bytes_too() -> None:
    sub = make(Policy.DISCONNECT, max_events=100, max_bytes=10)
    sub.offer(b"123456")
    sub.offer(b"1234")
    assert not sub.closed
    sub.offer(b"1")
    assert sub.close_reason is CloseReason.SLOW_CONSUMER


def test_drop_oldest_keeps_the_newest_events() -> None:
    sub = make(Policy.DROP_OLDEST, max_events=3)
    for n in range(6):
        sub.offer(f"{n}".encode())
    assert list(sub.queue) == [b"3", b"4", b"5"]
    assert sub.dropped == 3
    assert not sub.closed


def test_drop_oldest_by_bytes() -> None:
    sub = make(Policy.DROP_OLDEST, max_events=100, max_bytes=10)
    sub.offer(b"aaaa")
    sub.offer(b"bbbb")
    sub.offer(b"cccc")
    assert list(sub.queue) == [b"bbbb", b"cccc"]
    assert sub.queued_bytes == 8


def test_latest_keeps_only_the_newest() -> None:
    sub = make(Policy.LATEST, max_events=20)  # the queue bound does not matter
    for n in range(5):
        sub.offer(f"{n}".encode())
    assert list(sub.queue) == [b"4"]
    assert sub.dropped == 4


async def test_wait_wakes_on_offer_and_close() -> None:
    sub = make(Policy.DISCONNECT)
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    sub.offer(b"x")
    await asyncio.wait_for(waiter, 1)
    sub.take()
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    sub.close(CloseReason.CLIENT_GONE)
    await asyncio.wait_for(waiter, 1)


def test_housekeeper_beats_idle_and_aborts_stuck_senders() -> None:
    now = [1000.0]
    keeper = Housekeeper(send_timeout_s=5.0, clock=lambda: now[0])
    idle, busy, stuck = (make(Policy.DISCONNECT) for _ in range(3))
    for sub in (idle, busy, stuck):
        sub.last_write_at = 990.0
        keeper.register(sub)
    busy.offer(b"queued")
    stuck.sending_since = 994.0
    aborted: list[str] = []
    stuck.set_abort(lambda: aborted.append("stuck"))
    keeper.sweep()  # 10 s idle < 15 s beat interval; stuck only 6 s > 5 s deadline
    assert not idle.queue
    assert aborted == ["stuck"]
    assert stuck.close_reason is CloseReason.SEND_TIMEOUT
    now[0] = 1006.0
    keeper.sweep()
    assert list(idle.queue) == [HEARTBEAT]
    assert list(busy.queue) == [b"queued"]  # something is already on its way


def test_a_stream_written_on_the_fast_path_gets_no_heartbeat() -> None:
    now = [1000.0]
    keeper = Housekeeper(send_timeout_s=5.0, clock=lambda: now[0])
    written: list[bytes] = []
    busy, idle = make(Policy.DISCONNECT), make(Policy.DISCONNECT)

    def take_every_write(frame: bytes) -> bool:
        written.append(frame)
        return True

    busy.direct = take_every_write
    for sub in (busy, idle):
        sub.last_write_at = 1000.0
        keeper.register(sub)
    for second in range(1, 31):  # an event a second for 30 s, each written at once
        now[0] = 1000.0 + second
        busy.offer(b"event")
        keeper.sweep()
    assert len(written) == 30
    assert not busy.queue  # no heartbeat was ever needed
    assert list(idle.queue) == [HEARTBEAT]
    now[0] = 1031.0 + 15.0  # the busy stream falls silent: heartbeats resume
    keeper.sweep()
    assert list(busy.queue) == [HEARTBEAT]


@pytest.mark.parametrize("policy", list(Policy))
def test_closed_subscriber_is_never_written(policy: Policy) -> None:
    sub = make(policy)
    sub.close(CloseReason.SHUTDOWN)
    sub.offer(b"x")
    sub.offer_heartbeat()
    assert not sub.queue


def test_a_heartbeat_is_not_counted_as_an_event() -> None:
    sub = make(Policy.DISCONNECT)
    sub.offer_heartbeat()
    assert sub.queued_at > 0  # the writer's lag measure starts from here
    assert sub.take() == HEARTBEAT
    assert sub.sent_events == 0
    sub.offer(b"event")
    sub.take()
    assert sub.sent_events == 1
