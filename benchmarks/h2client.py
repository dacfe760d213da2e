"""An h2c (prior knowledge) SSE client connection on the ``h2`` library directly.

One connection carries one GET stream per tracker. Flow control is kept out of
the way: the client raises its stream and connection windows at once and
acknowledges every DATA frame as it is parsed (``h2`` batches the
WINDOW_UPDATEs), so what is measured is the server's fan-out, not a window
running dry. Streams the server refuses or resets count as failed or
disconnected in the worker's report.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

if TYPE_CHECKING:
    from benchmarks.loadgen import Worker
    from benchmarks.sseclient import Slot

WINDOW = 1 << 24  # per stream; the connection window gets 1 GiB


class H2Client(asyncio.Protocol):
    def __init__(self, worker: Worker, slots: list[Slot], host: str, port: int, path: str) -> None:
        self.worker = worker
        self.slots = slots
        self.authority = f"{host}:{port}".encode()
        self.path = path.encode()
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.by_stream: dict[int, Slot] = {}
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        conn = self.conn
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(1 << 30)
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", self.authority),
            (b":path", self.path),
            (b"accept", b"text/event-stream"),
        ]
        for slot in self.slots:
            stream_id = conn.get_next_available_stream_id()
            slot.started_ns = time.monotonic_ns()
            conn.send_headers(stream_id, headers, end_stream=True)
            self.by_stream[stream_id] = slot
        self.transport.write(conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        conn = self.conn
        worker = self.worker
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            worker.errors[f"h2_{type(exc).__name__}"] += 1
            self.close()
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                stream_id = event.stream_id
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                slot = self.by_stream.get(stream_id)
                if slot is not None and event.data:
                    if not slot.established:
                        worker.established(slot, now)
                    slot.tracker.feed(event.data, now)
            elif isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers or []).get(b":status", b"?")
                slot = self.by_stream.get(event.stream_id or 0)
                if slot is not None and status != b"200":
                    worker.fail(slot, f"status_{status.decode('latin-1')}")
            elif isinstance(event, h2.events.StreamReset):
                slot = self.by_stream.pop(event.stream_id or 0, None)
                if slot is not None:
                    code = h2.errors.ErrorCodes(event.error_code or 0).name
                    worker.lost(slot, f"rst_{code}")
            elif isinstance(event, h2.events.StreamEnded):
                slot = self.by_stream.pop(event.stream_id or 0, None)
                if slot is not None:
                    worker.lost(slot, "stream_ended")
            elif isinstance(event, h2.events.ConnectionTerminated):
                worker.errors["goaway"] += 1
        out = conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def close(self) -> None:
        self.closing = True
        for slot in self.by_stream.values():
            slot.closing = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        kind = "eof" if exc is None else type(exc).__name__
        for slot in list(self.by_stream.values()):
            self.worker.lost(slot, f"conn_{kind}")
        self.by_stream.clear()
