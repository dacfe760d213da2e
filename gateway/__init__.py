"""SSE fan-out gateway: one upstream subscription per topic, any number of EventSource clients."""

__version__ = "0.1.0"
