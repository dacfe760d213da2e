"""JWKS: the identity provider's public keys, fetched asynchronously and cached.

pyjwt's ``PyJWKClient`` fetches with blocking ``urllib``, which would stall every stream of
the process while the IdP answers; this cache fetches with httpx on the event loop instead.

Policy:

* **First use** waits for the first fetch (there is nothing to verify with before it).
* **Refresh**: keys older than ``refresh_s`` are still served while one fetch runs in the
  background (stale-while-revalidate), so a slow IdP never delays a connect.
* **Unknown kid**: at most one refetch per ``cooldown_s``, whatever the number of callers or
  kids; callers arriving while a fetch is in flight share it. A kid still unknown after that
  is 401. A storm of made-up kids therefore costs the IdP one request per cooldown.
* **Failures** (refused, timeout, non-200, oversized, bad JSON, no usable key) keep the last
  good keys, log a warning and are retried no sooner than ``cooldown_s`` later. Only if no
  fetch ever succeeded does a lookup fail (401), never with any other exception.
* **Which keys**: only asymmetric signing keys (``kty`` RSA, EC, OKP) of the configured
  algorithms. ``use`` other than ``sig`` (e.g. ``enc``), ``key_ops`` without ``verify``,
  symmetric (``oct``) keys, private keys and RSA keys under 2048 bits are skipped. A key
  declaring ``alg`` is used for that algorithm only; a key without ``alg`` is bound to each
  configured algorithm its type fits (an RSA key to RS256 *and* PS256 if both are
  configured), because pyjwt's ``PyJWKSet`` would bind it to RS256 alone.
* **kid**: a token naming a ``kid`` is verified only with keys of that ``kid``; a token
  without one is tried against every key of its algorithm (keys without ``kid`` included).

Redirects are not followed and the body is capped, so the JWKS URL cannot be bounced to an
internal address or used to exhaust memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK

from gateway.config import ASYMMETRIC_ALGORITHMS, MIN_RSA_BITS
from gateway.errors import Unauthorized
from gateway.logs import redact_url

__all__ = ["MAX_JWKS_BYTES", "MAX_JWKS_KEYS", "JWKSCache", "parse_jwks"]

log = logging.getLogger("gateway.jwks")

MAX_JWKS_BYTES = 1024 * 1024
MAX_JWKS_KEYS = 100  # real JWKS hold a handful; more is a misconfiguration or an attack

_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "secp256k1"}


def _fits(jwk: dict[str, Any], alg: str) -> bool:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if alg[:2] in ("RS", "PS"):
        return kty == "RSA"
    if alg in _EC_CURVES:
        return kty == "EC" and crv == _EC_CURVES[alg]
    return alg == "EdDSA" and kty == "OKP" and crv in ("Ed25519", "Ed448")


def _usable(jwk: object) -> str | None:
    """Why this JWK must not verify signatures (None: it may)."""
    if not isinstance(jwk, dict):
        return "not an object"
    if jwk.get("kty") not in ("RSA", "EC", "OKP"):
        return "not an asymmetric key"
    if jwk.get("use", "sig") != "sig":
        return "not a signing key"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops without verify"
    if "d" in jwk:
        return "a private key"
    if not isinstance(jwk.get("kid", ""), str):
        return "kid is not a string"
    return None


@dataclass(frozen=True)
class _KeySet:
    keys: tuple[PyJWK, ...]  # each bound to one algorithm
    by_kid: dict[str, tuple[PyJWK, ...]] = field(default_factory=dict)

    def find(self, kid: str, alg: str | None) -> PyJWK | None:
        for key in self.by_kid.get(kid, ()):
            if alg is None or key.algorithm_name == alg:
                return key
        return None

    def for_alg(self, alg: str | None) -> tuple[PyJWK, ...]:
        return tuple(key for key in self.keys if alg is None or key.algorithm_name == alg)


def parse_jwks(body: bytes, algorithms: Sequence[str]) -> tuple[list[PyJWK], list[str]]:
    """Usable keys of a JWKS document (one :class:`PyJWK` per key and algorithm), and what
    was skipped and why. Raises ``ValueError`` for a document that is not a JWKS at all."""
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set (no 'keys' list)")
    keys: list[PyJWK] = []
    skipped: list[str] = []
    for index, jwk in enumerate(document["keys"][:MAX_JWKS_KEYS]):
        why = _usable(jwk)
        if why is not None:
            skipped.append(f"keys[{index}]: {why}")
            continue
        declared = jwk.get("alg")
        bind = [declared] if declared is not None else list(algorithms)
        fitting = [alg for alg in bind if alg in algorithms and _fits(jwk, alg)]
        if not fitting:
            skipped.append(f"keys[{index}]: fits none of the configured algorithms")
        for alg in fitting:
            try:
                key = PyJWK(jwk, algorithm=alg)
            except Exception as exc:  # malformed numbers, unknown curves, ...
                skipped.append(f"keys[{index}]: {type(exc).__name__}")
                break
            if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
                skipped.append(f"keys[{index}]: RSA key under {MIN_RSA_BITS} bits")
                break
            keys.append(key)
    if len(document["keys"]) > MAX_JWKS_KEYS:
        skipped.append(f"keys beyond the first {MAX_JWKS_KEYS}")
    return keys, skipped


class JWKSCache:
    """The keys at ``url``; see the module docstring for the refresh policy."""

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        refresh_s: float = 300.0,
        cooldown_s: float = 30.0,
        timeout_s: float = 5.0,
        *,
        algorithms: Sequence[str] = tuple(sorted(ASYMMETRIC_ALGORITHMS)),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._client = client
        self._refresh_s = refresh_s
        self._cooldown_s = cooldown_s
        self._timeout_s = timeout_s
        self._algorithms = tuple(alg for alg in algorithms if alg in ASYMMETRIC_ALGORITHMS)
        self._clock = clock
        self._keyset: _KeySet | None = None
        self._fetched_at = 0.0  # when the current keys arrived (clock)
        self._attempted_at: float | None = None  # when the last fetch started (clock)
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0  # fetch attempts, for tests and metrics
        self.last_error: str | None = None

    # ----------------------------------------------------------------- lookups

    async def key_for(self, kid: str, alg: str | None = None) -> PyJWK:
        """The key ``kid`` (for ``alg`` if given); 401 if unknown even after a refetch."""
        keyset = await self._current()
        key = keyset.find(kid, alg)
        if key is None:
            # Unknown kid: maybe a rotation. Join a running fetch or start one if the
            # cooldown allows, then look again; otherwise it is simply unknown.
            await self._refetch()
            keyset = self._keyset or keyset
            key = keyset.find(kid, alg)
        if key is None:
            raise Unauthorized("invalid token", why="unknown kid")
        return key

    async def keys(self, alg: str | None = None) -> tuple[PyJWK, ...]:
        """Every key (for ``alg`` if given): the candidates for a token without ``kid``."""
        return (await self._current()).for_alg(alg)

    # ----------------------------------------------------------------- fetching

    def _may_fetch(self) -> bool:
        last = self._attempted_at
        return last is None or self._clock() - last >= self._cooldown_s

    async def _current(self) -> _KeySet:
        if self._keyset is None:
            await self._refetch()
            if self._keyset is None:
                raise Unauthorized("invalid token", why="no JWKS keys (fetch failing)")
        elif self._clock() - self._fetched_at >= self._refresh_s and self._may_fetch():
            self._start()  # in the background: the current keys serve meanwhile
        return self._keyset

    async def _refetch(self) -> None:
        """Wait for the running fetch, or for a new one if the cooldown allows."""
        task = self._inflight
        if task is None and self._may_fetch():
            task = self._start()
        if task is not None:
            # shield: a caller that gives up (client gone) must not cancel everyone's fetch.
            await asyncio.shield(task)

    def _start(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._attempted_at = self._clock()
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
            self._inflight.add_done_callback(self._fetch_done)
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            body = await self._download()
            keys, skipped = parse_jwks(body, self._algorithms)
            if skipped:
                log.info("JWKS %s: skipped %s", redact_url(self.url), "; ".join(skipped))
            if not keys:
                raise ValueError("no usable signing key")
        except Exception as exc:  # never raised to a caller: the last good keys stay
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            log.warning(
                "JWKS fetch from %s failed (%s); keeping %s",
                redact_url(self.url),  # a query could hold an API key
                self.last_error,
                "the last good keys" if self._keyset else "no keys",
            )
            return
        by_kid: dict[str, tuple[PyJWK, ...]] = {}
        for key in keys:
            if key.key_id is not None:
                by_kid[key.key_id] = (*by_kid.get(key.key_id, ()), key)
        self._keyset = _KeySet(tuple(keys), by_kid)
        self._fetched_at = self._clock()
        self.last_error = None

    async def _download(self) -> bytes:
        # asyncio.timeout bounds the whole exchange; httpx's own timeouts are per operation,
        # which a server trickling one byte at a time would never trip.
        async with asyncio.timeout(self._timeout_s):
            request = self._client.build_request(
                "GET",
                self.url,
                # identity: the cap below then bounds what we hold, not a compressed size.
                headers={
                    "accept": "application/jwk-set+json, application/json",
                    "accept-encoding": "identity",
                },
                timeout=self._timeout_s,
            )
            response = await self._client.send(request, stream=True, follow_redirects=False)
            try:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
                return bytes(body)
            finally:
                await response.aclose()

    async def aclose(self) -> None:
        """Cancel a running fetch (e.g. at shutdown)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # never raises, so our own cancellation stays ours
