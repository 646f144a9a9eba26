"""Reading STAC documents within bounds (issue 19): every STAC Item, catalog and STAC API
page the program reads comes through here, so a stalled, endless or redirecting server
costs a bounded time and memory.

- Connect and read timeouts of ``REATTN_BATCH_STAC_TIMEOUT`` seconds (30; a read is any
  wait for the next bytes), and a whole document within :data:`DOCUMENT_TIMEOUTS` times
  that, so a server that trickles a byte now and then is cut off too.
- A body of at most :data:`MAX_DOCUMENT_BYTES`, read as it streams (after decompression)
  and abandoned at the cap; a larger ``Content-Length`` is refused before reading.
- At most :data:`MAX_REDIRECTS` redirects, each target checked by the href policy
  (``scene/href_policy.py``) as an href the redirecting server names.
- Each connection's peer address checked by the href policy (``check_peer``) before a
  request is sent: a host a remote document named and the policy found public must have
  connected to a public address (a direct connection; through a proxy the proxy resolves).
- Local files only where the caller reads the user's own documents (``local=True``).

Every failure is an InputError of one line naming the URL. :class:`BoundedStacIO` is
pystac's ``StacIO`` on these rules; ``regional/catalogue.py`` gives pystac-client the same
through :func:`send`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import requests
from pystac.stac_io import DefaultStacIO
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from reattn_batch.scene.href_policy import DOCUMENT_SCHEMES, check_href, check_peer, is_url
from reattn_batch.workers.describe import one_line
from reattn_batch.workers.errors import InputError, UserError

#: The largest STAC document read (an Item, a catalog, a page of search results), bytes.
MAX_DOCUMENT_BYTES = 32 * 2**20
#: A whole document must arrive within this many REATTN_BATCH_STAC_TIMEOUT.
DOCUMENT_TIMEOUTS = 4
MAX_REDIRECTS = 5
#: Bytes asked of the socket per read.
READ_SIZE = 64 * 1024
#: Connection failures retried (a refused or reset connection; never a read that stalled).
CONNECT_RETRIES = 2


def stac_timeout() -> float:
    """REATTN_BATCH_STAC_TIMEOUT: seconds to connect, and to wait for more of a body."""
    from reattn_batch.workers.environment import EnvironmentSettings

    return EnvironmentSettings.from_env("stac_timeout").stac_timeout


class _PeerCheckedHTTP(HTTPConnection):
    """An http connection whose peer address the href policy checks once connected."""

    policy_scheme = "http"

    def _new_conn(self):  # urllib3's: the connected socket, before any byte is sent
        sock = super()._new_conn()
        try:
            check_peer(self.policy_scheme, self.host, self.port, sock.getpeername()[0])
        except BaseException:
            sock.close()
            raise
        return sock


class _PeerCheckedHTTPS(_PeerCheckedHTTP, HTTPSConnection):
    """The same for https (checked before the TLS handshake)."""

    policy_scheme = "https"


class _PeerCheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PeerCheckedHTTP


class _PeerCheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PeerCheckedHTTPS


class _PeerCheckedAdapter(HTTPAdapter):
    """requests' adapter whose direct connections are :class:`_PeerCheckedHTTP` (its
    proxy connections are urllib3's own: the peer is the operator's proxy)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _PeerCheckedHTTPPool,
            "https": _PeerCheckedHTTPSPool,
        }


class CheckedSession(requests.Session):
    """A requests session that follows at most MAX_REDIRECTS redirects, each to a target
    the href policy allows the redirecting server to name, checks each connection's peer
    address (``check_peer``), and retries only failed connections. ``url`` is the URL
    of the last response it received (after its redirects)."""

    def __init__(self) -> None:
        super().__init__()
        self.max_redirects = MAX_REDIRECTS
        self.url: str | None = None
        retries = Retry(total=CONNECT_RETRIES, read=0, status=0, backoff_factor=0.5)
        for prefix in ("http://", "https://"):
            self.mount(prefix, _PeerCheckedAdapter(max_retries=retries))

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        response = super().send(request, **kwargs)
        self.url = response.url  # each redirect is sent from within: the last is final
        return response

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target:
            check_href(
                urljoin(resp.url, target), resp.url, what="redirect", schemes=DOCUMENT_SCHEMES
            )
        return target


def send(session: requests.Session, prepared: requests.PreparedRequest) -> bytes:
    """The body of ``prepared``'s response within the bounds (see the module docstring);
    an InputError for a failure, a status other than 2xx included."""
    url = prepared.url or "?"
    timeout = stac_timeout()
    deadline = time.monotonic() + DOCUMENT_TIMEOUTS * timeout
    try:
        with session.send(
            prepared, timeout=(timeout, timeout), stream=True, allow_redirects=True
        ) as response:
            if not 200 <= response.status_code < 300:
                raise InputError(f"{url}: HTTP {response.status_code} {response.reason or ''}")
            return _body(response, url, deadline, timeout)
    except UserError:
        raise
    except (requests.Timeout, ReadTimeoutError, TimeoutError):
        raise InputError(_silent(url, timeout)) from None
    except requests.TooManyRedirects:
        raise InputError(f"{url}: more than {MAX_REDIRECTS} redirects") from None
    except (requests.RequestException, Urllib3Error, OSError) as exc:
        if "timed out" in str(exc).lower():
            raise InputError(_silent(url, timeout)) from None
        raise InputError(f"{url}: cannot be read ({one_line(exc)})") from None


def _silent(url: str, timeout: float) -> str:
    return (
        f"{url}: the server sent nothing for {timeout:g} s (REATTN_BATCH_STAC_TIMEOUT); "
        "try again later or raise the timeout"
    )


def _body(response: requests.Response, url: str, deadline: float, timeout: float) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
        raise _too_large(url)
    chunks: list[bytes] = []
    size = 0
    while chunk := response.raw.read1(READ_SIZE, decode_content=True):
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise _too_large(url)
        if time.monotonic() > deadline:
            raise InputError(
                f"{url}: not received within {DOCUMENT_TIMEOUTS * timeout:g} s "
                f"({DOCUMENT_TIMEOUTS} x REATTN_BATCH_STAC_TIMEOUT); the server is too slow"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(url: str) -> InputError:
    return InputError(
        f"{url}: more than {MAX_DOCUMENT_BYTES // 2**20} MiB, too large for a STAC document"
    )


def fetch(url: str) -> tuple[bytes, str]:
    """GET ``url`` (http or https) within the bounds: (the body, the URL that answered,
    after its redirects)."""
    with CheckedSession() as session:
        prepared = session.prepare_request(requests.Request("GET", url))
        data = send(session, prepared)
        return data, session.url or url


def read_text(href: str, local: bool) -> str:
    """The text of the STAC document at ``href`` (see :func:`read_document`)."""
    return read_document(href, local)[0]


def read_document(href: str, local: bool) -> tuple[str, str]:
    """(the text of the STAC document at ``href``, the location its relative hrefs are
    joined on): an http(s) URL (the URL that answered, after its redirects), or
    (``local``) a local path or ``file://`` URL (``href``); InputError of one line
    otherwise."""
    base = href
    if is_url(href):
        data, base = fetch(href)
    else:
        parts = urlsplit(href)
        if parts.scheme not in ("", "file") or len(parts.scheme) == 1:  # 1: a drive letter
            raise InputError(f"{href}: cannot read a STAC document over {parts.scheme}://")
        if not local:
            raise InputError(f"{href}: a local file named by a remote STAC document is refused")
        path = Path(url2pathname(parts.path) if parts.scheme == "file" else href)
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            raise InputError(f"{href}: cannot read ({exc.strerror or exc})") from None
        if len(data) > MAX_DOCUMENT_BYTES:
            raise _too_large(href)
    try:
        return data.decode("utf-8"), base
    except UnicodeDecodeError:
        raise InputError(f"{href}: not UTF-8 text, so not a STAC document") from None


class BoundedStacIO(DefaultStacIO):
    """pystac's StacIO within the bounds of this module; local files only when ``local``
    (documents the user gave as files, not ones a remote document names)."""

    def __init__(self, local: bool, headers: dict[str, str] | None = None) -> None:
        super().__init__(headers=headers)
        self.local = local
        #: each href read -> where its relative hrefs are joined (read_document)
        self.bases: dict[str, str] = {}

    def read_text_from_href(self, href: str) -> str:
        text, self.bases[href] = read_document(href, self.local)
        return text

    def write_text_to_href(self, href: str, txt: str, *args: Any, **kwargs: Any) -> None:
        raise InputError(f"{href}: STAC documents are read here, never written")
