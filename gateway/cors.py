"""CORS for cross-site ``EventSource`` (``withCredentials``) and the ticket endpoint.

Origins are configured as exact origins (``https://app.example.com``, port defaulting from the
scheme) or as wildcard subdomains (``https://*.example.com``: any subdomain at any depth,
``https://a.example.com`` and ``https://a.b.example.com``, but not ``https://example.com``,
``https://evilexample.com``, another scheme or another port unless written so). ``*`` allows
every origin and is accepted only when credentials are not (the configuration enforces it);
it is then answered with a literal ``*``. Otherwise the request's origin is echoed, never
``*``, with ``Vary: Origin`` so a cache never serves one origin's answer to another.
``Vary: Origin`` is sent for refused origins too, for the same reason.

Preflights (``OPTIONS`` with ``Access-Control-Request-Method``) allow ``GET``, ``HEAD`` and
``OPTIONS`` (and ``POST`` on the ticket path), and of the requested headers only
``last-event-id``, ``authorization`` and ``cache-control``: anything else is left out, which
makes the browser refuse the real request.

Sans-IO: headers in, header lists out.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.config import CorsConfig, OriginParts, parse_origin

__all__ = ["ALLOWED_REQUEST_HEADERS", "CorsPolicy"]

ALLOWED_REQUEST_HEADERS = ("last-event-id", "authorization", "cache-control")
_STREAM_METHODS = ("GET", "HEAD", "OPTIONS")
_VARY = (b"vary", b"origin")
_PREFLIGHT_VARY = (
    b"vary",
    b"origin, access-control-request-method, access-control-request-headers",
)


class CorsPolicy:
    """Decides CORS answers from :class:`~gateway.config.CorsConfig`; immutable."""

    __slots__ = ("_any", "_credentials", "_exact", "_max_age", "_ticket_path", "_wildcards")

    def __init__(self, config: CorsConfig, *, ticket_path: str | None = None) -> None:
        self._any = "*" in config.allowed_origins
        self._credentials = config.allow_credentials and not self._any
        self._max_age = str(config.max_age_s).encode()
        self._ticket_path = ticket_path
        self._exact: set[OriginParts] = set()
        self._wildcards: list[OriginParts] = []
        for entry in config.allowed_origins:
            parts = parse_origin(entry, allow_wildcard=True) if entry != "*" else None
            if parts is None:
                continue
            if parts.wildcard:
                self._wildcards.append(parts)
            else:
                self._exact.add(parts)

    def allow_origin(self, origin: str | None) -> bool:
        """Is a request from ``origin`` (the ``Origin`` header) allowed?"""
        if not origin:
            return False
        if self._any:
            return True
        parts = parse_origin(origin)
        if parts is None:  # "null", other schemes, junk
            return False
        if parts in self._exact:
            return True
        return any(
            parts.scheme == rule.scheme
            and parts.port == rule.port
            # The dot keeps "evilexample.com" out; endswith keeps "example.com" itself out.
            and parts.host.endswith("." + rule.host)
            for rule in self._wildcards
        )

    def _allow_origin_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        if self._any:
            return [(b"access-control-allow-origin", b"*")]
        headers = [(b"access-control-allow-origin", origin.encode("latin-1"))]
        if self._credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    def response_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """Headers for an actual (non-preflight) response to a request from ``origin``."""
        if origin is None:
            return []
        if not self.allow_origin(origin):
            return [_VARY]
        return [*self._allow_origin_headers(origin), _VARY]

    def preflight_headers(
        self, request_headers: Iterable[tuple[bytes, bytes]], path: str = ""
    ) -> list[tuple[bytes, bytes]] | None:
        """Headers for a 204 answer to a preflight, or None to refuse it (answer without CORS
        headers: the browser then blocks the request)."""
        origin: str | None = None
        method: str | None = None
        requested: list[str] = []
        for name, value in request_headers:
            name = name.lower()
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                method = value.decode("latin-1").strip()
            elif name == b"access-control-request-headers":
                requested += [h.strip().lower() for h in value.decode("latin-1").split(",")]
        if origin is None or method is None or not self.allow_origin(origin):
            return None
        methods: tuple[str, ...] = _STREAM_METHODS
        if self._ticket_path is not None and path == self._ticket_path:
            methods = (*_STREAM_METHODS, "POST")
        if method not in methods:  # methods are case-sensitive (RFC 9110 section 9.1)
            return None
        granted = [h for h in ALLOWED_REQUEST_HEADERS if h in requested]
        headers = self._allow_origin_headers(origin)
        headers.append((b"access-control-allow-methods", ", ".join(methods).encode()))
        if granted:
            headers.append((b"access-control-allow-headers", ", ".join(granted).encode()))
        headers.append((b"access-control-max-age", self._max_age))
        headers.append(_PREFLIGHT_VARY)
        return headers
