"""One rooted error tree.

GatewayError
├── ConfigError          invalid configuration; carries every problem found
└── HTTPError            answered to a client; carries its status
    ├── BadRequest       400
    ├── AuthError        RFC 6750 errors: carry a WWW-Authenticate header
    │   ├── Unauthorized 401  missing, invalid or expired credentials
    │   └── Forbidden    403  valid credentials without a grant for the topic
    ├── NotFound         404
    ├── MethodNotAllowed 405
    ├── URITooLong       414
    ├── RequestTooLarge  431
    └── ServiceUnavailable 503 (never for an EventSource stream: those get 200 + retry)

Auth errors carry only fixed, terse reasons: never the token, the subject or what the token
held. ``why`` is for the gateway's own log (still never the token itself).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid. ``problems`` holds one line per problem,
    each starting with the dotted path of the offending key."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.problems))

    def render(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)


class HTTPError(GatewayError):
    status: int = 500
    reason: str = "error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.reason
        super().__init__(self.detail)


class BadRequest(HTTPError):
    status = 400
    reason = "bad request"


class NotFound(HTTPError):
    status = 404
    reason = "not found"


class MethodNotAllowed(HTTPError):
    status = 405
    reason = "method not allowed"


class AuthError(HTTPError):
    """Base of the RFC 6750 answers; ``why`` is a log-only hint, never sent to the client."""

    status = 401
    reason = "invalid token"
    details: frozenset[str] = frozenset()

    def __init__(self, detail: str | None = None, *, why: str = "") -> None:
        # Only the fixed texts can reach a client: a token or a claim can never leak through.
        if detail is not None and detail not in self.details:
            raise ValueError(f"not a fixed {type(self).__name__} reason: {detail!r}")
        super().__init__(detail)
        self.why = why

    @property
    def error_code(self) -> str | None:
        """The RFC 6750 ``error`` code, or None for a bare challenge."""
        return "invalid_token"

    def www_authenticate(self) -> bytes:
        """The ``WWW-Authenticate`` value (RFC 6750 section 3)."""
        if self.error_code is None:
            # A request without any credentials gets no error code (RFC 6750 section 3.1).
            return b"Bearer"
        return f'Bearer error="{self.error_code}", error_description="{self.detail}"'.encode()

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Response headers to add: the challenge, and no caching of the refusal."""
        return [(b"www-authenticate", self.www_authenticate()), (b"cache-control", b"no-store")]


class Unauthorized(AuthError):
    """401: no credentials ("missing credentials"), or unusable ones ("invalid token",
    "token expired")."""

    status = 401
    reason = "invalid token"
    details = frozenset({"missing credentials", "invalid token", "token expired"})

    @property
    def error_code(self) -> str | None:
        return None if self.detail == "missing credentials" else "invalid_token"


class Forbidden(AuthError):
    """403: the credentials are fine but lack a grant for one of the requested topics."""

    status = 403
    reason = "not granted"
    details = frozenset({"not granted"})

    @property
    def error_code(self) -> str | None:
        return "insufficient_scope"


class URITooLong(HTTPError):
    status = 414
    reason = "uri too long"


class RequestTooLarge(HTTPError):
    status = 431
    reason = "request header fields too large"


class ServiceUnavailable(HTTPError):
    """503, for plain requests (the ticket endpoint); streams answer overload with 200."""

    status = 503
    reason = "service unavailable"
