"""Routing public request paths to topic instances.

A *topic instance* is one concrete stream: a literal topic has exactly one, a templated topic
(``/orders/{id}``) has one per distinct parameter value. The gateway keeps one upstream
subscription per instance, keyed by :attr:`TopicInstance.path`, so that key must be canonical:
every spelling of the same request maps to the same string, and no two different instances share
one. Hence:

* Literal topics match the raw path by exact string equality (a dict lookup: this runs on every
  connect). A raw path that only *decodes* to a literal topic's segments (``/tick%65r``) also
  resolves to that topic, because otherwise a template could claim it under the same key.
* Templated topics match segment by segment; literal segments are compared with the decoded
  request segment. A parameter segment must be printable ASCII (as on the wire), is
  percent-decoded strictly (valid escapes, valid UTF-8) and checked: non-empty, <= 256 bytes,
  not ``.`` or ``..``, no ``/``, ``\\`` or control characters, and the topic's regex if any.
  The value is re-encoded with ``quote(value, safe="")`` in both the instance path and the
  upstream URL, so it can never add a path segment, a query parameter or a fragment upstream.
* Literal topics win over templates; among templates, more literal segments win, then config
  order. If the best candidate rejects a value, the next is tried; if none accepts, the most
  preferred candidate's :class:`BadRequest` is raised. No candidate at all is :class:`NotFound`.

Sans-IO: nothing here touches the network or an event loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from gateway.config import PLACEHOLDER_RE, TopicConfig, short_repr
from gateway.errors import BadRequest, NotFound

__all__ = ["MAX_PARAM_BYTES", "TopicInstance", "TopicRouter"]

MAX_PARAM_BYTES = 256

_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_WIRE_RE = re.compile(r"[\x21-\x7e]*")
# Path separators (either slash: some upstreams treat "\" as one) and C0/DEL/C1 controls.
_FORBIDDEN_RE = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class TopicInstance:
    """One concrete stream of a topic; ``path`` is its canonical key."""

    topic: TopicConfig
    path: str  # canonical instance path: the key of the one upstream subscription
    upstream_url: str
    params: tuple[tuple[str, str], ...]  # decoded values, in path order


@dataclass(frozen=True, slots=True)
class _Template:
    topic: TopicConfig
    segments: tuple[tuple[str | None, str | None], ...]  # (literal, None) or (None, param name)
    patterns: dict[str, re.Pattern[str]]

    def bind(self, decoded: list[str | ValueError], raw: list[str]) -> TopicInstance | None:
        """The instance for these request segments; None if the literals do not match."""
        pieces = list(zip(self.segments, decoded, raw, strict=True))
        if any(lit is not None and lit != value for (lit, _), value, _ in pieces):
            return None
        params: list[tuple[str, str]] = []
        encoded: dict[str, str] = {}
        parts: list[str] = []
        for (literal, name), value, raw_value in pieces:
            if name is None:
                parts.append(literal or "")
                continue
            if isinstance(value, ValueError):
                raise _bad_value(name, str(value), raw_value)
            problem = _value_problem(value, self.patterns.get(name))
            if problem is not None:
                raise _bad_value(name, problem, value)
            params.append((name, value))
            encoded[name] = quote(value, safe="")
            parts.append(encoded[name])
        upstream = PLACEHOLDER_RE.sub(lambda m: encoded[m.group(1)], self.topic.upstream)
        return TopicInstance(self.topic, "/" + "/".join(parts), upstream, tuple(params))


def _bad_value(name: str, problem: str, value: str) -> BadRequest:
    # The detail reaches the client: the value is repr-escaped and cut to ~60 characters.
    return BadRequest(f"path parameter {name!r}: expected {problem}, got {short_repr(value)}")


def _value_problem(value: str, pattern: re.Pattern[str] | None) -> str | None:
    if not value:
        return "a non-empty value"
    if len(value.encode()) > MAX_PARAM_BYTES:
        return f"at most {MAX_PARAM_BYTES} bytes"
    if value in (".", ".."):
        return "a value other than '.' or '..'"
    if _FORBIDDEN_RE.search(value):
        return "no '/', '\\' or control characters"
    if pattern is not None and not pattern.fullmatch(value):
        return "a value allowed by the topic's pattern"  # the pattern itself stays private
    return None


def _decode(segment: str) -> str | ValueError:
    """Strict percent-decoding of one raw segment (an error is returned, not raised)."""
    if not _WIRE_RE.fullmatch(segment):
        # A request-target is printable ASCII. Raw bytes beyond that reach us however the
        # server chose to decode them (latin-1, surrogates, ...), so guessing would be unsafe.
        return ValueError("non-ASCII, space and control characters to be %-encoded")
    if "%" not in segment:
        return segment
    if _BAD_PERCENT_RE.search(segment):
        return ValueError("valid %-escapes")
    try:
        return unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        return ValueError("%-escapes of valid UTF-8")


class TopicRouter:
    """Resolves raw request paths to :class:`TopicInstance`; immutable once built."""

    __slots__ = ("_by_raw_path", "_by_segments", "_lengths", "_templates")

    def __init__(self, topics: Iterable[TopicConfig]) -> None:
        self._by_raw_path: dict[str, TopicInstance] = {}
        self._by_segments: dict[tuple[str, ...], TopicInstance] = {}
        ranked: list[tuple[int, int, _Template]] = []
        for order, topic in enumerate(topics):
            segments = topic.segments
            if not topic.is_template:
                # setdefault: on a (validated-away) duplicate, config order wins as for templates
                instance = TopicInstance(topic, topic.path, topic.upstream, ())
                self._by_raw_path.setdefault(topic.path, instance)
                self._by_segments.setdefault(tuple(seg.text for seg in segments), instance)
                continue
            shape = tuple((None, seg.param) if seg.param else (seg.text, None) for seg in segments)
            patterns = {name: re.compile(regex) for name, regex in topic.params.items()}
            literals = sum(seg.param is None for seg in segments)
            ranked.append((-literals, order, _Template(topic, shape, patterns)))
        ranked.sort(key=lambda item: item[:2])
        self._templates: dict[int, list[_Template]] = {}
        for _, _, template in ranked:
            self._templates.setdefault(len(template.segments), []).append(template)
        # Segment counts any topic has: anything else is a 404 without decoding a byte.
        self._lengths = frozenset(self._templates) | {len(key) for key in self._by_segments}

    def resolve(self, raw_path: str) -> TopicInstance:
        """Map a raw (still percent-encoded, query-less) request path to its instance."""
        instance = self._by_raw_path.get(raw_path)
        if instance is not None:
            return instance
        if not raw_path.startswith("/"):
            raise NotFound()
        raw = raw_path[1:].split("/")
        if len(raw) not in self._lengths:
            raise NotFound()
        decoded = [_decode(segment) for segment in raw]
        if not any(isinstance(segment, ValueError) for segment in decoded):
            instance = self._by_segments.get(tuple(str(segment) for segment in decoded))
            if instance is not None:
                return instance
        rejection: BadRequest | None = None
        for template in self._templates.get(len(raw), ()):
            try:
                instance = template.bind(decoded, raw)
            except BadRequest as exc:
                rejection = rejection or exc
                continue
            if instance is not None:
                return instance
        if rejection is not None:
            raise rejection
        raise NotFound()
