"""Shared pieces for the auth tests: keys, token builders, configs and a real JWKS server.

The few tests at the bottom check these helpers themselves, so a broken helper cannot make
the real tests pass vacuously.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.config import GatewayConfig, parse_config
from gateway.topics import TopicInstance, TopicRouter

SECRET = "s3cr3t-" + "x" * 40  # >= 32 bytes
ISSUER = "https://idp.example.com"
AUDIENCE = "sse-gateway"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_OTHER = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ATTACKER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)

TOPICS = [
    {"name": "prices", "path": "/prices", "upstream": "http://backend/prices"},
    {"name": "clock", "path": "/clock", "upstream": "http://backend/clock", "public": True},
    {"name": "orders", "path": "/orders/{id}", "upstream": "http://backend/orders/{id}"},
    {
        "name": "items",
        "path": "/orders/{id}/items/{item}",
        "upstream": "http://backend/orders/{id}/items/{item}",
    },
    {"name": "Reports", "path": "/Reports/{name}", "upstream": "http://backend/r/{name}"},
]


def pem(public_key: Any) -> bytes:
    data: bytes = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def write_pem(directory: Path, name: str, public_key: Any) -> str:
    path = directory / name
    path.write_bytes(pem(public_key))
    return str(path)


def public_jwk(private_key: Any, kid: str | None, alg: str | None = None) -> dict[str, Any]:
    public = private_key.public_key()
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk.pop("key_ops", None)
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    return jwk


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "topics": ["prices", "/orders/*"],
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not DROP}


DROP: Any = object()


def token(
    key: Any, alg: str = "HS256", headers: dict[str, Any] | None = None, **overrides: Any
) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raw_token(
    header: Any, payload: Any, signature: bytes = b"", sign_with: str | None = None
) -> str:
    """A token assembled by hand; ``header``/``payload`` given as str are used verbatim."""
    head = header if isinstance(header, str) else json.dumps(header)
    body = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64(head)}.{b64(body)}"
    if sign_with is not None:
        import hashlib
        import hmac

        signature = hmac.new(sign_with.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def gateway_config(auth: dict[str, Any] | None, **sections: Any) -> GatewayConfig:
    tree: dict[str, Any] = {"topics": TOPICS, **sections}
    if auth is not None:
        tree["auth"] = auth
    return parse_config(yaml.safe_dump(tree, sort_keys=False), env={})


def instances(*paths: str, config: GatewayConfig | None = None) -> list[TopicInstance]:
    router = TopicRouter((config or gateway_config(None)).topics)
    return [router.resolve(path) for path in paths]


class JWKSServer:
    """A loopback HTTP/1.1 server answering every GET with the current JWKS.

    Counts requests; ``status``, ``delay`` and ``body`` (raw bytes instead of the key set)
    simulate a failing or slow identity provider. One response per connection."""

    def __init__(self, keys: Sequence[dict[str, Any]] = ()) -> None:
        self.keys: list[dict[str, Any]] = list(keys)
        self.status = 200
        self.delay = 0.0
        self.body: bytes | None = None
        self.requests = 0
        self.paths: list[str] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            self.paths.append(head.split(b" ", 2)[1].decode())
            if self.delay:
                await asyncio.sleep(self.delay)
            body = self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()
            writer.write(
                b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % (self.status, len(body)) + body
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


# --------------------------------------------------------------------------- helper checks


def test_token_helpers_round_trip() -> None:
    made = token(SECRET, sub="bob")
    assert jwt.decode(made, SECRET, algorithms=["HS256"])["sub"] == "bob"
    forged = raw_token({"alg": "HS256", "typ": "JWT"}, claims(), sign_with=SECRET)
    assert jwt.decode(forged, SECRET, algorithms=["HS256"])["sub"] == "alice"
    assert "exp" not in claims(exp=DROP)


def test_instances_are_canonical() -> None:
    assert [i.path for i in instances("/prices", "/orders/a%20b", "/orders/%41")] == [
        "/prices",
        "/orders/a%20b",
        "/orders/A",
    ]


async def test_jwks_server_serves_and_counts() -> None:
    server = JWKSServer([public_jwk(RSA_KEY, "k1")])
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            answer = await client.get(server.url)
            server.status = 503
            failing = await client.get(server.url)
        assert answer.json()["keys"][0]["kid"] == "k1"
        assert failing.status_code == 503
        assert server.requests == 2
    finally:
        await server.stop()
