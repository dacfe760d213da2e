"""HTTP clients for end-to-end tests: a parsing SSE client on httpx, and a raw-socket one.

* :func:`open_sse` / :class:`SSEStream` -- what a well-behaved EventSource sees: de-chunked body
  bytes, parsed events, comments and ``retry``, read by a background task so the test's loop is
  never blocked. Works over HTTP/1.1 and HTTP/2.
* :class:`RawSSEClient` -- the exact bytes on the wire (chunk framing included), and the
  misbehaving clients a gateway must survive: ones that stop reading, or vanish with a RST.
* :func:`request` -- a one-shot request without httpx, for plain endpoints.

The SSE parser here is deliberately self-contained (it does not import ``gateway.sse``), so
tests check the gateway's encoder against an independent reading of the WHATWG rules.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import re
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import cast

import httpx

__all__ = [
    "ParsedEvent",
    "RawSSEClient",
    "SSEParser",
    "SSEStream",
    "StreamEnded",
    "dechunk",
    "open_sse",
    "request",
]

_LINGER_RST = struct.pack("ii", 1, 0)
_TAIL = 400  # how many trailing body bytes a failure message shows

HeaderItems = Mapping[str, str] | Sequence[tuple[str, str]]


class StreamEnded(Exception):
    """The server ended the stream before what the test was waiting for arrived."""


# --------------------------------------------------------------------------------------------
# WHATWG event-stream parsing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedEvent:
    """One dispatched event. ``id`` is the stream's last-event-id at dispatch (``""`` if none
    was ever set), exactly what ``MessageEvent.lastEventId`` would be in a browser."""

    data: str
    type: str = "message"
    id: str = ""


class SSEParser:
    """Incremental parser for ``text/event-stream`` following the WHATWG HTML rules.

    Feed it body bytes in arbitrary pieces; it handles UTF-8 split across pieces, a leading
    BOM, ``\\r\\n`` / ``\\r`` / ``\\n`` line ends (including a ``\\r\\n`` split between pieces),
    comments, ``retry`` and the ``id`` rules (an id containing NUL is ignored; the id persists
    across events until changed).
    """

    _LINE_END = re.compile(r"\r\n|\r|\n")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text of the current, not yet terminated line
        self._skip_lf = False  # the previous piece ended in \r: a leading \n belongs to it
        self._started = False  # a BOM is only skipped at the very start of the stream
        self._data: list[str] = []
        self._type = ""
        self._id_buffer = ""
        self.last_event_id = ""
        self.retry: int | None = None
        self.comments: list[str] = []  # text after the ':' of each comment line, verbatim

    def feed(self, chunk: bytes) -> list[ParsedEvent]:
        """Consume bytes; return the events they completed."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        buffer = self._pending + text
        events: list[ParsedEvent] = []
        position = 0
        for match in self._LINE_END.finditer(buffer):
            event = self._line(buffer[position : match.start()])
            if event is not None:
                events.append(event)
            position = match.end()
            if match.group() == "\r" and position == len(buffer):
                self._skip_lf = True
        self._pending = buffer[position:]
        return events

    def _line(self, line: str) -> ParsedEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:])
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ParsedEvent | None:
        self.last_event_id = self._id_buffer
        data, event_type = self._data, self._type
        self._data, self._type = [], ""
        if not data:
            return None
        return ParsedEvent("\n".join(data), event_type or "message", self.last_event_id)


# --------------------------------------------------------------------------------------------
# httpx-based streaming client
# --------------------------------------------------------------------------------------------


class SSEStream:
    """An open SSE response read in the background by a task, with awaitable expectations.

    ``raw`` holds every body byte received (after de-chunking, before any parsing), ``events``
    the parsed events. ``closed`` turns true when the body ended (cleanly or not; ``error``
    tells which) or after :meth:`aclose`. Use as ``async with await open_sse(url) as s:``.
    """

    def __init__(
        self,
        response: httpx.Response,
        context: AbstractAsyncContextManager[httpx.Response],
        client: httpx.AsyncClient,
        owns_client: bool,
    ) -> None:
        self.response = response
        self.status: int = response.status_code
        self.headers: httpx.Headers = response.headers
        self.http_version: str = response.http_version
        self.raw = bytearray()
        self.events: list[ParsedEvent] = []
        self.closed = False
        self.error: Exception | None = None  # why the body ended, if not cleanly
        self._context = context
        self._client = client
        self._owns_client = owns_client
        self._parser = SSEParser()
        self._waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(
            self._read(), name=f"SSEStream reader {response.url}"
        )

    @property
    def comments(self) -> list[str]:
        return self._parser.comments

    @property
    def retry(self) -> int | None:
        return self._parser.retry

    @property
    def last_event_id(self) -> str:
        return self._parser.last_event_id

    async def _read(self) -> None:
        try:
            async for chunk in self.response.aiter_raw():
                self.raw += chunk
                self.events.extend(self._parser.feed(chunk))
                self._notify()
        except Exception as exc:  # reset, truncated chunk, ...: the test inspects it
            self.error = exc
        finally:
            self.closed = True
            self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _state(self) -> str:
        tail = bytes(self.raw[-_TAIL:])
        return (
            f"status {self.status}, {len(self.events)} event(s), {len(self.comments)} "
            f"comment(s), {len(self.raw)} byte(s), closed={self.closed}, error={self.error!r}, "
            f"last bytes: {tail!r}"
        )

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self.closed:
                        raise StreamEnded(f"stream ended before {what}: {self._state()}")
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise TimeoutError(f"no {what} within {timeout}s: {self._state()}") from None

    async def wait_events(self, n: int, timeout: float = 10.0) -> list[ParsedEvent]:
        """Wait until at least ``n`` events arrived; return the first ``n``.

        Raises :class:`StreamEnded` if the stream ends first, ``TimeoutError`` on timeout.
        (Check ``events`` for anything beyond the first ``n``.)
        """
        await self._wait_until(lambda: len(self.events) >= n, timeout, f"{n} event(s)")
        return self.events[:n]

    async def wait_comments(self, n: int, timeout: float = 10.0) -> list[str]:
        """Wait until at least ``n`` comment lines arrived; return the first ``n``."""
        await self._wait_until(lambda: len(self.comments) >= n, timeout, f"{n} comment(s)")
        return self.comments[:n]

    async def wait_bytes(
        self, expected: bytes | str | Callable[[bytes], bool], timeout: float = 10.0
    ) -> bytes:
        """Wait until the raw body contains ``expected`` (or satisfies it, if callable);
        return the whole raw body so far."""
        if callable(expected):
            check = expected
            what = "bytes matching the predicate"
        else:
            needle = expected.encode() if isinstance(expected, str) else expected
            what = f"bytes {needle!r}"

            def check(raw: bytes) -> bool:
                return needle in raw

        await self._wait_until(lambda: check(bytes(self.raw)), timeout, what)
        return bytes(self.raw)

    async def wait_closed(self, timeout: float = 10.0) -> Exception | None:
        """Wait until the server ends the stream; return the error it ended with, if any."""
        await self._wait_until(lambda: self.closed, timeout, "end of stream")
        return self.error

    async def aclose(self) -> None:
        """Disconnect from the client side. Never raises (except to propagate cancellation)."""
        if self._closing:
            return
        self._closing = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._context.__aexit__(None, None, None)
        if self._owns_client:
            with contextlib.suppress(Exception):
                await self._client.aclose()
        self.closed = True
        self._notify()

    async def __aenter__(self) -> SSEStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def open_sse(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    http2: bool = False,
    client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,
) -> SSEStream:
    """GET ``url`` as an EventSource would and return once the response head arrived.

    Sends ``Accept: text/event-stream`` unless ``headers`` overrides it. Without ``client`` a
    private client is created (and closed by :meth:`SSEStream.aclose`); it ignores proxy
    environment variables, since tests talk to loopback only. ``http2=True`` on an ``http://``
    URL means HTTP/2 with prior knowledge (h2c); for TLS pass a configured ``client``.
    ``timeout`` bounds connecting and the response head; reading the body never times out
    (streams are idle for long stretches), the ``wait_*`` methods bound that instead.
    """
    owns_client = client is None
    if client is None:
        client = httpx.AsyncClient(http1=not http2, http2=http2, trust_env=False)
    request_headers = {"accept": "text/event-stream"}
    request_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    context = client.stream(
        "GET", url, headers=request_headers, timeout=httpx.Timeout(timeout, read=None)
    )
    try:
        response = await context.__aenter__()
    except BaseException:
        if owns_client:
            with contextlib.suppress(Exception):
                await client.aclose()
        raise
    return SSEStream(response, context, client, owns_client)


# --------------------------------------------------------------------------------------------
# Raw-socket client
# --------------------------------------------------------------------------------------------


def _header_lines(host: str, port: int, headers: HeaderItems) -> list[tuple[str, str]]:
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    if not any(name.lower() == "host" for name, _ in items):
        host_text = f"[{host}]" if ":" in host else host
        items.insert(0, ("Host", f"{host_text}:{port}"))
    return items


def _encode_request(
    method: str, path: str, header_lines: Sequence[tuple[str, str]], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in header_lines)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {lines[0]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def _find_header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    found = None
    for key, value in headers:
        if key.lower() == name.lower():
            found = value
    return found


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """Decode HTTP/1.1 chunked framing as far as it is complete.

    Returns ``(payload, finished)``; ``finished`` is true once the zero-size chunk was seen.
    A trailing incomplete chunk is left out. Raises ``ValueError`` on bad framing.
    """
    payload = bytearray()
    position = 0
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return bytes(payload), False
        size_text = data[position:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"bad chunk size line {data[position:line_end]!r}") from None
        if size == 0:
            return bytes(payload), True
        start = line_end + 2
        if len(data) < start + size + 2:
            return bytes(payload), False
        if data[start + size : start + size + 2] != b"\r\n":
            raise ValueError(f"chunk of {size} bytes at offset {start} not followed by CRLF")
        payload += data[start : start + size]
        position = start + size + 2


class RawSSEClient:
    """A bare HTTP/1.1 client on asyncio streams, for exact-wire and misbehaving-client tests.

    :meth:`connect` sends the request and reads the response head (``status``, ``headers`` in
    wire order, ``head_bytes``); the body is then read as it is on the wire, chunk framing
    included, into ``body``. :meth:`pause` stops reading at the socket level (with a small
    ``rcvbuf`` the server's writes back up quickly: a slow consumer), :meth:`abort` vanishes
    with a RST.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        # StreamWriter only promises a WriteTransport, but a socket connection's transport
        # reads too, and pause()/resume() need its reading side.
        self._transport = cast(asyncio.Transport, writer.transport)
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.head_bytes = b""
        self.body = bytearray()  # every body byte read so far, framing included
        self.eof = False
        self.paused = False

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str,
        headers: HeaderItems = (),
        *,
        method: str = "GET",
        rcvbuf: int | None = None,
        timeout: float = 10.0,
    ) -> RawSSEClient:
        """Connect, send ``<method> <path> HTTP/1.1`` with Host (unless given) and ``headers``
        exactly as given, and read the response head."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                # Must precede connect(): the receive window is negotiated in the handshake.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
                reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        client = cls(reader, writer)
        try:
            writer.write(_encode_request(method, path, _header_lines(host, port, headers)))
            async with asyncio.timeout(timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            client.abort()
            raise ConnectionError(
                f"closed before a complete response head: {exc.partial!r}"
            ) from None
        except BaseException:
            client.abort()
            raise
        client.head_bytes = head
        client.status, client.reason, client.headers = _parse_head(head)
        return client

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (case-insensitive), or None."""
        return _find_header(self.headers, name)

    def pause(self) -> None:
        """Stop reading from the socket, so the kernel buffers fill and the server's writes
        block. Any ``read_*`` call resumes reading."""
        self.paused = True
        if not self._transport.is_closing():
            self._transport.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    async def read_body(self, n: int | None = None, *, timeout: float = 5.0) -> bytes:
        """With ``n``: exactly ``n`` body bytes (``TimeoutError`` / ``EOFError`` if they do not
        come). Without: whatever arrives until ``timeout`` elapses or EOF -- a time window, for
        asserting what (or that nothing) arrived in a period."""
        self.resume()
        if n is not None:
            try:
                async with asyncio.timeout(timeout):
                    data = await self._reader.readexactly(n)
            except asyncio.IncompleteReadError as exc:
                self.body += exc.partial
                self.eof = True
                raise EOFError(f"EOF after {len(exc.partial)} of {n} bytes") from None
            self.body += data
            return data
        got = bytearray()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while chunk := await self._reader.read(65536):
                    got += chunk
                    self.body += chunk
                self.eof = True
        return bytes(got)

    async def read_until(self, marker: bytes, *, timeout: float = 10.0) -> bytes:
        """Read until ``marker`` appears in the bytes read by this call; return those bytes."""
        self.resume()
        got = bytearray()
        try:
            async with asyncio.timeout(timeout):
                while marker not in got:
                    chunk = await self._reader.read(65536)
                    if not chunk:
                        self.eof = True
                        raise EOFError(f"EOF before {marker!r}; read {bytes(got)!r}")
                    got += chunk
                    self.body += chunk
        except TimeoutError:
            raise TimeoutError(f"no {marker!r} within {timeout}s; read {bytes(got)!r}") from None
        return bytes(got)

    async def read_to_eof(self, *, timeout: float = 10.0) -> bytes:
        """Read until the server closes; return what this call read. ``TimeoutError`` if the
        connection is still open after ``timeout``; a reset raises ``ConnectionResetError``."""
        self.resume()
        got = bytearray()
        try:
            async with asyncio.timeout(timeout):
                while chunk := await self._reader.read(65536):
                    got += chunk
                    self.body += chunk
        except TimeoutError:
            raise TimeoutError(f"still open after {timeout}s; read {bytes(got)!r}") from None
        self.eof = True
        return bytes(got)

    def abort(self) -> None:
        """Vanish with a RST (SO_LINGER 0), as a crashed client or a dropped NAT entry would."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self._transport.abort()

    async def close(self) -> None:
        """Orderly close (FIN). Never raises."""
        with contextlib.suppress(Exception):
            self._writer.close()
            await self._writer.wait_closed()

    async def __aenter__(self) -> RawSSEClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: HeaderItems = (),
    body: bytes = b"",
    *,
    timeout: float = 10.0,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One plain request without httpx: returns ``(status, headers, body)``.

    Sends Host, Content-Length (when there is a body) and ``Connection: close`` unless given.
    The body is read by Content-Length, chunked framing, or until close.
    """
    lines = _header_lines(host, port, headers)
    names = {name.lower() for name, _ in lines}
    if body and "content-length" not in names:
        lines.append(("Content-Length", str(len(body))))
    if "connection" not in names:
        lines.append(("Connection", "close"))
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(_encode_request(method, path, lines, body))
            head = await reader.readuntil(b"\r\n\r\n")
            status, _, response_headers = _parse_head(head)
            length = _find_header(response_headers, "content-length")
            encoding = (_find_header(response_headers, "transfer-encoding") or "").lower()
            if method.upper() == "HEAD" or status in (204, 304) or 100 <= status < 200:
                payload = b""
            elif "chunked" in encoding:
                framed = bytearray()
                while True:
                    payload, finished = dechunk(bytes(framed))
                    if finished:
                        break
                    chunk = await reader.read(65536)
                    if not chunk:
                        raise EOFError(f"EOF inside a chunked body: {bytes(framed)!r}")
                    framed += chunk
            elif length is not None:
                payload = await reader.readexactly(int(length))
            else:
                payload = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return status, response_headers, payload
