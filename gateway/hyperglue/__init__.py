"""What the gateway needs from hypercorn that ASGI does not expose.

The only package that touches hypercorn's internals. Pinned to hypercorn 0.18.0
(see pyproject.toml); tests/test_hyperglue.py and tests/test_http2.py cover
each piece on HTTP/1.1 and HTTP/2, so an upgrade that moves these internals
fails loudly instead of silently.

- :mod:`.connection`: from an ASGI ``send`` to the transport, to abort a
  request whose client stopped reading (:class:`Connection`) and to write
  frames straight to the socket, chunk-framed on HTTP/1.1
  (:class:`DirectH11Writer`) or as DATA frames through the connection's h2
  state on HTTP/2 (:class:`DirectH2Writer`): the fan-out fast path.
- :mod:`.config`: hypercorn's config plus a TLS context the gateway owns.
- :mod:`.h2guard`: :class:`GuardedH2Protocol`, HTTP/2 under the gateway's
  limits (Rapid Reset budget, header list size, zero-window backpressure).
- :mod:`.lean`: lighter per-request objects (memory per idle connection) and
  ``http.disconnect`` as a callback instead of a task per stream.

:func:`install` puts the replacements where hypercorn looks them up.
"""

from gateway.hyperglue.config import GatewayHypercornConfig
from gateway.hyperglue.connection import (
    Connection,
    DirectH2Writer,
    DirectH11Writer,
    DirectWriter,
    chunk_of,
    connection_of,
)
from gateway.hyperglue.h2guard import (
    GuardedH2Protocol,
    H2Limits,
    ResetBudget,
    h2_guard_installed,
    install_h2_guard,
)
from gateway.hyperglue.lean import (
    AppQueue,
    LeanEvent,
    install_lean_requests,
    lean_requests_installed,
    on_disconnect,
)


def install() -> None:
    """Every replacement, process-wide and idempotent: call before serving."""
    install_h2_guard()
    install_lean_requests()


__all__ = [
    "AppQueue",
    "Connection",
    "DirectH2Writer",
    "DirectH11Writer",
    "DirectWriter",
    "GatewayHypercornConfig",
    "GuardedH2Protocol",
    "H2Limits",
    "LeanEvent",
    "ResetBudget",
    "chunk_of",
    "connection_of",
    "h2_guard_installed",
    "install",
    "install_h2_guard",
    "install_lean_requests",
    "lean_requests_installed",
    "on_disconnect",
]
