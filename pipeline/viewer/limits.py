"""The viewer's bounds on connections: how many, and how long one may stall.

Each connection the server accepts holds one thread until it closes. ``ConnectionSlots``
lets at most ``MAX_CONNECTIONS`` be open at a time. When all are taken, a new connection
takes the slot of the one that has waited longest for its next request (a half-sent
request, an idle keep-alive connection), which is shut down; when every slot is busy
answering, the new one waits up to the request timeout for a slot, then is closed
unanswered. Each socket operation (reading a request line or header, sending a response)
times out after ``REQUEST_TIMEOUT_S``, which then ends its connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from reattn_batch.workers.errors import InputError

#: Seconds one read or write of a connection may stall before the connection is closed.
REQUEST_TIMEOUT_S = 20.0
#: Connections (and so handler threads) open at a time.
MAX_CONNECTIONS = 32
#: Connections the operating system queues before the server accepts them.
LISTEN_BACKLOG = 128


class ConnectionSlots:
    """At most ``limit`` connections; the one waiting longest for a request gives way."""

    def __init__(self, limit: int = MAX_CONNECTIONS) -> None:
        """limit: connections open at a time (at least 1)."""
        if limit < 1:
            raise InputError(f"max_connections={limit}: pass at least 1")
        self.limit = limit
        self._cond = threading.Condition()
        # socket -> monotonic time since it waits for a request (s), or None while answering
        self._open: dict[socket.socket, float | None] = {}
        self._evicted: set[socket.socket] = set()

    def admit(self, sock: socket.socket, wait_s: float) -> bool:
        """Take a slot for ``sock`` (shutting down the connection that has waited longest
        for a request if all are taken); False if none is free within ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while len(self._open) >= self.limit:
                waiting = {
                    s: t for s, t in self._open.items() if t is not None and s not in self._evicted
                }
                if waiting:
                    oldest = min(waiting, key=waiting.__getitem__)
                    self._evicted.add(oldest)
                    _shut(oldest)  # its thread reads end-of-file and releases the slot
                left = deadline - time.monotonic()
                timed_out = left <= 0 or not self._cond.wait(left)
                if timed_out and len(self._open) >= self.limit:
                    return False
            self._open[sock] = time.monotonic()
            return True

    def answering(self, sock: socket.socket) -> None:
        """``sock`` has sent a whole request head: it keeps its slot until it is answered."""
        with self._cond:
            if sock in self._open:
                self._open[sock] = None

    def waiting(self, sock: socket.socket) -> None:
        """``sock`` waits for its next request (it may give way to a new connection)."""
        with self._cond:
            if sock in self._open and self._open[sock] is None:
                self._open[sock] = time.monotonic()

    def release(self, sock: socket.socket) -> None:
        """``sock`` is closed: its slot is free."""
        with self._cond:
            self._open.pop(sock, None)
            self._evicted.discard(sock)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._open)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer
        sock.shutdown(socket.SHUT_RDWR)
