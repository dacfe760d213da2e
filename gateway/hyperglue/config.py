"""hypercorn's settings plus what the gateway owns.

hypercorn's ``worker_serve`` asks ``config.ssl_enabled`` and
``config.create_ssl_context()`` once per process: handing it a context the
gateway owns means a certificate reload changes the very context the listeners
use.
"""

from __future__ import annotations

import ssl

from hypercorn.config import Config as HypercornConfig

from gateway.hyperglue.h2guard import H2Limits


class GatewayHypercornConfig(HypercornConfig):
    """hypercorn settings plus what the gateway owns: the TLS context (hypercorn uses
    it instead of building one from ``certfile``/``keyfile``) and the HTTP/2 limits
    read by :class:`GuardedH2Protocol`."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, h2_limits: H2Limits | None = None
    ) -> None:
        super().__init__()
        self.gateway_ssl_context = ssl_context
        self.gateway_h2_limits = h2_limits

    @property
    def ssl_enabled(self) -> bool:
        return self.gateway_ssl_context is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.gateway_ssl_context
