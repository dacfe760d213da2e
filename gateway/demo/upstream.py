"""A tiny SSE origin for the demo: the kind of backend the gateway fronts.

    /clock              the time, every second, ids 1, 2, 3, ...
    /ticker             random-walk prices, five a second, event type "tick"
    /orders/{order_id}  the status of one order, every two seconds

Each path is one broadcast stream: every connection to it sees the same ids,
and a reconnect with ``Last-Event-ID`` is answered with what it missed from a
short history. Raw asyncio: the demo must not depend on the gateway's own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from urllib.parse import unquote

HISTORY = 200
STATUSES = ("received", "packed", "shipped", "out for delivery", "delivered")


class Broadcast:
    def __init__(self) -> None:
        self.next_id = 1
        self.history: deque[tuple[int, bytes]] = deque(maxlen=HISTORY)
        self.writers: set[asyncio.StreamWriter] = set()

    def publish(self, data: str, event: str | None = None) -> None:
        lines = [f"id: {self.next_id}"]
        if event:
            lines.append(f"event: {event}")
        lines.extend(f"data: {line}" for line in data.split("\n"))
        frame = ("\n".join(lines) + "\n\n").encode()
        self.history.append((self.next_id, frame))
        self.next_id += 1
        for writer in list(self.writers):
            if writer.is_closing():
                self.writers.discard(writer)
            else:
                writer.write(frame)

    def missed_since(self, last_id: str) -> bytes:
        if not last_id.isdigit():
            return b""
        after = int(last_id)
        return b"".join(frame for event_id, frame in self.history if event_id > after)


class DemoUpstream:
    def __init__(self) -> None:
        self.streams: dict[str, Broadcast] = {"/clock": Broadcast(), "/ticker": Broadcast()}
        self.server: asyncio.Server | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.prices = {"ACME": 100.0, "GLOBEX": 42.0, "INITECH": 7.5}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._handle, host, port)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._clock()), loop.create_task(self._ticker())]
        port_bound: int = self.server.sockets[0].getsockname()[1]
        return port_bound

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.server is not None:
            self.server.close()
        for stream in self.streams.values():
            for writer in stream.writers:
                writer.close()

    async def _clock(self) -> None:
        tick = 0
        while True:
            self.streams["/clock"].publish(time.strftime("%H:%M:%S"))
            if tick % 2 == 0:
                for path, stream in list(self.streams.items()):
                    if path.startswith("/orders/") and stream.writers:
                        status = STATUSES[(stream.next_id - 1) % len(STATUSES)]
                        order = unquote(path.rsplit("/", 1)[1])
                        stream.publish(json.dumps({"order": order, "status": status}))
            tick += 1
            await asyncio.sleep(1.0)

    async def _ticker(self) -> None:
        while True:
            symbol = random.choice(list(self.prices))
            self.prices[symbol] = round(self.prices[symbol] * random.uniform(0.99, 1.01), 2)
            payload = json.dumps({"symbol": symbol, "price": self.prices[symbol]})
            self.streams["/ticker"].publish(payload, event="tick")
            await asyncio.sleep(0.2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            target = request_line.split(" ")[1] if " " in request_line else "/"
            path = target.split("?", 1)[0]
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            stream = self.streams.get(path)
            if stream is None and path.startswith("/orders/") and path.count("/") == 2:
                stream = self.streams.setdefault(path, Broadcast())
            if stream is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\nconnection: close\r\n\r\n: demo upstream\n\n"
                + stream.missed_since(headers.get("last-event-id", ""))
            )
            stream.writers.add(writer)
            await reader.read()  # until the gateway disconnects
            stream.writers.discard(writer)
            writer.close()
