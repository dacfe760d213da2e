"""TLS termination: ALPN h2 and http/1.1, the chain in cert_file, the protocol and cipher
floor, and certificate reload on SIGHUP that keeps established streams (in every worker)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509

from gateway import tls
from gateway.config import TLSConfig
from tests.support.edge import Certificates, TLSGatewayProcess
from tests.support.h2client import H2Client
from tests.support.upstream import FakeUpstream


def tls_config(certs: Certificates) -> dict[str, str]:
    return {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file)}


def topics(upstream: FakeUpstream) -> list[dict[str, str]]:
    return [{"name": "t", "path": "/t", "upstream": upstream.url("/t")}]


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return Certificates.issue(tmp_path / "tls")


@pytest.fixture
async def gateway(
    upstream: FakeUpstream, tmp_path: Path, certs: Certificates
) -> AsyncIterator[TLSGatewayProcess]:
    config = {"server": {"tls": tls_config(certs)}, "topics": topics(upstream)}
    process = TLSGatewayProcess(config, tmp_path=tmp_path, client_context=certs.client_context())
    await process.start()
    yield process
    await process.stop()


async def handshake(
    port: int, context: ssl.SSLContext
) -> tuple[str | None, str | None, str | None, int]:
    """(ALPN protocol, TLS version, cipher, leaf serial) of one handshake."""
    async with asyncio.timeout(10):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        serial = int(x509.load_der_x509_certificate(der).serial_number)
        cipher = ssl_object.cipher()
        return (
            ssl_object.selected_alpn_protocol(),
            ssl_object.version(),
            cipher[0] if cipher else None,
            serial,
        )
    finally:
        writer.transport.abort()


def client_context(
    certs: Certificates,
    *,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
    version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    context = certs.client_context(alpn=alpn)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


async def test_alpn_h2_and_http11_with_the_chain_from_cert_file(
    gateway: TLSGatewayProcess, upstream: FakeUpstream, certs: Certificates
) -> None:
    # The client trusts only the root: the intermediate must come from the server.
    alpn, version, _, serial = await handshake(gateway.port, certs.client_context())
    assert (alpn, serial) == ("h2", certs.serial)
    assert version in ("TLSv1.2", "TLSv1.3")
    alpn, _, _, _ = await handshake(gateway.port, client_context(certs, alpn=("http/1.1",)))
    assert alpn == "http/1.1"

    async with await H2Client.connect(
        gateway.host, gateway.port, ssl_context=certs.client_context()
    ) as client:
        stream = client.request("/t")
        await upstream.wait_connections("/t", 1)
        await client.wait(lambda: stream.status is not None, 10, "response head")
        upstream.publish("/t", "over h2 and TLS", id="1")
        await client.wait_events(stream, 1)
        assert stream.events[0].data == "over h2 and TLS"

    async with httpx.AsyncClient(
        verify=client_context(certs, alpn=("http/1.1",)), trust_env=False
    ) as http1:
        response = await http1.get(gateway.url("/healthz"))
        assert (response.status_code, response.http_version) == (200, "HTTP/1.1")


@pytest.mark.parametrize(
    ("version", "ciphers"),
    [
        pytest.param(
            ssl.TLSVersion.TLSv1_1,
            "DEFAULT:@SECLEVEL=0",
            id="tls1.1",
            marks=pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning"),
        ),
        pytest.param(
            ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA", id="cbc"
        ),
        pytest.param(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256", id="cbc-sha256"),
    ],
)
async def test_old_protocols_and_weak_ciphers_are_refused(
    gateway: TLSGatewayProcess, certs: Certificates, version: ssl.TLSVersion, ciphers: str
) -> None:
    context = client_context(certs, version=version, ciphers=ciphers)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(gateway.port, context)


async def test_tls12_with_aead_and_forward_secrecy_is_accepted(
    gateway: TLSGatewayProcess, certs: Certificates
) -> None:
    for ciphers in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        context = client_context(certs, version=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
        alpn, version, cipher, _ = await handshake(gateway.port, context)
        assert (alpn, version, cipher) == ("h2", "TLSv1.2", ciphers)


async def test_sighup_reloads_the_certificate_in_every_worker_and_keeps_streams(
    upstream: FakeUpstream, tmp_path: Path, certs: Certificates
) -> None:
    config = {
        "server": {"tls": tls_config(certs), "workers": 2},
        "topics": topics(upstream),
    }
    gateway = TLSGatewayProcess(config, tmp_path=tmp_path, client_context=certs.client_context())
    await gateway.start()
    try:
        old = await H2Client.connect(gateway.host, gateway.port, ssl_context=certs.client_context())
        stream = old.request("/t")
        await old.wait(lambda: stream.status is not None, 10, "response head")
        await upstream.wait_connections("/t", 1)
        upstream.publish("/t", "before", id="1")
        await old.wait_events(stream, 1)

        # A new leaf from the same root: same trust, a different serial to tell them apart.
        leaf = certs.root.create_child_ca().issue_cert("127.0.0.1", "localhost")
        Certificates.write(leaf, certs.cert_file, certs.key_file)
        new_serial = Certificates.serial_of(leaf)
        gateway.send_signal(signal.SIGHUP)
        await wait_log_count(gateway, "TLS certificate reloaded", 2)
        for _ in range(8):  # over both workers (they share the listening socket)
            _, _, _, serial = await handshake(gateway.port, certs.client_context())
            assert serial == new_serial

        # The stream established under the old certificate is still served.
        upstream.publish("/t", "after the reload", id="2")
        await old.wait_events(stream, 2)
        assert [e.data for e in stream.events] == ["before", "after the reload"]
        assert old.goaway is None

        # A broken key file: the reload fails, the current certificate stays.
        certs.key_file.write_text("not a key\n")
        gateway.send_signal(signal.SIGHUP)
        await wait_log_count(gateway, "TLS reload failed, keeping the old certificate", 2)
        _, _, _, serial = await handshake(gateway.port, certs.client_context())
        assert serial == new_serial
        await old.aclose()
    finally:
        await gateway.stop()


async def wait_log_count(gateway: TLSGatewayProcess, needle: str, count: int) -> None:
    async with asyncio.timeout(10):
        while gateway.log_text().count(needle) < count:  # noqa: ASYNC110  (a log file)
            await asyncio.sleep(0.05)


# -- the context itself (no server) ------------------------------------------------------------


def serve_once(context: ssl.SSLContext, client: ssl.SSLContext) -> int:
    """One in-memory handshake; the serial of the certificate the server presented."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server_side = context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client_side, server_side):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    der = client_side.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_context_defaults_and_failed_reloads_keep_the_certificate(tmp_path: Path) -> None:
    root = trustme.CA()
    certs = Certificates.issue(tmp_path, root)
    config = TLSConfig(cert_file=str(certs.cert_file), key_file=str(certs.key_file))
    context = tls.create_context(config)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    names = {cipher["name"] for cipher in context.get_ciphers()}
    # TLS 1.3 suites, and for TLS 1.2 only ECDHE (forward secrecy) with an AEAD.
    assert all(n.startswith(("TLS_", "ECDHE-")) for n in names), names
    assert all("GCM" in n or "CHACHA20" in n for n in names), names
    assert serve_once(context, certs.client_context()) == certs.serial

    strict = tls.create_context(config.model_copy(update={"min_version": "TLSv1.3"}))
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_3

    other = root.create_child_ca().issue_cert("127.0.0.1")
    # A certificate that does not match the key: refused, the old one keeps serving.
    certs.cert_file.write_bytes(b"".join(b.bytes() for b in other.cert_chain_pems))
    with pytest.raises(tls.TLSFilesError):
        tls.reload(context, config)
    assert serve_once(context, certs.client_context()) == certs.serial
    # Missing files, and an encrypted key: refused too.
    with pytest.raises(tls.TLSFilesError):
        tls.reload(context, config.model_copy(update={"key_file": str(tmp_path / "missing")}))
    other.private_key_pem.write_to_path(str(certs.key_file))
    with pytest.raises(tls.TLSFilesError):
        tls.check_files(config.model_copy(update={"cert_file": str(certs.key_file)}))
    # The matching pair: reloaded, served from the next handshake on.
    tls.reload(context, config)
    assert serve_once(context, certs.client_context()) == Certificates.serial_of(other)
