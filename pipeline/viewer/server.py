"""The viewer's server lifecycle: bind an address, serve until Ctrl-C or SIGTERM, close.

``make_server`` binds a threading HTTP server for one ``StoreView`` (the Host check is on
when the address is the loopback), ``serve`` runs it until interrupted, ``url_of`` says
where. The routes are in ``handler.py``.
"""

from __future__ import annotations

import signal
import socket
import threading
from http.server import ThreadingHTTPServer

from reattn_batch.viewer.handler import make_handler
from reattn_batch.viewer.store_view import StoreView
from reattn_batch.workers.errors import InputError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 0  # any free port


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    import ipaddress

    return all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def make_server(viewer: StoreView, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> _Server:
    """A server listening on (host, port) for ``viewer``; a UserError if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("ViewerServer", (_Server,), {"address_family": family})
    handler = make_handler(viewer, check_host=_is_loopback(host))
    try:
        return server_class((host, port), handler)
    except OSError as exc:
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "pass another `port` (0 picks a free one) or `host`"
        ) from None


def url_of(server: _Server) -> str:
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


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
