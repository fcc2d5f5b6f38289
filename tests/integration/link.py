"""A network link to a real server that a test can cut and restore.

The service under test is pointed at the link's port instead of the server's, so
a test can make Postgres or Redis go away for it (the listener closes and every
open connection is dropped) and come back, while the server itself keeps running
for everyone else. It also counts the connections opened through it.
"""

from __future__ import annotations

import asyncio
import contextlib

from service_processes import free_port


class Link:
    """Forwards ``127.0.0.1:port`` to ``target`` while up."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self.accepted = 0
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._ends: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    async def cut(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        ends = list(self._ends)
        for end in ends:
            end.transport.abort()
        async with asyncio.timeout(10):
            await asyncio.gather(*(end.wait_closed() for end in ends), return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        ends = (writer, upstream_writer)
        self._ends.update(ends)
        try:
            await asyncio.gather(_copy(reader, upstream_writer), _copy(upstream_reader, writer))
        finally:
            for end in ends:
                end.close()
                self._ends.discard(end)


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Bytes from ``source`` to ``sink`` until either end closes."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        sink.write_eof()
    sink.transport.abort()
