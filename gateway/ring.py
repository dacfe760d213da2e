"""Replay ring and event ids (sans-IO).

Every event a topic instance publishes becomes an :class:`Entry` with

- ``seq``: a number from one counter shared by all topics of the process, so
  the events a connection receives, from however many topics, are ordered by it;
- ``id``: what browsers see in ``id:`` on a single-topic stream. The upstream's
  own id when it has one and it is safe to send; otherwise an id the gateway
  assigns (below);
- ``frame``: the event encoded once for single-topic streams, and ``mux_frame``
  encoded once (on first need) for multiplexed streams.

Cursors (what comes back in ``Last-Event-ID`` or ``last_event_id``):

- an upstream id the ring still holds: resume right after that event;
- ``~g<epoch>.<seq>``: a position in this process's sequence. The epoch is
  random per process, so a cursor from before a restart (or from another
  worker) is recognised as foreign, never misread. Valid while the topic
  instance was alive at ``seq`` and the ring has evicted nothing after it;
- anything else (unknown, too old, malformed, oversized, from another topic):
  a gap. The stream starts live and its first event is a ``gateway-gap`` event.

Id hygiene: ids sent to browsers are at most 128 bytes of printable ASCII
without space and without the bytes that make a request header CORS-unsafe
(``"():<>?@[\\]{}``). An upstream id that does not comply is sent as
``~b<base64url>`` (reversible) or, if that would be longer than 128 bytes,
``~h<hash>``. Upstream ids starting with ``~`` are encoded too, so assigned and
upstream ids never collide.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Final

from gateway import sse

MAX_ID_BYTES: Final = 128
# A cursor longer than any id we send cannot be ours: no need to look further.
MAX_CURSOR_BYTES: Final = MAX_ID_BYTES
GAP_EVENT: Final = "gateway-gap"
_UNSAFE = frozenset('"():<>?@[\\]{}')
_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - _UNSAFE


def safe_id(raw: str) -> str:
    """``raw`` if it can be sent to a browser as it is, else a reversible (or,
    when too long, hashed) encoding of it."""
    if (
        raw
        and len(raw) <= MAX_ID_BYTES
        and not raw.startswith("~")
        and all(char in _SAFE for char in raw)
    ):
        return raw
    data = raw.encode("utf-8", "surrogatepass")
    encoded = "~b" + base64.urlsafe_b64encode(data).decode().rstrip("=")
    if len(encoded) <= MAX_ID_BYTES:
        return encoded
    return "~h" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def decode_safe_id(value: str) -> str | None:
    """The upstream id behind :func:`safe_id`'s reversible form, else None."""
    if value.startswith("~b"):
        body = value[2:]
        try:
            return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None
    if value.startswith("~"):
        return None
    return value


class Sequence:
    """The process-wide event counter and its epoch."""

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or secrets.token_hex(4)
        self._prefix = f"~g{self.epoch}."
        self._counter = itertools.count(1)
        self.last = 0

    def next(self) -> int:
        self.last = next(self._counter)
        return self.last

    def marker(self, seq: int | None = None) -> str:
        """The cursor for "everything up to ``seq`` (default: now)"."""
        return f"{self._prefix}{self.last if seq is None else seq}"

    def parse_marker(self, cursor: str) -> int | None:
        """The position of one of our markers, or None (foreign or not a marker)."""
        if not cursor.startswith(self._prefix):
            return None
        digits = cursor[len(self._prefix) :]
        if not digits.isdigit() or len(digits) > 18:
            return None
        seq = int(digits)
        return seq if seq <= self.last else None


@dataclass(slots=True)
class Entry:
    seq: int
    id: str
    frame: bytes
    at: float
    mux_frame: bytes | None = None
    upstream_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReplayLimits:
    max_events: int
    max_bytes: int
    max_age_s: float


class Ring:
    """The recent events of one topic instance, bounded by count, bytes and age."""

    __slots__ = ("_bytes", "entries", "evicted_id", "evicted_seq", "index", "limits", "start_seq")

    def __init__(self, limits: ReplayLimits, start_seq: int) -> None:
        self.limits = limits
        self.entries: deque[Entry] = deque()
        self.index: dict[str, Entry] = {}
        self._bytes = 0
        # Positions at or before these cannot be resumed from this ring.
        self.start_seq = start_seq
        self.evicted_seq = start_seq
        # The newest evicted event is still a valid cursor: all after it is held.
        self.evicted_id: str | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, entry: Entry, now: float) -> None:
        limits = self.limits
        if limits.max_events <= 0:
            self.evicted_seq = entry.seq
            self.evicted_id = entry.id
            return
        self.entries.append(entry)
        self.index[entry.id] = entry
        self._bytes += len(entry.frame)
        while len(self.entries) > limits.max_events or (
            self._bytes > limits.max_bytes and len(self.entries) > 1
        ):
            self._evict()
        self.expire(now)

    def expire(self, now: float) -> None:
        horizon = now - self.limits.max_age_s
        entries = self.entries
        while entries and entries[0].at < horizon:
            self._evict()

    def _evict(self) -> None:
        entry = self.entries.popleft()
        self._bytes -= len(entry.frame)
        if self.index.get(entry.id) is entry:
            del self.index[entry.id]
        self.evicted_seq = entry.seq
        self.evicted_id = entry.id

    def tail_id(self) -> str | None:
        return self.entries[-1].id if self.entries else None

    def after_id(self, event_id: str) -> list[Entry] | None:
        """Entries after the one with this id, or None if the ring has no such id."""
        entry = self.index.get(event_id)
        if entry is not None:
            return self.after_seq(entry.seq)
        if event_id == self.evicted_id:
            return self.after_seq(self.evicted_seq)
        return None

    def after_seq(self, seq: int) -> list[Entry] | None:
        """Entries with a larger ``seq``, or None when that position is lost:
        before this instance existed, or events after it were evicted."""
        if seq < self.evicted_seq:
            return None
        # Replays are short next to the ring; walk back from the newest.
        found: list[Entry] = []
        for entry in reversed(self.entries):
            if entry.seq <= seq:
                break
            found.append(entry)
        found.reverse()
        return found


def gap_frame(topic_path: str, reason: str, event_id: str | None) -> bytes:
    """The documented in-band signal that events may have been missed."""
    data = json.dumps({"topic": topic_path, "reason": reason}, separators=(",", ":"))
    return sse.encode_event(data, type=GAP_EVENT, id=event_id)
