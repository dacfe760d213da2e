"""Support for edge tests: test certificates (trustme, with an intermediate CA), a gateway
process serving TLS, a loopback TCP proxy that can drop every connection on command, and
reading a worker pool's pids from the gateway log."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

import httpx
import trustme

from tests.support.gateway import GatewayProcess, GatewayStartError

__all__ = ["Certificates", "TCPProxy", "TLSGatewayProcess", "free_port", "worker_pids"]

_LINGER_RST = struct.pack("ii", 1, 0)


def free_port() -> int:
    """A port free right now (for configs that must name ``host:port`` explicitly)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Certificates:
    """A root CA, an intermediate CA and a leaf for 127.0.0.1/localhost issued by the
    intermediate. ``cert_file`` holds the leaf followed by the intermediate (the chain)."""

    root: trustme.CA
    cert_file: Path
    key_file: Path
    serial: int

    @classmethod
    def issue(cls, directory: Path, root: trustme.CA | None = None) -> Certificates:
        root = root or trustme.CA()
        intermediate = root.create_child_ca()
        leaf = intermediate.issue_cert("127.0.0.1", "localhost")
        directory.mkdir(parents=True, exist_ok=True)
        cert_file = directory / "cert.pem"
        key_file = directory / "key.pem"
        cls.write(leaf, cert_file, key_file)
        return cls(root, cert_file, key_file, cls.serial_of(leaf))

    @staticmethod
    def write(leaf: trustme.LeafCert, cert_file: Path, key_file: Path) -> None:
        cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key_file.write_bytes(leaf.private_key_pem.bytes())

    @staticmethod
    def serial_of(leaf: trustme.LeafCert) -> int:
        from cryptography import x509

        return int(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number)

    def client_context(self, *, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> ssl.SSLContext:
        """Trusts only the root: a handshake succeeds only if the server sends the chain."""
        context = ssl.create_default_context()
        self.root.configure_trust(context)
        context.set_alpn_protocols(list(alpn))
        return context


class TLSGatewayProcess(GatewayProcess):
    """:class:`GatewayProcess` for a gateway whose listener speaks TLS: ``url()`` is https
    and readiness is probed over TLS, trusting ``client_context``."""

    def __init__(self, *args: object, client_context: ssl.SSLContext, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.client_context = client_context

    def url(self, path: str) -> str:
        return super().url(path).replace("http://", "https://", 1)

    async def _wait_healthy(self, timeout: float) -> None:
        process = self._process
        assert process is not None
        problem = "no answer yet"
        try:
            async with (
                httpx.AsyncClient(verify=self.client_context, trust_env=False, timeout=5) as client,
                asyncio.timeout(timeout),
            ):
                while process.returncode is None:
                    try:
                        response = await client.get(self.url("/healthz"))
                    except httpx.HTTPError as error:
                        problem = repr(error)
                    else:
                        if response.status_code == 200:
                            return
                        problem = f"/healthz answered {response.status_code}"
                    await asyncio.sleep(0.05)  # nothing announces readiness
        except TimeoutError:
            problem = f"not healthy within {timeout}s ({problem})"
        await self.stop(timeout=2.0)
        raise GatewayStartError(f"{self.name}: {problem}\n{self._log_tail()}")


def worker_pids(log_text: str) -> dict[int, list[int]]:
    """Worker index -> pids in start order, from the supervisor's log lines."""
    pids: dict[int, list[int]] = {}
    for index, pid in re.findall(r"supervisor: worker (\d+) started \(pid (\d+)\)", log_text):
        pids.setdefault(int(index), []).append(int(pid))
    return pids


class TCPProxy:
    """A loopback TCP relay to ``target``. :meth:`drop_all` resets every relayed connection
    on both sides at once, as a network failure would; ``bytes_down`` counts what the target
    sent towards clients (TLS records included)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.bytes_down = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        loop = asyncio.get_running_loop()
        down = loop.create_task(self._pump(up_reader, writer, count=True))
        up = loop.create_task(self._pump(reader, up_writer, count=False))
        self._tasks.update((down, up))
        try:
            await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pairs.discard(pair)
            for task in (down, up):
                task.cancel()
                self._tasks.discard(task)
            await asyncio.gather(down, up, return_exceptions=True)
            for side in pair:
                side.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if count:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()

    def drop_all(self) -> int:
        pairs = list(self._pairs)
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)
        return len(pairs)

    async def stop(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()
