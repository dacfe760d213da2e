"""Gateway configuration: YAML text in, immutable validated objects out.

Schema (every key is optional unless marked *required*; defaults shown)::

    server:
      listen: ["127.0.0.1:8080"]   # non-empty; "host:port", "[v6]:port", "unix:/abs/path", "fd://N"
      tls: null                    # or {cert_file, key_file, ca_file: null, min_version: TLSv1.2};
                                   # files are opened when the server starts, not here
      workers: 1                   # 1..64 processes, each an independent gateway
      index_file: null             # an HTML file served at "/" (read at start)
      h2_max_concurrent_streams: 100   # 1..1000, per HTTP/2 connection
      h2_max_header_list_bytes: 16384  # 1024..1048576, per request (names + values + 32 each)
      h2_max_resets_per_s: 20.0    # > 0, client RST_STREAMs per connection, sustained ...
      h2_reset_burst: 100          # >= 1, ... and in a burst; beyond: GOAWAY ENHANCE_YOUR_CALM
      drain_window_s: 10.0         # 0..600, SIGTERM ends streams spread over this window
    stream:                        # the browser-facing side
      heartbeat_s: 15.0            # 0 < x <= 300
      retry_min_ms: 1000           # >= 0
      retry_max_ms: 10000          # >= retry_min_ms
      send_timeout_s: 10.0         # > 0
      queue_max_events: 1000       # >= 1, per client
      queue_max_bytes: 1048576     # >= 1024, per client
      policy: disconnect           # slow client: disconnect | drop_oldest | latest
      max_topics_per_connection: 20  # 1..100, topics on one multiplexed /events stream
    replay:                        # per topic instance ring of recent events, for resume
      max_events: 1000             # >= 0 (0: no replay)
      max_bytes: 4194304           # >= 0
      max_age_s: 3600.0            # >= 0
    upstream:                      # the backend side
      connect_timeout_s: 10.0      # > 0
      stall_timeout_s: 60.0        # > 0
      backoff_initial_ms: 250      # >= 1
      backoff_max_ms: 30000        # >= backoff_initial_ms
      max_line_bytes: 65536        # >= 1024
      max_event_bytes: 1048576     # >= max_line_bytes
      headers: {}                  # sent upstream for every topic
    topics:                        # *required*, at least one
      - name: orders               # *required*, ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$, unique
        path: /orders/{id}         # *required*, public path; each {param} fills a whole segment
        upstream: https://backend/orders/{id}/events   # *required*, exactly the path's {params}
        public: false
        eager: false               # subscribe at start-up; literal paths only
        linger_s: 30.0             # keep the upstream open this long after the last client left
        headers: {}                # merged over upstream.headers by the caller
        params: {id: "[0-9]+"}     # a param's decoded value must fullmatch its regex
        policy: null               # null: use stream.policy
        queue_max_events: null     # null: use stream.queue_max_events
        queue_max_bytes: null      # null: use stream.queue_max_bytes
        stall_timeout_s: null      # null: use upstream.stall_timeout_s
        replay: null               # null: use the top-level replay section
    auth:                          # optional; without it every topic is public
      header: true                 # accept "Authorization: Bearer <token>"
      cookie: sse_token            # cookie name; null disables
      query_param: token           # query parameter name (tokens and tickets); null disables
      # Precedence: header, then cookie, then query parameter. The first one PRESENT is used,
      # even if invalid: there is no fallback to the next (see gateway.auth).
      tokens:                      # opaque bearer tokens, by digest only
        - sha256: "<64 hex>"       # *required*, sha256 hex of the token
          subject: dashboard       # *required*, for logs and per-subject limits
          topics: [prices, "/orders/*"]  # grants: configured topic names or path patterns
          expires_at: null         # unix seconds
      jwt:                         # optional; tokens or jwt (or both) are required
        algorithms: [HS256]        # *required*, one family: all HS*, or RS*/PS*/ES*/EdDSA
        secret: null               # HS* only, required then; >= 32/48/64 bytes for HS256/384/512
        public_key_files: []       # asymmetric only; PEM public keys, loaded and checked here
        jwks_url: null             # asymmetric only; http(s); asymmetric needs this or files
        jwks_refresh_s: 300.0      # > 0, JWKS cache lifetime
        jwks_cooldown_s: 30.0      # >= 0, at most one refetch per cooldown for unknown kids
        jwks_timeout_s: 5.0        # 0 < x <= 60, whole fetch
        issuer: null               # exact match when set (then required)
        audience: null             # string or non-empty list; when set, required, any match
        typ: null                  # e.g. at+jwt; JOSE header typ, case-insensitive
        leeway_s: 30.0             # 0..60
        topics_claim: topics       # claim holding the grants (a list of strings, required)
        subject_claim: sub         # claim naming the subject (a non-empty string, required)
      tickets:
        enabled: true              # needs query_param (tickets travel in it)
        ttl_s: 30.0                # 1..60
        path: /_gateway/ticket     # under /_gateway/; POST with Authorization: Bearer
      cors:
        allow_credentials: true
        allowed_origins: []        # "https://app.example.com", "https://*.example.com", or
                                   # "*" (only with allow_credentials false)
        max_age_s: 600             # 0..86400, preflight cache
    limits:                        # always on, per process
      max_connections: 16384       # >= 1, streams in total
      max_connections_per_ip: 1000 # >= 1
      max_connections_per_subject: 100  # >= 1
      trusted_proxies: []          # CIDRs (or "unix") whose X-Forwarded-For is believed
      max_header_bytes: 8192       # 1024..1048576, names + values + 4 per header (431)
      max_headers: 64              # 8..1000 (431)
      max_url_bytes: 4096          # 256..65536, raw path + query (414)
      overload_retry_min_ms: 10000 # >= 0; overload answer: 200, "retry:" in [min, max], close
      overload_retry_max_ms: 30000 # >= overload_retry_min_ms
    admin:                         # who may read /metrics and the status page
      token: null                  # >= 16 chars; then "Authorization: Bearer" or ?token= is needed
      allow: []                    # CIDRs (or "unix") of clients allowed; empty: any

Types are strict: ``"15"`` is not an integer and ``1`` or ``"true"`` is not a boolean, because
a silently coerced typo is worse than a start-up error. An integer is accepted where a number is
expected, and YAML lists become tuples. Duplicate YAML keys are rejected.

String values (never keys) may use ``${VAR}``, ``${VAR:-default}`` (default when unset or empty)
and ``$$`` for a literal ``$``. Substitution happens on the parsed tree, so a variable's value is
always one plain string and can never inject YAML structure.

Every problem found is collected into one :class:`~gateway.errors.ConfigError`, one line each::

    topics[0].upstream: expected an http or https URL, got 'ftp://x'
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import (
    Annotated,
    Any,
    Literal,
    NamedTuple,
    NoReturn,
    TypeVar,
    Union,
    get_args,
    get_origin,
)
from urllib.parse import urlsplit

import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from gateway.errors import ConfigError

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "PLACEHOLDER_RE",
    "RESERVED_PATHS",
    "RESERVED_PREFIX",
    "AdminConfig",
    "AuthConfig",
    "CorsConfig",
    "FrozenDict",
    "GatewayConfig",
    "JWTConfig",
    "LimitsConfig",
    "OpaqueTokenConfig",
    "OriginParts",
    "Policy",
    "ReplayConfig",
    "Segment",
    "ServerConfig",
    "StreamConfig",
    "TLSConfig",
    "TicketsConfig",
    "TopicConfig",
    "UpstreamConfig",
    "format_loc",
    "grant_problem",
    "load_config",
    "load_public_key_file",
    "parse_config",
    "parse_origin",
    "public_key_algorithms",
    "short_repr",
    "split_path",
]

Policy = Literal["disconnect", "drop_oldest", "latest"]
_T = TypeVar("_T")

# Paths the gateway serves itself; a topic there would shadow (or be shadowed by) them.
RESERVED_PATHS = frozenset({"/", "/events", "/healthz", "/readyz", "/metrics", "/status"})
RESERVED_PREFIX = "/_gateway/"
_RESERVED_TEXT = ", ".join(sorted(RESERVED_PATHS)) + ", " + RESERVED_PREFIX + "..."

PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# RFC 3986 pchar minus pct-encoded: a literal segment then reads the same raw and decoded.
_LITERAL_SEGMENT_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]+")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_URL_CHARS_RE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST_PORT_RE = re.compile(r"(?P<host>[^\[\]:/]+):(?P<port>[0-9]{1,5})")
_V6_PORT_RE = re.compile(r"\[(?P<host>[^\[\]]+)\]:(?P<port>[0-9]{1,5})")
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_LISTEN_FORMS = "'host:port', '[v6]:port', 'unix:/abs/path' or 'fd://N'"

# Our own pydantic error types: INVALID renders as "<msg>, got <input>", CONFLICT verbatim.
_INVALID = "gateway_invalid"
_CONFLICT = "gateway_conflict"


def short_repr(value: object, limit: int = 60) -> str:
    """``repr`` for error messages: YAML spelling of scalars, cut to about ``limit`` chars."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FrozenDict(dict[str, str]):
    """A read-only, hashable ``dict``: keeps frozen models frozen all the way down."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("configuration mappings are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, str]]]:
        # The default dict-subclass pickling calls __setitem__, which we refuse.
        return (FrozenDict, (dict(self),))


# --------------------------------------------------------------------------- error plumbing


def _invalid(expected: str) -> PydanticCustomError:
    return PydanticCustomError(_INVALID, expected)


def _problem(loc: tuple[str | int, ...], expected: str, value: object) -> InitErrorDetails:
    return {"type": _invalid(expected), "loc": loc, "input": value}


def _fail(errors: list[InitErrorDetails]) -> NoReturn:
    # Raised inside a validator, pydantic re-roots these locs under the field being validated.
    raise ValidationError.from_exception_data("GatewayConfig", errors)


def _reraisable(exc: ValidationError) -> list[InitErrorDetails]:
    """Turn reported errors back into raisable ones, so they can be merged with more."""
    out: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        ours = kind in (_INVALID, _CONFLICT)  # only built-in types can be re-created by name
        detail: InitErrorDetails = {
            "type": PydanticCustomError(kind, err["msg"]) if ours else kind,
            "loc": err["loc"],
            "input": err["input"],
        }
        if "ctx" in err:
            detail["ctx"] = err["ctx"]
        out.append(detail)
    return out


# --------------------------------------------------------------------------- path templates


class Segment(NamedTuple):
    """One "/"-separated piece of a topic path: literal ``text``, or a ``{param}``."""

    text: str
    param: str | None


def split_path(path: str) -> tuple[Segment, ...]:
    """Segments of an already validated topic path, in order."""
    return tuple(
        Segment(part, match.group(1) if (match := PLACEHOLDER_RE.fullmatch(part)) else None)
        for part in path[1:].split("/")
    )


def _path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return "expected a path starting with '/'"
    if path in RESERVED_PATHS or path == RESERVED_PREFIX[:-1] or path.startswith(RESERVED_PREFIX):
        return f"expected a path not reserved by the gateway ({_RESERVED_TEXT})"
    if "?" in path or "#" in path:
        return "expected a path without '?' or '#'"
    if path.endswith("/"):
        return "expected a path without a trailing '/'"
    if "//" in path:
        return "expected a path without empty segments ('//')"
    seen: set[str] = set()
    for part in path[1:].split("/"):
        if part in (".", ".."):
            return "expected a path without '.' or '..' segments"
        if "{" in part or "}" in part:
            match = PLACEHOLDER_RE.fullmatch(part)
            if match is None:
                if PLACEHOLDER_RE.search(part):
                    return f"expected each {{param}} to fill a whole path segment, not {part!r}"
                return "expected {param} names matching [A-Za-z_][A-Za-z0-9_]*"
            if match.group(1) in seen:
                return f"expected distinct parameter names, {part} repeats"
            seen.add(match.group(1))
        elif not _LITERAL_SEGMENT_RE.fullmatch(part):
            return (
                "expected literal segments of unreserved characters, sub-delims, ':' or '@' "
                "(no spaces or %-escapes)"
            )
    return None


def _params_of(path: str) -> tuple[str, ...]:
    return tuple(seg.param for seg in split_path(path) if seg.param is not None)


# --------------------------------------------------------------------------- scalar checks


def _check(problem: str | None, value: str) -> str:
    if problem is not None:
        raise _invalid(problem)
    return value


def _check_name(name: str) -> str:
    ok = _NAME_RE.fullmatch(name)
    return _check(None if ok else "expected a name matching [A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name)


def _check_path(path: str) -> str:
    return _check(_path_problem(path), path)


def _listen_problem(entry: str) -> str | None:
    if entry.startswith("unix:"):
        sock = entry.removeprefix("unix:")
        ok = sock.startswith("/") and len(sock) > 1 and "\0" not in sock
        return None if ok else "expected an absolute socket path after 'unix:'"
    if entry.startswith("fd://"):
        ok = re.fullmatch(r"[0-9]{1,9}", entry.removeprefix("fd://")) is not None
        return None if ok else "expected a file descriptor number after 'fd://'"
    if match := _V6_PORT_RE.fullmatch(entry):
        try:
            ipaddress.IPv6Address(match["host"])
        except ValueError:
            return "expected an IPv6 address inside '[...]'"
    elif match := _HOST_PORT_RE.fullmatch(entry):
        host = match["host"]
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                return "expected a valid IPv4 address"
        elif not _HOSTNAME_RE.fullmatch(host):
            return "expected a valid hostname"
    else:
        return f"expected {_LISTEN_FORMS}"
    return None if int(match["port"]) <= 65535 else "expected a port from 0 to 65535"


def _check_listen(entry: str) -> str:
    return _check(_listen_problem(entry), entry)


def _check_header_name(name: str) -> str:
    ok = _TOKEN_RE.fullmatch(name)
    return _check(None if ok else "expected a header name of HTTP token characters", name)


def _check_header_value(value: str) -> str:
    bad = any(char in value for char in "\r\n\0")
    return _check("expected a header value without CR, LF or NUL" if bad else None, value)


def _upstream_problem(url: str) -> str | None:
    """Checks the URL shape; placeholders are validated after a dummy substitution."""
    leftover = PLACEHOLDER_RE.sub("", url)
    if "{" in leftover or "}" in leftover:
        return "expected {param} placeholders with names matching [A-Za-z_][A-Za-z0-9_]*"
    concrete = PLACEHOLDER_RE.sub("x", url)
    if not _URL_CHARS_RE.fullmatch(concrete) or _BAD_PERCENT_RE.search(concrete):
        return "expected a URL of URL characters only (percent-encode the rest)"
    try:
        parts = urlsplit(concrete)
        port = parts.port
    except ValueError:  # bad port number or unbalanced IPv6 brackets
        return "expected an http or https URL with a valid host and port"
    if parts.scheme not in ("http", "https"):
        return "expected an http or https URL"
    if "#" in concrete:
        return "expected a URL without a #fragment"
    if "@" in parts.netloc:
        return "expected a URL without userinfo (send credentials in headers)"
    if not parts.hostname:
        return "expected an http or https URL with a host"
    if port == 0:
        return "expected a port from 1 to 65535"
    if "{" in urlsplit(url).netloc:
        # A value spliced into the authority could redirect the request to another host.
        return "expected {param} placeholders only in the URL path or query"
    return None


def _check_upstream(url: str) -> str:
    return _check(_upstream_problem(url), url)


ListenAddress = Annotated[StrictStr, AfterValidator(_check_listen)]
HeaderName = Annotated[StrictStr, AfterValidator(_check_header_name)]
HeaderValue = Annotated[StrictStr, AfterValidator(_check_header_value)]
Headers = Annotated[dict[HeaderName, HeaderValue], AfterValidator(FrozenDict)]
ParamPatterns = Annotated[dict[StrictStr, StrictStr], AfterValidator(FrozenDict)]


def _non_empty(value: object) -> object:
    # Checked before item validation: pydantic's own min_length counts only the items that
    # validated, so one broken entry would also be reported as "empty".
    if isinstance(value, list | tuple) and not value:
        raise _invalid("expected a non-empty list")
    return value


NonEmpty = Annotated[_T, BeforeValidator(_non_empty)]


def _not_below(value: int, info: ValidationInfo, other: str) -> int:
    # info.data only holds fields that validated, so a bad `other` is reported once, by itself.
    floor = info.data.get(other)
    if isinstance(floor, int) and value < floor:
        raise _invalid(f"expected an integer >= {other} ({floor})")
    return value


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    """Shared settings: unknown keys are errors; instances are immutable (and hashable)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TLSConfig(_Model):
    """Certificate files for HTTPS; existence is checked when the server starts, not here.
    ``cert_file`` holds the certificate, optionally followed by its chain; ``ca_file``
    (optional) holds more chain certificates, sent after those of ``cert_file``."""

    cert_file: StrictStr = Field(min_length=1)
    key_file: StrictStr = Field(min_length=1)
    ca_file: StrictStr | None = Field(None, min_length=1)
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"


class ServerConfig(_Model):
    """Where and how the gateway listens."""

    listen: NonEmpty[tuple[ListenAddress, ...]] = ("127.0.0.1:8080",)
    tls: TLSConfig | None = None
    workers: StrictInt = Field(1, ge=1, le=64)
    index_file: StrictStr | None = Field(None, min_length=1)
    h2_max_concurrent_streams: StrictInt = Field(100, ge=1, le=1000)
    h2_max_header_list_bytes: StrictInt = Field(16384, ge=1024, le=1048576)
    h2_max_resets_per_s: StrictFloat = Field(20.0, gt=0)
    h2_reset_burst: StrictInt = Field(100, ge=1)
    # SIGTERM ends the streams spread over this many seconds (clients come back
    # spread too); the process exits within it plus about a second.
    drain_window_s: StrictFloat = Field(10.0, ge=0, le=600)


class StreamConfig(_Model):
    """The browser-facing side: heartbeats, reconnect hints and per-client buffering."""

    heartbeat_s: StrictFloat = Field(15.0, gt=0, le=300)
    retry_min_ms: StrictInt = Field(1000, ge=0)
    retry_max_ms: StrictInt = Field(10000, ge=0)
    send_timeout_s: StrictFloat = Field(10.0, gt=0)
    queue_max_events: StrictInt = Field(1000, ge=1)
    queue_max_bytes: StrictInt = Field(1048576, ge=1024)
    policy: Policy = "disconnect"
    max_topics_per_connection: StrictInt = Field(20, ge=1, le=100)

    @field_validator("retry_max_ms")
    @classmethod
    def _retry_max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        return _not_below(value, info, "retry_min_ms")


class UpstreamConfig(_Model):
    """The backend side: timeouts, reconnect backoff, framing limits, shared headers."""

    connect_timeout_s: StrictFloat = Field(10.0, gt=0)
    stall_timeout_s: StrictFloat = Field(60.0, gt=0)
    backoff_initial_ms: StrictInt = Field(250, ge=1)
    backoff_max_ms: StrictInt = Field(30000, ge=1)
    max_line_bytes: StrictInt = Field(65536, ge=1024)
    max_event_bytes: StrictInt = Field(1048576, ge=1024)
    headers: Headers = Field(default_factory=FrozenDict)

    @field_validator("backoff_max_ms")
    @classmethod
    def _backoff_max_not_below_initial(cls, value: int, info: ValidationInfo) -> int:
        return _not_below(value, info, "backoff_initial_ms")

    @field_validator("max_event_bytes")
    @classmethod
    def _event_not_below_line(cls, value: int, info: ValidationInfo) -> int:
        return _not_below(value, info, "max_line_bytes")


class ReplayConfig(_Model):
    """The replay ring of each topic instance: what a reconnecting client can get back."""

    max_events: StrictInt = Field(1000, ge=0)
    max_bytes: StrictInt = Field(4194304, ge=0)
    max_age_s: StrictFloat = Field(3600.0, ge=0)


class TopicConfig(_Model):
    """One public path (maybe templated) and the upstream SSE URL it fans out."""

    name: Annotated[StrictStr, AfterValidator(_check_name)]
    path: Annotated[StrictStr, AfterValidator(_check_path)]
    upstream: Annotated[StrictStr, AfterValidator(_check_upstream)]
    public: StrictBool = False
    eager: StrictBool = False
    linger_s: StrictFloat = Field(30.0, ge=0)
    headers: Headers = Field(default_factory=FrozenDict)
    params: ParamPatterns = Field(default_factory=FrozenDict)
    policy: Policy | None = None
    queue_max_events: StrictInt | None = Field(None, ge=1)
    queue_max_bytes: StrictInt | None = Field(None, ge=1024)
    stall_timeout_s: StrictFloat | None = Field(None, gt=0)
    replay: ReplayConfig | None = None

    # The cross-field checks below read `path` from info.data, which holds it only if it is
    # valid; they still run when unrelated fields are broken, so all problems surface at once.

    @field_validator("upstream")
    @classmethod
    def _placeholders_match_path(cls, upstream: str, info: ValidationInfo) -> str:
        path = info.data.get("path")
        if path is None:
            return upstream
        wanted = _params_of(path)
        found = set(PLACEHOLDER_RE.findall(upstream))
        missing = [f"{{{name}}}" for name in wanted if name not in found]
        unknown = [f"{{{name}}}" for name in sorted(found - set(wanted))]
        if missing or unknown:
            details = [f"missing {', '.join(missing)}"] if missing else []
            details += [f"unknown {', '.join(unknown)}"] if unknown else []
            why = "; ".join(details)
            raise _invalid(f"expected exactly the placeholders of path {path!r} ({why})")
        return upstream

    @field_validator("eager")
    @classmethod
    def _eager_needs_literal_path(cls, eager: bool, info: ValidationInfo) -> bool:
        path = info.data.get("path")
        if eager and path is not None and _params_of(path):
            raise _invalid("expected false for a templated path (there is nothing to pre-open)")
        return eager

    @field_validator("params")
    @classmethod
    def _params_known_and_compilable(
        cls, params: dict[str, str], info: ValidationInfo
    ) -> dict[str, str]:
        path = info.data.get("path")
        errors: list[InitErrorDetails] = []
        for name, pattern in params.items():
            if path is not None and name not in _params_of(path):
                errors.append(_problem((name,), f"expected a parameter of path {path!r}", name))
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                why = f"expected a valid regular expression ({exc.msg} at position {exc.pos})"
                errors.append(_problem((name,), why, pattern))
        if errors:
            _fail(errors)
        return params

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The path's segments; the router matches on these."""
        return split_path(self.path)

    @property
    def param_names(self) -> tuple[str, ...]:
        """The path's parameter names, in path order."""
        return _params_of(self.path)

    @property
    def is_template(self) -> bool:
        return bool(self.param_names)


def _conflict(index: int, key: str, message: str, value: str) -> InitErrorDetails:
    return {"type": PydanticCustomError(_CONFLICT, message), "loc": (index, key), "input": value}


def _topic_conflicts(raw: object) -> list[InitErrorDetails]:
    """Duplicate names and same-shape paths, read off the raw list.

    Working on raw items (rather than validated topics) lets these be reported alongside
    unrelated errors in other topics instead of only after those are fixed.
    """
    if not isinstance(raw, list | tuple):
        return []
    names: dict[str, int] = {}
    shapes: dict[tuple[str | None, ...], tuple[int, str]] = {}
    errors: list[InitErrorDetails] = []
    for index, item in enumerate(raw):
        name: object = getattr(item, "name", None)
        path: object = getattr(item, "path", None)
        if isinstance(item, Mapping):
            name, path = item.get("name"), item.get("path")
        if isinstance(name, str) and _NAME_RE.fullmatch(name):
            first = names.setdefault(name, index)
            if first != index:
                message = f"duplicates topics[{first}].name {short_repr(name)}"
                errors.append(_conflict(index, "name", message, name))
        if isinstance(path, str) and _path_problem(path) is None:
            # `/orders/{a}` and `/orders/{b}` match the same requests: compare shapes.
            shape = tuple(None if seg.param else seg.text for seg in split_path(path))
            first, first_path = shapes.setdefault(shape, (index, path))
            if first != index:
                message = f"duplicates topics[{first}].path {short_repr(first_path)}"
                errors.append(_conflict(index, "path", message, path))
    return errors


# --------------------------------------------------------------------------- auth and limits

# Minimum HMAC secret length per algorithm: the hash size (RFC 7518 section 3.2). pyjwt would
# refuse shorter keys at decode time (we enforce its minimum key lengths), failing every token.
HMAC_ALGORITHMS: dict[str, int] = {"HS256": 32, "HS384": 48, "HS512": 64}
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512"}
    | {"EdDSA"}
)
_ALGORITHM_LIST = ", ".join([*HMAC_ALGORITHMS, *sorted(ASYMMETRIC_ALGORITHMS)])
_EC_CURVE_ALGORITHMS = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
    "secp256k1": "ES256K",
}
MIN_RSA_BITS = 2048
_MAX_KEY_FILE_BYTES = 64 * 1024
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_QUERY_NAME_RE = re.compile(r"[A-Za-z0-9._~-]{1,64}")
# A pattern segment is written as in the canonical instance path, %-escapes included.
_PATTERN_SEGMENT_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%]+")
_ORIGIN_RE = re.compile(
    r"(?P<scheme>https?)://(?P<wild>\*\.)?(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_ORIGIN_FORMS = "'*', 'scheme://host[:port]' or 'scheme://*.domain[:port]' (http or https)"


def public_key_algorithms(key: object) -> frozenset[str]:
    """The JWS algorithms a loaded public key can verify (empty: none that we accept)."""
    if isinstance(key, rsa.RSAPublicKey):
        return frozenset(alg for alg in ASYMMETRIC_ALGORITHMS if alg[:2] in ("RS", "PS"))
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_CURVE_ALGORITHMS.get(key.curve.name)
        return frozenset({alg} if alg else ())
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return frozenset({"EdDSA"})
    return frozenset()


def _describe_key(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA {key.key_size}-bit key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC {key.curve.name} key"
    return f"a {type(key).__name__.removeprefix('_')}"


def load_public_key_file(path: str) -> PublicKeyTypes:
    """Read one PEM public key file; ``ValueError`` with a short reason otherwise."""
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise ValueError(f"larger than {_MAX_KEY_FILE_BYTES} bytes")
    if b"PRIVATE KEY" in data:
        # It would verify too, but a signing key has no business on the gateway.
        raise ValueError("it holds a private key; give the public key only")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits, this one has {key.key_size}")
    return key


def grant_problem(grant: str) -> str | None:
    """Why ``grant`` is neither a topic name nor a well-formed path pattern (None: it is)."""
    if not grant.startswith("/"):
        ok = _NAME_RE.fullmatch(grant)
        return None if ok else "expected a topic name or a path pattern starting with '/'"
    parts = grant[1:].split("/")
    if "" in parts:
        return "expected a path pattern without empty segments"
    if any(part in (".", "..") for part in parts):
        return "expected a path pattern without '.' or '..' segments"
    if not all(_PATTERN_SEGMENT_RE.fullmatch(p) and not _BAD_PERCENT_RE.search(p) for p in parts):
        return "expected pattern segments of URL path characters (as in the canonical path)"
    if any("*" in part and part not in ("*", "**") for part in parts):
        return "expected '*' and '**' only as whole segments"
    if "**" in parts[:-1]:
        return "expected '**' only as the last segment"
    return None


def _pattern_may_match(pattern: str, topic_path: str) -> bool:
    """Could ``pattern`` match some instance of ``topic_path``? (Param regexes are ignored.)"""
    wanted = pattern[1:].split("/")
    segments = split_path(topic_path)
    if wanted[-1] == "**":
        wanted = wanted[:-1]
        if len(segments) <= len(wanted):
            return False
        segments = segments[: len(wanted)]
    elif len(segments) != len(wanted):
        return False
    return all(
        part == "*" or seg.param is not None or part == seg.text
        for part, seg in zip(wanted, segments, strict=True)
    )


class OriginParts(NamedTuple):
    """A parsed origin; for a wildcard, ``host`` is the domain after ``*.``."""

    scheme: str
    host: str
    port: int
    wildcard: bool


def parse_origin(text: str, *, allow_wildcard: bool = False) -> OriginParts | None:
    """``https://a.example.com[:port]`` (or ``https://*.example.com``) parsed, else None.

    Case-insensitive; the port defaults from the scheme so ``https://a.com:443`` and
    ``https://a.com`` are the same origin. ``null`` and non-http(s) schemes are never valid.
    """
    if not text.isascii():
        return None
    match = _ORIGIN_RE.fullmatch(text.lower())
    if match is None or (match["wild"] and not allow_wildcard):
        return None
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        if match["wild"]:
            return None
    elif not _HOSTNAME_RE.fullmatch(host) or (match["wild"] and "." not in host):
        return None  # `*.com` would cover a whole top-level domain
    port = int(match["port"]) if match["port"] else (443 if match["scheme"] == "https" else 80)
    if not 1 <= port <= 65535:
        return None
    return OriginParts(match["scheme"], host, port, bool(match["wild"]))


def _check_algorithm(name: str) -> str:
    if name.lower() == "none":
        raise _invalid("expected a signing algorithm ('none' is never accepted)")
    if name not in HMAC_ALGORITHMS and name not in ASYMMETRIC_ALGORITHMS:
        raise _invalid(f"expected one of {_ALGORITHM_LIST}")
    return name


def _one_family(algorithms: tuple[str, ...]) -> tuple[str, ...]:
    hmac_count = sum(alg in HMAC_ALGORITHMS for alg in algorithms)
    if 0 < hmac_count < len(algorithms):
        # The key-confusion family (CVE-2017-11424, CVE-2022-29217): an asymmetric public key
        # used as an HMAC secret. With one family per config there is nothing to confuse.
        raise _invalid("expected one algorithm family: all HS*, or only RS*/PS*/ES*/EdDSA")
    return algorithms


def _one_or_more_strings(value: object) -> object:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        if not value:
            raise _invalid("expected a string or a non-empty list of strings")
        return value
    if value is None:
        return value
    raise _invalid("expected a string or a list of strings")


def _check_sha256(digest: str) -> str:
    if not _SHA256_RE.fullmatch(digest):
        raise _invalid("expected 64 hex digits (the sha256 of the token, never the token)")
    return digest.lower()


def _check_grant(grant: str) -> str:
    return _check(grant_problem(grant), grant)


def _check_cookie_name(name: str) -> str:
    ok = _TOKEN_RE.fullmatch(name)
    return _check(None if ok else "expected a cookie name of HTTP token characters", name)


def _check_query_name(name: str) -> str:
    ok = _QUERY_NAME_RE.fullmatch(name)
    return _check(None if ok else "expected a parameter name of [A-Za-z0-9._~-], 1 to 64", name)


def _check_ticket_path(path: str) -> str:
    rest = path.removeprefix(RESERVED_PREFIX)
    ok = rest != path and all(_LITERAL_SEGMENT_RE.fullmatch(part) for part in rest.split("/"))
    return _check(None if ok else f"expected a path under {RESERVED_PREFIX}", path)


def _check_origin(origin: str) -> str:
    if origin == "*" or parse_origin(origin, allow_wildcard=True) is not None:
        return origin
    if origin.lower() == "null":
        raise _invalid("expected a real origin ('null' comes from sandboxes and files: anyone)")
    raise _invalid(f"expected {_ORIGIN_FORMS}, without a path")


def _check_proxy(entry: str) -> str:
    if entry == "unix":
        return entry
    try:
        ipaddress.ip_network(entry, strict=True)
    except ValueError:
        raise _invalid("expected a CIDR like 10.0.0.0/8 or 2001:db8::/32, or 'unix'") from None
    return entry


def _redacted(message: str) -> PydanticCustomError:
    """An error rendered without its input: for secrets."""
    return PydanticCustomError(_CONFLICT, message)


Grant = Annotated[StrictStr, AfterValidator(_check_grant)]


class OpaqueTokenConfig(_Model):
    """One opaque bearer token, configured by digest so the file holds no usable secret."""

    sha256: Annotated[StrictStr, AfterValidator(_check_sha256)]
    subject: StrictStr = Field(min_length=1)
    topics: tuple[Grant, ...] = ()
    expires_at: StrictFloat | None = Field(None, gt=0)


class JWTConfig(_Model):
    """How JWTs are verified; keys and algorithms come from here, never from the token."""

    algorithms: NonEmpty[
        Annotated[
            tuple[Annotated[StrictStr, AfterValidator(_check_algorithm)], ...],
            AfterValidator(_one_family),
        ]
    ]
    # Key sources validate even when left out (validate_default), so the checks that need the
    # algorithms (declared first, hence in info.data) also catch a missing key.
    secret: StrictStr | None = Field(None, validate_default=True)
    public_key_files: tuple[Annotated[StrictStr, Field(min_length=1)], ...] = Field(
        (), validate_default=True
    )
    jwks_url: StrictStr | None = Field(None, validate_default=True)
    jwks_refresh_s: StrictFloat = Field(300.0, gt=0)
    jwks_cooldown_s: StrictFloat = Field(30.0, ge=0)
    jwks_timeout_s: StrictFloat = Field(5.0, gt=0, le=60)
    issuer: StrictStr | None = Field(None, min_length=1)
    audience: Annotated[tuple[StrictStr, ...] | None, BeforeValidator(_one_or_more_strings)] = None
    typ: StrictStr | None = Field(None, min_length=1)
    leeway_s: StrictFloat = Field(30.0, ge=0, le=60)
    topics_claim: StrictStr = Field("topics", min_length=1)
    subject_claim: StrictStr = Field("sub", min_length=1)

    @property
    def is_hmac(self) -> bool:
        return self.algorithms[0] in HMAC_ALGORITHMS

    @field_validator("secret", mode="wrap")
    @classmethod
    def _secret_fits_algorithms(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> str | None:
        # Every message here is rendered without the value: it is a secret.
        try:
            secret: str | None = handler(value)
        except ValidationError:
            raise _redacted("expected a string (value not shown)") from None
        algorithms = info.data.get("algorithms")
        if not algorithms:
            return secret
        hmac_algs = [alg for alg in algorithms if alg in HMAC_ALGORITHMS]
        if hmac_algs:
            need = max(HMAC_ALGORITHMS[alg] for alg in hmac_algs)
            if secret is None:
                raise _redacted(f"expected a secret of at least {need} bytes for HS* algorithms")
            if len(secret.encode()) < need:
                got = len(secret.encode())
                raise _redacted(f"expected a secret of at least {need} bytes, got {got} bytes")
        elif secret is not None:
            raise _redacted(
                "expected no secret with asymmetric algorithms (use public_key_files or jwks_url)"
            )
        return secret

    @field_validator("public_key_files")
    @classmethod
    def _keys_load(cls, files: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        algorithms = info.data.get("algorithms")
        if files and algorithms and algorithms[0] in HMAC_ALGORITHMS:
            raise _invalid("expected no public key files with HS* algorithms (they use secret)")
        errors: list[InitErrorDetails] = []
        for index, path in enumerate(files):
            try:
                key = load_public_key_file(path)
            except ValueError as exc:
                errors.append(_problem((index,), f"expected a PEM public key file ({exc})", path))
                continue
            if algorithms and not public_key_algorithms(key) & set(algorithms):
                why = f"expected a key for {', '.join(algorithms)} (this is {_describe_key(key)})"
                errors.append(_problem((index,), why, path))
        if errors:
            _fail(errors)
        return files

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url_or_keys(cls, url: str | None, info: ValidationInfo) -> str | None:
        algorithms: tuple[str, ...] = info.data.get("algorithms") or ()
        hmac_algs = bool(algorithms) and algorithms[0] in HMAC_ALGORITHMS
        if url is not None:
            if "{" in url or "}" in url:
                raise _invalid("expected a URL without {placeholders}")
            _check(_upstream_problem(url), url)
            if hmac_algs:
                raise _invalid("expected null with HS* algorithms (a JWKS holds public keys)")
        elif algorithms and not hmac_algs and info.data.get("public_key_files") == ():
            raise _invalid(
                "expected a JWKS URL or public_key_files: asymmetric algorithms need a key"
            )
        return url


class TicketsConfig(_Model):
    """One-time stream tickets: an authenticated POST trades a bearer token for a short-lived
    ticket, so the long-lived token never appears in an EventSource URL."""

    enabled: StrictBool = True
    ttl_s: StrictFloat = Field(30.0, ge=1, le=60)
    path: Annotated[StrictStr, AfterValidator(_check_ticket_path)] = "/_gateway/ticket"


class CorsConfig(_Model):
    """Which browser origins may open streams (and send credentials) cross-site."""

    allow_credentials: StrictBool = True
    allowed_origins: tuple[Annotated[StrictStr, AfterValidator(_check_origin)], ...] = ()
    max_age_s: StrictInt = Field(600, ge=0, le=86400)

    @field_validator("allowed_origins")
    @classmethod
    def _no_wildcard_with_credentials(
        cls, origins: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        if info.data.get("allow_credentials") is True and "*" in origins:
            why = "expected explicit origins when allow_credentials is true ('*' trusts any site)"
            _fail([_problem((origins.index("*"),), why, "*")])
        return origins


class AuthConfig(_Model):
    """Credentials, how they are verified, and what they grant. Without this section every
    topic is public."""

    header: StrictBool = True
    cookie: Annotated[StrictStr, AfterValidator(_check_cookie_name)] | None = "sse_token"
    query_param: Annotated[StrictStr, AfterValidator(_check_query_name)] | None = Field(
        "token", validate_default=True
    )
    tokens: tuple[OpaqueTokenConfig, ...] = ()
    jwt: JWTConfig | None = Field(None, validate_default=True)
    tickets: TicketsConfig = Field(default_factory=TicketsConfig, validate_default=True)
    cors: CorsConfig = Field(default_factory=CorsConfig)

    @field_validator("query_param")
    @classmethod
    def _some_source(cls, name: str | None, info: ValidationInfo) -> str | None:
        no_cookie = "cookie" in info.data and info.data["cookie"] is None
        if name is None and info.data.get("header") is False and no_cookie:
            raise _invalid("expected a name: with header false and cookie null nothing is accepted")
        return name

    @field_validator("tokens")
    @classmethod
    def _distinct_digests(
        cls, tokens: tuple[OpaqueTokenConfig, ...]
    ) -> tuple[OpaqueTokenConfig, ...]:
        seen: dict[str, int] = {}
        errors: list[InitErrorDetails] = []
        for index, token in enumerate(tokens):
            first = seen.setdefault(token.sha256, index)
            if first != index:
                message = f"duplicates auth.tokens[{first}].sha256"
                errors.append(
                    {
                        "type": PydanticCustomError(_CONFLICT, message),
                        "loc": (index, "sha256"),
                        "input": token.sha256,
                    }
                )
        if errors:
            _fail(errors)
        return tokens

    @field_validator("jwt")
    @classmethod
    def _something_verifies(cls, jwt: JWTConfig | None, info: ValidationInfo) -> JWTConfig | None:
        if jwt is None and info.data.get("tokens") == ():
            raise _invalid("expected a jwt section or entries in auth.tokens (nothing verifies)")
        return jwt

    @field_validator("tickets")
    @classmethod
    def _tickets_need_query(cls, tickets: TicketsConfig, info: ValidationInfo) -> TicketsConfig:
        if tickets.enabled and "query_param" in info.data and info.data["query_param"] is None:
            why = "expected false when auth.query_param is null (tickets travel in it)"
            _fail([_problem(("enabled",), why, True)])
        return tickets


class LimitsConfig(_Model):
    """Per-process connection caps and request bounds (hypercorn's own are loose)."""

    # A process holds about one connection per file descriptor; staying under the
    # descriptor limit keeps accept() (and health checks) working under a storm.
    max_connections: StrictInt = Field(16384, ge=1)
    # Offices and mobile carriers put many browsers behind one address.
    max_connections_per_ip: StrictInt = Field(1000, ge=1)
    max_connections_per_subject: StrictInt = Field(100, ge=1)
    trusted_proxies: tuple[Annotated[StrictStr, AfterValidator(_check_proxy)], ...] = ()
    max_header_bytes: StrictInt = Field(8192, ge=1024, le=1048576)
    max_headers: StrictInt = Field(64, ge=8, le=1000)
    max_url_bytes: StrictInt = Field(4096, ge=256, le=65536)
    overload_retry_min_ms: StrictInt = Field(10000, ge=0)
    overload_retry_max_ms: StrictInt = Field(30000, ge=0)

    @field_validator("overload_retry_max_ms")
    @classmethod
    def _retry_max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        return _not_below(value, info, "overload_retry_min_ms")


def _grant_errors(auth: AuthConfig, topics: Sequence[TopicConfig]) -> list[InitErrorDetails]:
    """Opaque token grants that name no configured topic or can match none of their paths."""
    names = {topic.name for topic in topics}
    errors: list[InitErrorDetails] = []
    for index, token in enumerate(auth.tokens):
        for position, grant in enumerate(token.topics):
            if grant.startswith("/"):
                if not any(_pattern_may_match(grant, topic.path) for topic in topics):
                    why = "expected a path pattern matching some configured topic path"
                    errors.append(_problem(("tokens", index, "topics", position), why, grant))
            elif grant not in names:
                why = "expected a configured topic name or a path pattern starting with '/'"
                errors.append(_problem(("tokens", index, "topics", position), why, grant))
    return errors


class AdminConfig(_Model):
    """Who may read ``/metrics`` and the status page (``/status`` and its stream)."""

    # When set, a request must carry "Authorization: Bearer <token>" (the status
    # page, an EventSource, may put it in ?token= instead).
    token: StrictStr | None = Field(None, min_length=16)
    # When non-empty, only clients whose own address (not X-Forwarded-For) is in
    # one of these CIDRs; "unix" for unix-socket peers.
    allow: tuple[Annotated[StrictStr, AfterValidator(_check_proxy)], ...] = ()


class GatewayConfig(_Model):
    """The whole configuration file."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    topics: NonEmpty[tuple[TopicConfig, ...]]
    auth: AuthConfig | None = None  # declared after topics: its validator reads them
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)

    @field_validator("auth")
    @classmethod
    def _grants_name_topics(
        cls, auth: AuthConfig | None, info: ValidationInfo
    ) -> AuthConfig | None:
        topics = info.data.get("topics")
        if auth is not None and topics is not None and (errors := _grant_errors(auth, topics)):
            _fail(errors)
        return auth

    @field_validator("topics", mode="wrap")
    @classmethod
    def _no_conflicting_topics(
        cls, raw: Any, handler: ValidatorFunctionWrapHandler
    ) -> tuple[TopicConfig, ...]:
        conflicts = _topic_conflicts(raw)
        try:
            topics: tuple[TopicConfig, ...] = handler(raw)
        except ValidationError as exc:
            if not conflicts:
                raise
            _fail(_reraisable(exc) + conflicts)
        if conflicts:
            _fail(conflicts)
        return topics


# --------------------------------------------------------------------------- rendering

_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_KINDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
    "string_too_short": "a non-empty string",
}
_SCALARS: dict[object, str] = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
}


def format_loc(loc: Sequence[object]) -> str:
    """``("topics", 0, "headers", "X-Id")`` -> ``topics[0].headers.X-Id``."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY_RE.fullmatch(part):
            out += f".{part}" if out else part
        else:  # keys with dots, spaces, ... stay unambiguous
            out += f"[{short_repr(part)}]"
    return out


def _model_in(annotation: object) -> type[BaseModel] | None:
    if get_origin(annotation) is None and isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _field_at(loc: Sequence[object]) -> FieldInfo | None:
    """The model field a loc ends on, or None (list items, mapping values, ...)."""
    model: type[BaseModel] | None = GatewayConfig
    field: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int) and field is not None and model is not None:
            field = None  # an index into a tuple of models: the model stays current
        elif model is not None and isinstance(part, str) and part in model.model_fields:
            field = model.model_fields[part]
            model = _model_in(field.annotation)
        else:
            return None
    return field


def _scalar_type(annotation: object) -> object:
    """Unwrap ``Annotated[X, ...]`` and ``X | None`` down to ``X``."""
    while True:
        origin = get_origin(annotation)
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if origin is Annotated or (origin in (Union, UnionType) and len(args) == 1):
            annotation = args[0]
        else:
            return annotation


def _describe(field: FieldInfo) -> str | None:
    """'an integer between 1 and 64', 'a number > 0', ... from the field's declaration."""
    kind = _SCALARS.get(_scalar_type(field.annotation))
    if kind is None:
        return None
    bounds = {
        attr: value
        for item in field.metadata
        for attr in ("gt", "ge", "lt", "le", "min_length")
        if (value := getattr(item, attr, None)) is not None
    }
    if bounds.get("min_length"):
        return f"a non-empty {kind.removeprefix('a ')}"
    if "ge" in bounds and "le" in bounds:
        return f"{kind} between {bounds['ge']} and {bounds['le']}"
    ops = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
    limits = " and ".join(f"{op} {bounds[attr]}" for attr, op in ops if attr in bounds)
    return f"{kind} {limits}" if limits else kind


def _render(err: ErrorDetails) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    is_key = bool(loc) and loc[-1] == "[key]"  # pydantic's marker for a bad mapping key
    where = format_loc(loc[:-1] if is_key else loc) or "(top level)"
    if kind == "missing":
        return f"{where}: missing required key"
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == _CONFLICT:
        return f"{where}: {err['msg']}"
    if kind == _INVALID:
        expected = err["msg"]
    elif kind == "literal_error":
        expected = f"expected one of {err.get('ctx', {}).get('expected')}"
    elif is_key:
        expected = f"expected {_KINDS.get(kind, 'a valid')} key"
    else:
        field = _field_at(loc)
        described = _describe(field) if field is not None else None
        kind_text = described or _KINDS.get(kind)
        expected = f"expected {kind_text}" if kind_text else err["msg"]
    return f"{where}: {expected}, got {short_repr(err['input'])}"


# --------------------------------------------------------------------------- YAML + env


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of keeping the last silently."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []  # (line, problem)
        self._locs: dict[int, tuple[object, ...]] = {}

    def construct_document(self, node: yaml.Node) -> Any:
        self._locs = _node_locs(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may override, by design
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: SafeConstructor reports it below
                continue
            if first is None:
                seen[key] = line
                continue
            loc = (*self._locs.get(id(node), ()), key_node.value)
            problem = f"{format_loc(loc)}: duplicate key {short_repr(key)} (line {line}, "
            self.duplicates.append((line, problem + f"first on line {first})"))
        return super().construct_mapping(node, deep=deep)


def _node_locs(root: yaml.Node) -> dict[int, tuple[object, ...]]:
    """Where each node sits in the document, so duplicate keys can be named by dotted path."""
    locs: dict[int, tuple[object, ...]] = {}
    stack: list[tuple[yaml.Node, tuple[object, ...]]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if id(node) in locs:  # aliases can make the graph a DAG (or even cyclic)
            continue
        locs[id(node)] = loc
        if isinstance(node, yaml.MappingNode):
            stack.extend((value, (*loc, key.value)) for key, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((value, (*loc, index)) for index, value in enumerate(node.value))
    return locs


def _load_yaml(text: str, source: str) -> dict[Any, Any]:
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError([f"{where}: invalid YAML: {exc.problem or exc}"], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"invalid YAML: {exc}"], source) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError([problem for _, problem in sorted(loader.duplicates)], source)
    if data is None:
        raise ConfigError(["the document is empty: expected a mapping with 'topics'"], source)
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping, got {short_repr(data)}"], source)
    return data


# `$$` | `${NAME}` | `${NAME:-default}` | any other `${` (an error). A lone `$` stays as is.
_ENV_TOKEN_RE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>(?:[^$}]|\$\$)*))?\}|\$\{"
)


def _expand(text: str, env: Mapping[str, str], problems: list[str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if match[0] == "$$":
            return "$"
        if name is None:
            problems.append("expected ${NAME} or ${NAME:-default} after '${'")
            return ""
        value = env.get(name)
        if value is not None and (value or default is None):
            return value
        if default is not None:
            return default.replace("$$", "$")
        problems.append(f"environment variable {name} is not set")
        return ""

    return _ENV_TOKEN_RE.sub(substitute, text)


def _interpolate(
    node: object, env: Mapping[str, str], loc: tuple[Any, ...], problems: dict[tuple[Any, ...], str]
) -> object:
    """Expand ``${...}`` in every string value (not key) of the tree; record problems by loc."""
    if isinstance(node, str):
        found: list[str] = []
        expanded = _expand(node, env, found)
        for message in found:
            got = "" if message.startswith("environment") else f", got {short_repr(node)}"
            problems.setdefault(loc, f"{format_loc(loc)}: {message}{got}")
        return expanded
    if isinstance(node, dict):
        return {key: _interpolate(value, env, (*loc, key), problems) for key, value in node.items()}
    if isinstance(node, list):
        return [
            _interpolate(value, env, (*loc, index), problems) for index, value in enumerate(node)
        ]
    return node


# --------------------------------------------------------------------------- entry points


def parse_config(
    text: str, *, env: Mapping[str, str] | None = None, source: str = "<config>"
) -> GatewayConfig:
    """Parse and validate YAML ``text``; raise :class:`ConfigError` listing every problem."""
    env_problems: dict[tuple[Any, ...], str] = {}
    tree = _interpolate(
        _load_yaml(text, source), os.environ if env is None else env, (), env_problems
    )
    problems = list(env_problems.values())
    try:
        config = GatewayConfig.model_validate(tree)
    except ValidationError as exc:
        # A value with a missing variable was already reported; its (blanked) value would
        # only produce a second, misleading line.
        errors = exc.errors(include_url=False)
        problems += [_render(err) for err in errors if tuple(err["loc"]) not in env_problems]
    else:
        if not problems:
            return config
    raise ConfigError(problems, source)


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read and parse the YAML file at ``path`` (the error source is the path)."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"expected UTF-8 text: {exc.reason} at byte {exc.start}"], source
        ) from None
    return parse_config(text, env=env, source=source)
