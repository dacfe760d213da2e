"""Reusable pieces for end-to-end tests of the gateway, all on real loopback sockets.

* :mod:`upstream` -- :class:`~upstream.FakeUpstream`, an SSE origin server the test drives.
* :mod:`clients` -- :func:`~clients.open_sse` (httpx-based, parsed) and
  :class:`~clients.RawSSEClient` (raw socket, exact wire bytes, misbehaving clients).
* :mod:`gateway` -- :class:`~gateway.GatewayProcess`, the real gateway as a subprocess.

Import them as ``from tests.support.upstream import FakeUpstream`` (``tests`` is a namespace
package found through the working directory, hence ``python -m pytest`` from the repository
root). The modules here import each other relatively, so they do not depend on that spelling.
"""

from __future__ import annotations

from .clients import ParsedEvent, RawSSEClient, SSEParser, SSEStream, StreamEnded, open_sse, request
from .gateway import GatewayProcess, GatewayStartError
from .upstream import FakeUpstream, UpstreamConnection, UpstreamEvent, encode_event, frame_chunk

__all__ = [
    "FakeUpstream",
    "GatewayProcess",
    "GatewayStartError",
    "ParsedEvent",
    "RawSSEClient",
    "SSEParser",
    "SSEStream",
    "StreamEnded",
    "UpstreamConnection",
    "UpstreamEvent",
    "encode_event",
    "frame_chunk",
    "open_sse",
    "request",
]
