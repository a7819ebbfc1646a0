"""A small GET-only HTTP server for probes and ``/metrics`` (the controller's and the agent's), served from
one thread with asyncio: idle connections cost no thread, a request's head must arrive within
``header_timeout`` in all (a trickling client is cut, however slowly it sends), answers are computed by a
bounded pool of ``workers`` threads, and ``stop()`` returns within a second or two whatever clients do.
Every request passes ``httpguard.check_request`` first; each answer closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from orchestrator.errors import PortUnavailable
from orchestrator.httpguard import GuardConfig, check_request

__all__ = ["Headers", "HttpServer", "Reply"]

REASONS = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}
REASONS |= {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Reply:
    """An answer: status, body and its content type."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class Headers(Mapping[str, str]):
    """Request headers, looked up case-insensitively (the last of a repeated header wins)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._items = {name.lower(): value for name, value in pairs}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


Handler = Callable[[str, Headers], Reply]


class HttpServer:
    """Serves ``handler(path, headers)`` for GET on ``host:port`` (0: any free port, see ``.port``)."""

    def __init__(
        self,
        what: str,
        host: str,
        port: int,
        handler: Handler,
        guard: GuardConfig,
        *,
        header_timeout: float = 10.0,
        write_timeout: float = 10.0,
        max_connections: int = 4096,
        backlog: int = 1024,
        workers: int = 4,
        max_header_bytes: int = 16_384,
        unavailable: type[PortUnavailable] = PortUnavailable,
    ) -> None:
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._sock = socket.create_server((host, port), family=family, backlog=backlog)
        except OSError as error:
            raise unavailable(what, host, port, error) from error
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.handler = handler
        self.guard = guard
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self._backlog = backlog
        self._max_header_bytes = max_header_bytes
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"orch-http-{self.port}")
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._connections: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._run, name=f"orch-http-{self.port}", daemon=True)

    def start(self) -> HttpServer:
        self._thread.start()
        self._started.wait(5)
        return self

    def stop(self) -> None:
        """Stop listening, drop every open connection and return (within a few seconds at most)."""
        if self._thread.is_alive() and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=5)
        else:
            self._sock.close()
        self._pool.shutdown(wait=True, cancel_futures=True)  # a handler never waits on a client

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, sock=self._sock, backlog=self._backlog, limit=self._max_header_bytes
        )
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) <= self.max_connections:
                reply = await self._answer(reader)
                if reply is not None:
                    writer.write(_response(reply))
                    await asyncio.wait_for(writer.drain(), self.write_timeout)
        except (OSError, asyncio.TimeoutError):
            pass  # the client went away or stopped reading: nothing to tell it
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> Reply | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError):
            return None  # closed early, or too slow: cut
        except asyncio.LimitOverrunError:
            return Reply(400, b"request head too large\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return Reply(400, b"bad request line\n")
        method, target = parts[0], parts[1]
        pairs = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
        headers = Headers(pairs)  # type: ignore[arg-type]
        path = target.split("?", 1)[0]
        refusal = check_request(path, headers, self.guard)
        if refusal is not None:
            return Reply(refusal.status, f"{refusal.reason}\n".encode(), headers=refusal.headers)
        if method != "GET":
            return Reply(405, b"only GET\n", headers=(("Allow", "GET"),))
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self.handler, path, headers)
        except Exception:
            return Reply(500, b"internal error\n")


def _response(reply: Reply) -> bytes:
    lines = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}"]
    lines += [f"Content-Type: {reply.content_type}", f"Content-Length: {len(reply.body)}"]
    lines += ["Connection: close"]
    lines += [f"{name}: {value}" for name, value in reply.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body
