"""One rooted error tree.

GatewayError
├── ConfigError          invalid configuration; carries every problem found
├── SSEProtocolError     an upstream stream broke the SSE framing rules or our bounds
└── HTTPError            answered to a client; carries its status
    ├── BadRequest       400
    ├── NotFound         404
    └── MethodNotAllowed 405
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


class SSEProtocolError(GatewayError):
    """An upstream stream exceeded a bound or was otherwise unusable."""


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
