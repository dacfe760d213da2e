"""TLS for the browser-facing listeners: one :class:`ssl.SSLContext` per process,
owned by the gateway (not built by hypercorn), so that SIGHUP can swap the
certificate on that same object: new handshakes get the new certificate while
connections already established keep theirs and stay open.

Defaults (RFC 9113 §9.2 and current practice):

- TLS 1.2 or newer (``server.tls.min_version: TLSv1.3`` to require 1.3).
- TLS 1.2 cipher suites: ECDHE key exchange (forward secrecy) with AES-GCM or
  ChaCha20-Poly1305 only. Excluded: static RSA key exchange, DHE, CBC modes,
  SHA-1 MACs, 3DES, RC4, NULL, EXPORT and anonymous suites. TLS 1.3 suites are
  all AEAD (OpenSSL's defaults: AES-GCM and ChaCha20-Poly1305).
- No TLS compression (CRIME), no renegotiation, server cipher preference.
- ALPN ``h2`` then ``http/1.1``. No client certificates are requested.

A reload validates the new files before touching the live context: the PEM
files are read once, checked on a scratch context, and only then loaded into
the live one (from private copies, so a file replaced in between cannot mix an
old key with a new certificate). A failed reload keeps the old certificate.
Encrypted private keys are refused (there is nobody to type a passphrase).
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from gateway.config import TLSConfig

log = logging.getLogger("gateway.tls")

ALPN_PROTOCOLS = ("h2", "http/1.1")
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TLSFilesError(Exception):
    """The certificate or key files cannot be used (unreadable, not PEM, not matching)."""


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    subject: str
    not_after: datetime.datetime
    chain_length: int

    def describe(self) -> str:
        return (
            f"subject {self.subject!r}, {self.chain_length} certificate(s) in the chain, "
            f"valid until {self.not_after:%Y-%m-%d %H:%M:%S}Z"
        )


def _no_passphrase() -> bytes:
    raise TLSFilesError("encrypted private keys are not supported")


def _read_pem(tls: TLSConfig) -> tuple[bytes, bytes]:
    try:
        chain = Path(tls.cert_file).read_bytes()
        if tls.ca_file:
            extra = Path(tls.ca_file).read_bytes()
            chain = chain.rstrip(b"\n") + b"\n" + extra
        key = Path(tls.key_file).read_bytes()
    except OSError as error:
        raise TLSFilesError(f"{error.filename}: {error.strerror or error}") from None
    return chain, key


def _load_into(context: ssl.SSLContext, chain: bytes, key: bytes) -> None:
    """``load_cert_chain`` takes paths only: give it private copies of exactly the
    bytes that were read (and validated)."""
    with tempfile.TemporaryDirectory(prefix="sse-gateway-tls-") as directory:
        cert_path = os.path.join(directory, "chain.pem")
        key_path = os.path.join(directory, "key.pem")
        for path, data in ((cert_path, chain), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
        try:
            context.load_cert_chain(cert_path, key_path, password=_no_passphrase)
        except ssl.SSLError as error:
            raise TLSFilesError(f"certificate and key rejected: {error.reason or error}") from None


def _describe(chain: bytes) -> CertificateInfo:
    try:
        certificates = x509.load_pem_x509_certificates(chain)
    except ValueError as error:
        raise TLSFilesError(f"certificate file: {error}") from None
    leaf = certificates[0]
    return CertificateInfo(
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc.replace(tzinfo=None),
        chain_length=len(certificates),
    )


def _validated(tls: TLSConfig) -> tuple[bytes, bytes, CertificateInfo]:
    chain, key = _read_pem(tls)
    info = _describe(chain)
    _load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), chain, key)  # scratch: check only
    return chain, key, info


def check_files(tls: TLSConfig) -> CertificateInfo:
    """Raise :class:`TLSFilesError` unless the files make a usable certificate."""
    return _validated(tls)[2]


def create_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server context with the gateway's defaults and the configured certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[tls.min_version]
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    )
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    chain, key, info = _validated(tls)
    _load_into(context, chain, key)
    log.info("tls: serving %s", info.describe())
    return context


def reload(context: ssl.SSLContext, tls: TLSConfig) -> CertificateInfo:
    """Load the configured files again into the live ``context``. On error (raised as
    :class:`TLSFilesError`) the context still serves the previous certificate.

    OpenSSL keeps one certificate per key type: replace an RSA certificate with an
    RSA one (ECDSA with ECDSA). Changing the key type needs a restart."""
    chain, key, info = _validated(tls)
    _load_into(context, chain, key)
    return info
