"""The viewer's server lifecycle: bind an address, serve until Ctrl-C or SIGTERM, close.

``make_server`` binds a threading HTTP server for one ``StoreView``, with its access rules
(``access.py``: the Host allow-list; off the loopback, a warning and a token in the URL)
and its bounds (``limits.py``: connections at a time, a timeout per read or write);
``serve`` runs it until interrupted, ``url_of`` says where. The routes are in
``handler.py``.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Iterable
from http.server import ThreadingHTTPServer

from reattn_batch.viewer.access import WILDCARD_ADDRESSES, Access
from reattn_batch.viewer.handler import make_handler
from reattn_batch.viewer.limits import (
    LISTEN_BACKLOG,
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT_S,
    ConnectionSlots,
)
from reattn_batch.viewer.store_view import StoreView
from reattn_batch.workers.errors import InputError

log = logging.getLogger("reattn_batch")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 0  # any free port


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most ``slots.limit`` connections at a time."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    access: Access
    slots: ConnectionSlots
    request_timeout: float

    def process_request(self, request, client_address) -> None:
        if not self.slots.admit(request, wait_s=self.request_timeout):
            log.debug("viewer: %s refused (%d connections busy)", client_address, len(self.slots))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:  # e.g. no thread could be started: the connection is dropped
            self.slots.release(request)
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release(request)

    def handle_error(self, request, client_address) -> None:
        log.debug("viewer: connection from %s failed", client_address, exc_info=True)


def make_server(
    viewer: StoreView,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_hosts: Iterable[str] = (),
    request_timeout: float = REQUEST_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> _Server:
    """A server listening on (host, port) for ``viewer``; an InputError if it cannot bind.

    allow_hosts: host names (or addresses) the ``Host`` header may name besides the
        loopback and ``host``, e.g. the name a proxy or other machines use.
    request_timeout: seconds a read or write of a connection may stall before it is closed.
    max_connections: connections open at a time (each holds a thread).

    Bound to an address other than the loopback, the server logs a warning and answers
    only paths that start with a random token (``url_of`` includes it).
    """
    access = Access.for_bind(host, allow_hosts)
    if not request_timeout > 0:
        raise InputError(f"request_timeout={request_timeout}: pass a number of seconds > 0")
    slots = ConnectionSlots(max_connections)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("ViewerServer", (_Server,), {"address_family": family})
    handler = make_handler(viewer, access, slots, request_timeout)
    try:
        server = server_class((host, port), handler)
    except OSError as exc:
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "pass another `port` (0 picks a free one) or `host`"
        ) from None
    server.access, server.slots, server.request_timeout = access, slots, request_timeout
    if access.token is not None:
        log.warning(
            "the viewer listens on %s, which other machines can reach: it answers only "
            "the URL printed below (it carries a secret token; share it only with those "
            "who may see this store) and only requests naming an allowed host",
            host,
        )
    return server


def url_of(server: _Server) -> str:
    """The page's URL (with its token when one is required); for a wildcard address
    (0.0.0.0, ::) it names this machine."""
    host, port = server.server_address[:2]
    if host in WILDCARD_ADDRESSES:
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{server.access.base}"


def serve(server: _Server, open_browser: bool = False, echo=print) -> None:
    """Serve until Ctrl-C (or SIGTERM); then close the socket and return, no traceback."""
    url = url_of(server)
    echo(f"Serving the map viewer at {url}  (Ctrl-C to stop)")
    if open_browser:
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    previous = None
    if threading.current_thread() is threading.main_thread():

        def stop(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    echo("viewer stopped")
