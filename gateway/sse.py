"""Sans-IO codec for Server-Sent Events (``text/event-stream``).

The parser follows the WHATWG HTML Living Standard, §9.2 "Server-sent events",
section "Interpreting an event stream": the stream is UTF-8 decoded (invalid
sequences become U+FFFD), one leading U+FEFF is ignored, lines end in CRLF, LF or
CR, a blank line dispatches the block, ``:`` starts a comment, and the fields
``event``, ``data``, ``id`` and ``retry`` are interpreted as the standard says.
It does no I/O: hand it bytes with :meth:`SSEParser.feed` as they arrive and act
on the items it returns. The result never depends on how the stream is chunked.

The parser yields these items, in stream order:

* :class:`Event` -- a dispatched block that carried data.
* :class:`IdUpdate` -- a block with an ``id`` field but no data. Browsers move
  ``lastEventId`` on such blocks without firing an event, so the gateway has to
  forward them.
* :class:`Retry` -- a valid ``retry`` field, emitted just before the item of the
  block that carried it.
* :class:`Discarded` -- a block was dropped because it exceeded a bound.

Where this module differs from the standard, on purpose:

* A block's fields take effect only when its blank line arrives. ``id`` is
  committed and ``Retry`` is emitted at dispatch. A block that is never
  terminated, or is discarded, changes nothing. The standard applies ``id`` and
  ``retry`` as soon as the field is read. Committing at dispatch keeps
  :attr:`SSEParser.last_event_id` equal to the cursor of the last event the
  gateway actually forwarded. If a block has several valid ``retry`` fields,
  only the last is emitted, since only the last would have any effect.
* A ``retry`` value greater than 2**64 - 1 is ignored, as Chromium does. This
  also keeps ``int()`` away from inputs that hit Python's limit on
  string-to-int conversion, which would raise.

Bounds (constructor arguments) keep memory bounded against a hostile upstream:

* ``max_line_bytes`` (default 64 KiB) limits the length of one line, not
  counting its line ending.
* ``max_event_bytes`` (default 1 MiB) limits the ``data`` buffer (including the
  ``\\n`` after each data line), the event type and the block's ``id`` value,
  added together.

Sizes count UTF-8 bytes of the decoded text. For valid input this equals the
wire size; each invalid sequence counts as the 3 bytes of its U+FFFD. When a
line or block goes over a bound, the whole block is dropped, up to and including
the next blank line. Nothing from it is applied: no data, type, id or retry.
``Discarded`` is emitted once, at the moment the bound is crossed, and parsing
continues normally after the blank line. The parser never buffers more than
``max_line_bytes`` of an unfinished line, plus ``max_event_bytes`` for the
block. It never raises for any input; the upstream subscription logs and counts
each ``Discarded`` item and goes on.

The encoder functions produce frames this parser, and browsers, read back
exactly. They raise ``ValueError`` for an ``id`` or event type that would break
the framing.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = [
    "Discarded",
    "Event",
    "IdUpdate",
    "Item",
    "Retry",
    "SSEParser",
    "encode_comment",
    "encode_event",
    "encode_id_only",
    "encode_retry",
]


@dataclass(frozen=True, slots=True)
class Event:
    """A dispatched event.

    ``id`` is the last-event-id buffer at dispatch time, and it persists across
    events. ``id_field`` says whether this block set it itself.
    """

    data: str
    type: str = "message"
    id: str = ""
    id_field: bool = False


@dataclass(frozen=True, slots=True)
class IdUpdate:
    """A block with an ``id`` field and no data. It moves the cursor but fires no event."""

    id: str


@dataclass(frozen=True, slots=True)
class Retry:
    """A valid ``retry`` field: the reconnection time in milliseconds."""

    ms: int


@dataclass(frozen=True, slots=True)
class Discarded:
    """A block was dropped for exceeding a bound.

    ``size`` is a lower bound on the size that crossed it. For "line too long"
    it is always ``max_line_bytes + 1``, because counting stops as soon as the
    bound is crossed, at a point that would otherwise depend on chunking. For
    "event too large" it is the exact block size once the offending line was
    added.
    """

    reason: str
    size: int


Item = Event | IdUpdate | Retry | Discarded

# Only these three line endings: str.splitlines() would also split on \v, \f,
# \x1c-\x1e, \x85, U+2028 and U+2029, which are ordinary characters in SSE.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

_MAX_RETRY = 2**64 - 1
# Significant digits of _MAX_RETRY. Anything longer is ignored before int().
_MAX_RETRY_DIGITS = len(str(_MAX_RETRY))


def _utf8_len(text: str) -> int:
    # Decoded text never contains lone surrogates, so encode() cannot fail.
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class SSEParser:
    """Incremental ``text/event-stream`` parser. See the module docstring for the rules.

    ``last_event_id`` seeds the last-event-id buffer. Pass the Last-Event-ID the
    gateway resumes an upstream with, so events that carry no ``id`` of their own
    still report the right cursor.
    """

    __slots__ = (
        "_bom_checked",
        "_data",
        "_data_bytes",
        "_decoder",
        "_discarding",
        "_id_bytes",
        "_last_event_id",
        "_line_seen",
        "_max_event_bytes",
        "_max_line_bytes",
        "_partial",
        "_partial_bytes",
        "_pending_id",
        "_retry",
        "_skip_lf",
        "_type",
        "_type_bytes",
    )

    def __init__(
        self,
        *,
        max_line_bytes: int = 65536,
        max_event_bytes: int = 1048576,
        last_event_id: str = "",
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
        if max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be >= 1, got {max_event_bytes}")
        # The parser itself could never produce such an id. Accepting one would
        # only delay the failure until encode_event() rejects it.
        if any(c in last_event_id for c in "\r\n\x00"):
            raise ValueError("last_event_id must not contain CR, LF or NUL")
        self._max_line_bytes = max_line_bytes
        self._max_event_bytes = max_event_bytes
        self._last_event_id = last_event_id
        self._start_stream()

    def _start_stream(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bom_checked = False
        # The previous chunk ended in CR. A leading LF in the next one is the
        # second half of that CRLF, not an empty line.
        self._skip_lf = False
        # The unfinished line, kept as pieces so a line arriving in many chunks
        # is joined once rather than re-copied on every feed().
        self._partial: list[str] = []
        self._partial_bytes = 0
        # While discarding, the line's content is not kept. This only records
        # whether it is non-empty, since an empty line ends the discard.
        self._discarding = False
        self._line_seen = False
        self._reset_block()

    def _reset_block(self) -> None:
        self._data: list[str] = []
        self._data_bytes = 0
        self._type = ""
        self._type_bytes = 0
        self._pending_id: str | None = None
        self._id_bytes = 0
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str:
        """The id committed by the last dispatched block, or the constructor's value."""
        return self._last_event_id

    @property
    def buffered_bytes(self) -> int:
        """UTF-8 bytes held for the unfinished line and block.

        This is at most ``max_line_bytes + max_event_bytes``.
        """
        return self._partial_bytes + self._data_bytes + self._type_bytes + self._id_bytes

    def feed(self, data: bytes) -> list[Item]:
        """Parse the next chunk of the stream and return the items it completes."""
        text = self._decoder.decode(data)
        if not text:
            # Possibly an incomplete UTF-8 sequence. _skip_lf must survive this.
            return []
        if not self._bom_checked:
            self._bom_checked = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text[:1] == "\n":
                text = text[1:]
        if not text:
            return []
        out: list[Item] = []
        *lines, tail = _LINE_BREAK.split(text)
        # A trailing CR was matched as a complete line ending, so the line it
        # ends is processed now. Only a following LF remains to be swallowed.
        self._skip_lf = text[-1] == "\r"
        for line in lines:
            self._end_line(line, out)
        if tail:
            self._add_partial(tail, out)
        return out

    def close(self) -> list[Item]:
        """End of stream. Drop any unterminated block and get ready for a new stream.

        The dropped block's ``id`` and ``retry`` are not applied. ``last_event_id``
        is kept, since it is the cursor to resume from. Always returns ``[]``: no
        item can complete without a blank line.
        """
        self._start_stream()
        return []

    def _add_partial(self, piece: str, out: list[Item]) -> None:
        if self._discarding:
            self._line_seen = True
            return
        size = _utf8_len(piece)
        if self._partial_bytes + size > self._max_line_bytes:
            self._discard("line too long", self._max_line_bytes + 1, out)
            self._line_seen = True
            return
        self._partial.append(piece)
        self._partial_bytes += size

    def _end_line(self, last_piece: str, out: list[Item]) -> None:
        if self._discarding:
            if not self._line_seen and not last_piece:
                self._discarding = False
            self._line_seen = False
            return
        size = self._partial_bytes + _utf8_len(last_piece)
        if size > self._max_line_bytes:
            # The line has ended, so the next line starts out empty.
            self._discard("line too long", self._max_line_bytes + 1, out)
            return
        if self._partial:
            self._partial.append(last_piece)
            line = "".join(self._partial)
            self._partial = []
            self._partial_bytes = 0
        else:
            line = last_piece
        self._process_line(line, out)

    def _discard(self, reason: str, size: int, out: list[Item]) -> None:
        out.append(Discarded(reason, size))
        self._discarding = True
        self._line_seen = False
        self._partial = []
        self._partial_bytes = 0
        self._reset_block()

    def _process_line(self, line: str, out: list[Item]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_bytes += _utf8_len(value) + 1
        elif name == "event":
            self._type = value
            self._type_bytes = _utf8_len(value)
        elif name == "id":
            if "\x00" in value:
                return
            self._pending_id = value
            self._id_bytes = _utf8_len(value)
        elif name == "retry":
            self._set_retry(value)
            return
        else:
            return
        size = self._data_bytes + self._type_bytes + self._id_bytes
        if size > self._max_event_bytes:
            self._discard("event too large", size, out)

    def _set_retry(self, value: str) -> None:
        # isdigit() alone would accept non-ASCII digits such as "٣" or "²".
        if not (value.isascii() and value.isdigit()):
            return
        digits = value.lstrip("0") or "0"
        if len(digits) > _MAX_RETRY_DIGITS:
            return
        ms = int(digits)
        if ms <= _MAX_RETRY:
            self._retry = ms

    def _dispatch(self, out: list[Item]) -> None:
        if self._retry is not None:
            out.append(Retry(self._retry))
        has_id = self._pending_id is not None
        if self._pending_id is not None:
            self._last_event_id = self._pending_id
        if self._data:
            out.append(
                Event(
                    data="\n".join(self._data),
                    type=self._type or "message",
                    id=self._last_event_id,
                    id_field=has_id,
                )
            )
        elif has_id:
            out.append(IdUpdate(self._last_event_id))
        self._reset_block()


def _check_field(name: str, value: str, forbidden: str) -> None:
    for char in forbidden:
        if char in value:
            raise ValueError(f"SSE {name} must not contain {char!r}: {value!r}")


def _check_retry(ms: int) -> None:
    # bool is an int subclass, but retry_ms=True is surely a bug.
    if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
        raise ValueError(f"retry must be a non-negative int, got {ms!r}")


def encode_event(
    data: str,
    *,
    type: str | None = None,
    id: str | None = None,
    retry_ms: int | None = None,
) -> bytes:
    """Encode one event block: ``id``, ``event``, ``retry``, the ``data`` lines, then a blank line.

    ``data`` is split on CRLF, CR and LF into one ``data:`` line per line, so it
    reads back with every line ending turned into LF. ``type`` is left out when
    it is None or ``"message"``. Raises ``ValueError`` if ``id`` contains CR, LF
    or NUL, if ``type`` contains CR or LF, or if ``retry_ms`` is not a
    non-negative int. Lone surrogates in any argument raise
    ``UnicodeEncodeError``, which is also a ``ValueError``.
    """
    parts: list[str] = []
    if id is not None:
        _check_field("id", id, "\r\n\x00")
        parts.append(f"id: {id}\n")
    if type is not None and type != "message":
        _check_field("event type", type, "\r\n")
        parts.append(f"event: {type}\n")
    if retry_ms is not None:
        _check_retry(retry_ms)
        parts.append(f"retry: {retry_ms}\n")
    # Always write one space after the colon. The parser strips exactly one, so a
    # value that starts with a space survives.
    parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_id_only(id: str) -> bytes:
    """Encode a block with only an ``id``.

    It moves a browser's ``lastEventId`` without firing an event. Raises
    ``ValueError`` if ``id`` contains CR, LF or NUL.
    """
    _check_field("id", id, "\r\n\x00")
    return f"id: {id}\n\n".encode()


def encode_comment(text: str = "") -> bytes:
    """Encode ``text`` as comment lines, one per line of text, followed by a blank line.

    Empty text gives ``:\\n\\n``, a common keep-alive. The blank line dispatches
    nothing, but it ends the block for proxies that buffer by block.
    """
    lines = (f": {line}\n" if line else ":\n" for line in _LINE_BREAK.split(text))
    return ("".join(lines) + "\n").encode("utf-8")


def encode_retry(ms: int) -> bytes:
    """Encode a block with only a ``retry`` field.

    Raises ``ValueError`` unless ``ms`` is a non-negative int.
    """
    _check_retry(ms)
    return f"retry: {ms}\n\n".encode()
