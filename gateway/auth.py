"""Who is asking (authentication) and may they have this stream (authorization).

The model
=========

A request carries at most one **credential**. ``EventSource`` cannot send headers, so besides
``Authorization: Bearer <token>`` the gateway also takes a cookie and a query parameter.
Precedence is fixed: **the Authorization header, then the cookie, then the query parameter**.
The first source that is *present* is used, and if it is invalid the request fails with 401:
there is never a fallback to the next source, so which credential decided is always obvious
and a stale cookie cannot be papered over by a URL token (or the other way round). A source
that the configuration disables is ignored as if absent.

* header: exactly one ``Authorization`` header of the form ``Bearer <b64token>`` (RFC 6750
  section 2.1; the scheme is case-insensitive). Several headers, another scheme or junk: 401.
* cookie: all ``Cookie`` headers are read (HTTP/2 may split them). Cookies are split on ``;``
  ourselves and only our cookie's value goes through :mod:`http.cookies`, so a malformed
  cookie of some other application can never hide ours or raise. If our name repeats, the
  first wins: browsers send the most specific path first (RFC 6265 section 5.4).
* query: form-decoded; the parameter given twice is 401. A value starting with
  :data:`TICKET_PREFIX` is a one-time ticket (see :mod:`gateway.tickets`), anything else a
  token. :func:`scrub_query` removes the parameter before a query is logged or forwarded.

A credential is verified into a :class:`Principal` by :class:`Authenticator`:

* **opaque tokens** are looked up by sha256 digest, comparing against *every* configured
  digest with :func:`hmac.compare_digest` (no early exit), so timing tells nothing about
  which or how many tokens exist;
* else a **JWT** (three dot-separated parts) is verified by pyjwt with the configured
  algorithms only and keys only from the configuration (secret, PEM files, JWKS by ``kid``);
  ``jku``, ``x5u``, ``x5c`` and ``jwk`` headers are never looked at. ``exp``, the subject claim
  and the topics claim are required, ``iss``/``aud`` when configured, ``typ`` is checked here.
* **tickets** are redeemed once from the :class:`~gateway.tickets.TicketStore`.

Whatever goes wrong inside verification (pyjwt errors, bad base64, bad JSON, recursion,
overflow, wrong claim types, JWKS trouble) becomes :class:`~gateway.errors.Unauthorized` with
a fixed reason; nothing else escapes and no reason ever contains the token.

Grants
======

A grant is a topic **name** (``prices``: every instance of that topic) or a **path pattern**
starting with ``/``, matched against the *canonical* instance path
(:attr:`gateway.topics.TopicInstance.path`, parameter values percent-encoded) segment by
segment, case-sensitively:

* a literal segment matches exactly that segment (as it appears in the canonical path);
* ``*`` matches exactly one whole, non-empty segment (``/orders/*`` matches ``/orders/42``,
  not ``/orders/42/items`` nor ``/orders``);
* a trailing ``/**`` matches one or more segments (``/orders/**`` matches ``/orders/42`` and
  ``/orders/42/items``, not ``/orders``). ``*``/``**`` are never partial (``ord*`` is invalid).

A value containing ``/`` is one segment (``%2F``) in the canonical form, so no value can make
a pattern cross a segment boundary, and paths with empty, ``.`` or ``..`` segments (which the
router never produces) match no pattern at all. Public topics need no principal.

Sans-IO: no asyncio import here. The only await is the JWKS lookup, delegated to
:mod:`gateway.jwks` (imported only when a ``jwks_url`` is configured).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar
from urllib.parse import unquote_to_bytes

import jwt
from jwt.types import Options

from gateway.config import (
    HMAC_ALGORITHMS,
    AuthConfig,
    JWTConfig,
    TopicConfig,
    grant_problem,
    load_public_key_file,
    public_key_algorithms,
)
from gateway.errors import ConfigError, Forbidden, Unauthorized
from gateway.topics import TopicInstance

if TYPE_CHECKING:
    import httpx

    from gateway.jwks import JWKSCache
    from gateway.tickets import TicketStore

__all__ = [
    "MAX_CREDENTIAL_CHARS",
    "TICKET_PREFIX",
    "Authenticator",
    "Credential",
    "CredentialSource",
    "Principal",
    "authorize",
    "extract_bearer",
    "extract_credential",
    "match_digest",
    "pattern_matches",
    "scrub_query",
]

CredentialSource = Literal["header", "cookie", "query", "ticket"]

TICKET_PREFIX = "t1."  # versioned, and never the start of a JWT ("eyJ...")
# Far above any real token (a JWT with many grants is a few KB); checked before any parsing.
MAX_CREDENTIAL_CHARS = 16 * 1024
# exp beyond the year 9999 is nonsense, and would overflow the stream's expiry timer.
_MAX_EXP = 253402300799

# RFC 6750 section 2.1: "Bearer" 1*SP b64token; surrounding OWS is allowed by RFC 9110.
_BEARER_RE = re.compile(rb"[ \t]*[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)[ \t]*")

_INVALID = "invalid token"


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True, repr=False)
class Credential:
    """A presented token and where it came from. ``repr`` never shows the value."""

    value: str
    source: CredentialSource

    def __repr__(self) -> str:
        return f"Credential(source={self.source!r}, value=<{len(self.value)} chars>)"


def _header_values(scope: Mapping[str, Any], wanted: bytes) -> list[bytes]:
    # ASGI promises lower-case names; lowering again costs little and survives sloppy servers.
    return [value for name, value in scope.get("headers") or () if name.lower() == wanted]


def _bearer(value: bytes) -> str:
    match = _BEARER_RE.fullmatch(value)
    if match is None:
        raise Unauthorized(_INVALID, why="malformed Authorization header")
    return match.group(1).decode("ascii")


def extract_bearer(scope: Mapping[str, Any]) -> Credential | None:
    """The ``Authorization: Bearer`` credential only (what the ticket endpoint accepts)."""
    values = _header_values(scope, b"authorization")
    if not values:
        return None
    if len(values) > 1:
        raise Unauthorized(_INVALID, why="several Authorization headers")
    return Credential(_bearer(values[0]), "header")


def _cookie_value(headers: list[bytes], name: str) -> str | None:
    joined = "; ".join(value.decode("latin-1") for value in headers)
    for piece in joined.split(";"):
        key, sep, raw = piece.partition("=")
        if key.strip() != name:
            continue
        raw = raw.strip()
        if not sep or not raw:
            raise Unauthorized(_INVALID, why="empty cookie")
        # http.cookies decodes the (possibly quoted) value; fed only our pair, other cookies'
        # junk cannot disturb it. It stops silently at what it cannot parse, so the value
        # must have been consumed whole.
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(f"c={raw}")
        except CookieError:
            raise Unauthorized(_INVALID, why="malformed cookie") from None
        morsel = jar.get("c")
        if morsel is None or morsel.coded_value != raw or not morsel.value:
            raise Unauthorized(_INVALID, why="malformed cookie")
        return morsel.value
    return None


def _form_decode(raw: bytes) -> str:
    """application/x-www-form-urlencoded decoding, strict UTF-8 (raises on junk)."""
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")


def query_value(query: bytes, param: str) -> str | None:
    """The one value of ``param`` in a query string; repeated or not UTF-8: 401."""
    found: str | None = None
    for piece in query.split(b"&"):
        key, _, raw = piece.partition(b"=")
        try:
            if _form_decode(key) != param:
                continue
        except UnicodeDecodeError:
            continue  # cannot be our (ASCII) name
        if found is not None:
            raise Unauthorized(_INVALID, why="query parameter repeated")
        try:
            found = _form_decode(raw)
        except UnicodeDecodeError:
            raise Unauthorized(_INVALID, why="query value not UTF-8") from None
    return found


def extract_credential(scope: Mapping[str, Any], config: AuthConfig) -> Credential | None:
    """The request's credential by precedence (header, cookie, query), or None if none is
    present. Raises :class:`Unauthorized` when the first present one is malformed."""
    if config.header:
        credential = extract_bearer(scope)
        if credential is not None:
            return credential
    if config.cookie is not None:
        cookies = _header_values(scope, b"cookie")
        value = _cookie_value(cookies, config.cookie) if cookies else None
        if value is not None:
            return Credential(value, "cookie")
    if config.query_param is not None:
        value = query_value(scope.get("query_string") or b"", config.query_param)
        if value is not None:
            ticket = config.tickets.enabled and value.startswith(TICKET_PREFIX)
            return Credential(value, "ticket" if ticket else "query")
    return None


def scrub_query(query_string: bytes, param: str) -> bytes:
    """``query_string`` without any ``param`` (however it is encoded), other pieces as they
    were: safe to log or to forward upstream."""
    kept: list[bytes] = []
    for piece in query_string.split(b"&"):
        try:
            if _form_decode(piece.partition(b"=")[0]) == param:
                continue
        except UnicodeDecodeError:
            pass  # not decodable, so not our ASCII name: keep it
        kept.append(piece)
    return b"&".join(kept)


# --------------------------------------------------------------------------- grants


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> tuple[tuple[str, ...], bool] | None:
    """``(segments, trailing **)`` of a valid pattern, None for anything malformed."""
    if grant_problem(pattern) is not None or not pattern.startswith("/"):
        return None
    parts = tuple(pattern[1:].split("/"))
    if parts[-1] == "**":
        return parts[:-1], True
    return parts, False


def pattern_matches(pattern: str, path: str) -> bool:
    """Does path ``pattern`` match the canonical instance ``path``? (See module docstring.)"""
    compiled = _compile(pattern)
    if compiled is None or not path.startswith("/"):
        return False
    segments, tail = compiled
    parts = path[1:].split("/")
    if any(part in ("", ".", "..") for part in parts):
        return False  # not a canonical path: never let a pattern guess what it means
    if tail:
        if len(parts) <= len(segments):
            return False
        parts = parts[: len(segments)]
    elif len(parts) != len(segments):
        return False
    return all(want == "*" or want == part for want, part in zip(segments, parts, strict=True))


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: who, what it may subscribe to, and until when (unix s)."""

    subject: str
    grants: tuple[str, ...]
    expires_at: float | None
    source: CredentialSource

    def allows(self, instance: TopicInstance) -> bool:
        """Public topic, or a grant naming the topic, or a pattern matching its path."""
        topic = instance.topic
        if topic.public:
            return True
        return any(
            grant == topic.name or (grant.startswith("/") and pattern_matches(grant, instance.path))
            for grant in self.grants
        )

    def seconds_left(self, now: float) -> float | None:
        """Seconds until expiry at wall-clock ``now`` (None: never expires)."""
        return None if self.expires_at is None else self.expires_at - now


def authorize(principal: Principal | None, instances: Sequence[TopicInstance]) -> None:
    """Allow all of ``instances`` or raise: 401 when a non-public one is asked for without
    credentials, 403 when the principal lacks a grant for any one of them."""
    for instance in instances:
        if instance.topic.public:
            continue
        if principal is None:
            raise Unauthorized("missing credentials")
        if not principal.allows(instance):
            # The reason stays fixed; the log hint names what was refused, never the token.
            raise Forbidden("not granted", why=f"{principal.subject} -> {instance.topic.name}")


# --------------------------------------------------------------------------- verification


class _HasDigest(Protocol):
    @property
    def digest(self) -> bytes: ...


_E = TypeVar("_E", bound=_HasDigest)


@dataclass(frozen=True, slots=True)
class _OpaqueEntry:
    digest: bytes
    subject: str
    grants: tuple[str, ...]
    expires_at: float | None


def match_digest(digest: bytes, entries: Iterable[_E]) -> _E | None:
    """The entry whose ``.digest`` equals ``digest``. Every entry is compared, each in
    constant time, with no early exit: the time taken says nothing about where (or whether)
    a match was found."""
    found: _E | None = None
    for entry in entries:
        if hmac.compare_digest(digest, entry.digest):
            found = entry
    return found


def _is_number(value: object) -> bool:
    if type(value) is int:  # not bool; huge ints cannot be expressed as a float
        return abs(value) <= _MAX_EXP
    return type(value) is float and math.isfinite(value)


def _normal_typ(typ: str) -> str:
    # RFC 7515 section 4.1.9: media types compare case-insensitively, "application/" optional.
    typ = typ.lower()
    return typ.removeprefix("application/")


class Authenticator:
    """Turns credentials into principals. One per process; cheap to call concurrently."""

    def __init__(
        self,
        config: AuthConfig,
        topics: Sequence[TopicConfig],
        client: httpx.AsyncClient | None = None,
        *,
        tickets: TicketStore | None = None,
        jwks: JWKSCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        names = {topic.name for topic in topics}
        problems = [
            f"auth.tokens[{index}].topics[{position}]: expected a configured topic name, "
            f"got {grant!r}"
            for index, token in enumerate(config.tokens)
            for position, grant in enumerate(token.topics)
            if not grant.startswith("/") and grant not in names
        ]
        if problems:
            raise ConfigError(problems)
        self._tokens = tuple(
            _OpaqueEntry(bytes.fromhex(t.sha256), t.subject, t.topics, t.expires_at)
            for t in config.tokens
        )
        self._jwt: JWTConfig | None = config.jwt
        self._secret: bytes | None = None
        self._public_keys: list[tuple[Any, frozenset[str]]] = []
        self.jwks: JWKSCache | None = jwks
        if config.jwt is not None:
            self._setup_jwt(config.jwt, client)
        if tickets is None and config.tickets.enabled:
            from gateway.tickets import TicketStore  # tickets imports this module

            tickets = TicketStore(config.tickets.ttl_s)
        self.tickets: TicketStore | None = tickets

    def _setup_jwt(self, cfg: JWTConfig, client: httpx.AsyncClient | None) -> None:
        if cfg.is_hmac:
            assert cfg.secret is not None  # validated
            self._secret = cfg.secret.encode()
        for index, path in enumerate(cfg.public_key_files):
            try:
                key = load_public_key_file(path)
            except ValueError as exc:  # the file changed since validation
                where = f"auth.jwt.public_key_files[{index}]"
                problem = f"{where}: expected a PEM public key file ({exc}), got {path!r}"
                raise ConfigError([problem]) from None
            self._public_keys.append((key, public_key_algorithms(key) & set(cfg.algorithms)))
        require = ["exp", cfg.subject_claim, cfg.topics_claim]
        require += ["iss"] if cfg.issuer is not None else []
        require += ["aud"] if cfg.audience is not None else []
        # Below-minimum keys (short HMAC secrets, small RSA keys from a JWKS) are errors.
        self._options: Options = {"require": require, "enforce_minimum_key_length": True}
        if cfg.jwks_url is not None and self.jwks is None:
            if client is None:
                raise ValueError("auth.jwt.jwks_url is set: pass an httpx.AsyncClient")
            from gateway.jwks import JWKSCache  # asyncio lives there, not here

            self.jwks = JWKSCache(
                cfg.jwks_url,
                client,
                refresh_s=cfg.jwks_refresh_s,
                cooldown_s=cfg.jwks_cooldown_s,
                timeout_s=cfg.jwks_timeout_s,
                algorithms=cfg.algorithms,
            )

    async def aclose(self) -> None:
        """Stop background JWKS work (the httpx client belongs to the caller)."""
        if self.jwks is not None:
            await self.jwks.aclose()

    async def authenticate(self, credential: Credential | None) -> Principal | None:
        """The principal for ``credential`` (None for None), or :class:`Unauthorized`."""
        if credential is None:
            return None
        value = credential.value
        if not value or len(value) > MAX_CREDENTIAL_CHARS:
            raise Unauthorized(_INVALID, why="empty or oversized credential")
        if credential.source == "ticket":
            if self.tickets is None:
                raise Unauthorized(_INVALID, why="tickets are disabled")
            return self.tickets.redeem(value)
        principal = self._opaque(value, credential.source)
        if principal is not None:
            return principal
        if self._jwt is not None and value.count(".") == 2:
            return await self._verify_jwt(self._jwt, value, credential.source)
        raise Unauthorized(_INVALID, why="unknown token")

    async def issue_ticket(self, credential: Credential | None) -> str:
        """A one-time ticket for the bearer of ``credential`` (from :func:`extract_bearer`)."""
        if self.tickets is None:
            raise Unauthorized(_INVALID, why="tickets are disabled")
        if credential is None:
            raise Unauthorized("missing credentials")
        if credential.source != "header":
            # A cookie could be sent by a cross-site form (CSRF); a ticket must not buy one.
            raise Unauthorized(_INVALID, why="tickets need an Authorization header")
        principal = await self.authenticate(credential)
        assert principal is not None
        return self.tickets.issue(principal)

    def _opaque(self, value: str, source: CredentialSource) -> Principal | None:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()
        found = match_digest(digest, self._tokens)
        if found is None:
            return None
        if found.expires_at is not None and found.expires_at <= self._clock():
            raise Unauthorized("token expired", why=f"opaque token of {found.subject}")
        return Principal(found.subject, found.grants, found.expires_at, source)

    async def _verify_jwt(self, cfg: JWTConfig, token: str, source: CredentialSource) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            # The allow-list comes from the configuration; checking it before any key lookup
            # also keeps junk tokens from triggering JWKS fetches.
            if not isinstance(alg, str) or alg not in cfg.algorithms:
                raise Unauthorized(_INVALID, why="algorithm not allowed")
            if cfg.typ is not None:
                typ = header.get("typ")
                if not isinstance(typ, str) or _normal_typ(typ) != _normal_typ(cfg.typ):
                    raise Unauthorized(_INVALID, why="typ mismatch")
            kid = header.get("kid")  # pyjwt has checked it is a string if present
            payload = self._decode(cfg, token, self._static_keys(alg))
            if payload is None and self.jwks is not None:
                keys = (
                    [await self.jwks.key_for(kid, alg)]
                    if isinstance(kid, str)
                    else await self.jwks.keys(alg)
                )
                payload = self._decode(cfg, token, keys)
            if payload is None:
                raise Unauthorized(_INVALID, why="no key verifies the signature")
            return self._principal(cfg, payload, source)
        except Unauthorized:
            raise
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired", why="exp passed") from None
        except Exception as exc:  # pyjwt, base64, JSON, recursion, overflow, types, ...
            raise Unauthorized(_INVALID, why=type(exc).__name__) from None

    def _static_keys(self, alg: str) -> list[Any]:
        if alg in HMAC_ALGORITHMS:
            return [self._secret] if self._secret is not None else []
        return [key for key, algorithms in self._public_keys if alg in algorithms]

    def _decode(self, cfg: JWTConfig, token: str, keys: Iterable[Any]) -> dict[str, Any] | None:
        """The verified payload under the first key whose signature checks, else None."""
        for key in keys:
            try:
                decoded = jwt.decode_complete(
                    token,
                    key,
                    algorithms=list(cfg.algorithms),
                    options=self._options,
                    audience=list(cfg.audience) if cfg.audience is not None else None,
                    issuer=cfg.issuer,
                    leeway=cfg.leeway_s,
                )
            except jwt.InvalidSignatureError:
                continue  # another configured key may have signed it
            payload = decoded["payload"]
            if not isinstance(payload, dict):
                raise Unauthorized(_INVALID, why="payload is not an object")
            return payload
        return None

    def _principal(
        self, cfg: JWTConfig, payload: dict[str, Any], source: CredentialSource
    ) -> Principal:
        exp = payload.get("exp")
        # pyjwt accepts numeric strings ("exp": "9999999999"); a well-formed token never has one.
        if not _is_number(exp) or any(
            claim in payload and not _is_number(payload[claim]) for claim in ("nbf", "iat")
        ):
            raise Unauthorized(_INVALID, why="time claim is not a number")
        assert isinstance(exp, int | float)
        if exp > _MAX_EXP:
            raise Unauthorized(_INVALID, why="exp too far")
        subject = payload.get(cfg.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise Unauthorized(_INVALID, why="subject is not a non-empty string")
        grants = payload.get(cfg.topics_claim)
        if not isinstance(grants, list) or not all(isinstance(grant, str) for grant in grants):
            raise Unauthorized(_INVALID, why="topics claim is not a list of strings")
        return Principal(subject, tuple(grants), float(exp), source)
