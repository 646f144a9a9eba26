"""What a STAC document that came over the network may point at (issue 19).

A remote document (a STAC Item, a static catalog or a STAC API's page, read over http(s))
is untrusted: the hrefs it names are followed only when :func:`check_href` allows them.

- Relative hrefs (``x.tif``, ``./x.tif``, ``../x.tif``, and ``/data/x.tif``: a path on the
  document's own host) are URL references joined on the document's own URL (never on the
  local working folder or on a ``self`` link the document claims).
- An asset may be ``http``, ``https``, ``s3`` or ``gs`` (a STAC document: ``http`` or
  ``https``): never ``file://``, a Windows path, a raw GDAL ``/vsi...`` path or another
  scheme.
- An http(s) host must resolve to public addresses only, or be the document's own origin
  (scheme, host and port: a catalogue may name its own files). Loopback, private,
  link-local, unspecified, multicast and reserved addresses elsewhere are refused unless
  the operator sets ``REATTN_BATCH_ALLOW_PRIVATE_HREFS`` (workers/environment.py); nothing
  a document says can allow them.
- A host allowed because its name resolved to public addresses is checked again when a
  STAC document is read from it (:func:`check_peer`, on the address the socket reached),
  so a name that answers a public address to the check and a private one to the
  connection (DNS rebinding) is refused too. Asset reads (GDAL, fsspec) resolve the name
  themselves and are not checked again.
- ``s3://`` and ``gs://`` name a bucket of the object store GDAL is configured for (the
  endpoint is the operator's environment, never the document's): the bucket must be a
  bucket name.

A document read from a local file is the user's own: its hrefs are not checked here (an
href that starts with ``/`` there is a local path).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections import OrderedDict
from urllib.parse import urljoin, urlsplit, urlunsplit

from reattn_batch.workers.errors import InputError

#: Schemes an asset named by a remote document may use.
ASSET_SCHEMES = ("http", "https", "s3", "gs")
#: Schemes of a STAC document (an Item, a catalog, a page) a remote document may link to.
DOCUMENT_SCHEMES = ("http", "https")
#: Seconds to wait for the name service when checking a host.
RESOLVE_SECONDS = 10.0
DEFAULT_PORTS = {"http": 80, "https": 443}
#: An S3 or GCS bucket name (lower-case letters, digits, dots, dashes, underscores).
BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
FIX = (
    "a remote STAC document may name only http(s), s3 or gs hrefs on public hosts or its "
    "own origin (an operator allows private hosts with REATTN_BATCH_ALLOW_PRIVATE_HREFS=1)"
)


def is_url(href: str) -> bool:
    """An http(s) URL (a remote document), as opposed to a local path."""
    return urlsplit(href).scheme.lower() in DOCUMENT_SCHEMES


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL: the host in lower case without a trailing dot, the
    port made explicit for http(s)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower().rstrip("."), port or DEFAULT_PORTS.get(scheme)


def private_hosts_allowed() -> bool:
    """The operator's choice: REATTN_BATCH_ALLOW_PRIVATE_HREFS."""
    from reattn_batch.workers.environment import EnvironmentSettings

    return EnvironmentSettings.from_env("allow_private_hrefs").allow_private_hrefs


def check_href(
    href: str, named_by: str, what: str = "asset href", schemes: tuple[str, ...] = ASSET_SCHEMES
) -> str:
    """``href`` as named by the remote document at URL ``named_by``: the absolute URL
    (relative hrefs joined on ``named_by``, the scheme lower-cased) when it may be
    followed, else an InputError of one line naming both and the rule."""
    raw = str(href).strip()
    if raw.startswith("/vsi"):
        raise _refused(raw, named_by, what, "a raw GDAL /vsi path")
    if raw.startswith("\\"):
        raise _refused(raw, named_by, what, "a local path; write a URL or a relative href")
    url = urljoin(named_by, raw)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        why = "a local file" if scheme in ("", "file") else f"scheme {scheme}:"
        raise _refused(raw, named_by, what, why)
    url = urlunsplit((scheme, *parts[1:]))
    if scheme in ("s3", "gs"):
        if not BUCKET.fullmatch(parts.netloc) or not parts.path.strip("/"):
            raise _refused(raw, named_by, what, f"not a {scheme}://BUCKET/KEY URL")
        return url
    host = parts.hostname
    if not host:
        raise _refused(raw, named_by, what, "no host")
    if private_hosts_allowed():
        return url
    if origin(url) == origin(named_by):
        _remember_named(origin(url), refresh_only=True)
        return url
    problem = _non_public(host, origin(url)[2])
    if problem:
        raise _refused(raw, named_by, what, problem)
    _remember_named(origin(url))
    return url


def _refused(href: str, named_by: str, what: str, why: str) -> InputError:
    shown = href if len(href) <= 120 else href[:117] + "..."
    return InputError(f"{what} {shown!r} named by {named_by} is refused ({why}); {FIX}")


#: Seconds a host found public is taken as public without asking the name service again
#: (a listing checks the same few hosts thousands of times in a row).
PUBLIC_TTL_SECONDS = 5.0
#: Hosts found public, with when that answer expires (time.monotonic()); at most this many.
PUBLIC_HOSTS_KEPT = 4096
_PUBLIC: dict[tuple[str, int | None], float] = {}
#: Origins (scheme, host, port) allowed because their host resolved to public addresses,
#: most recently allowed last: a STAC document read from one must come from a public
#: address (:func:`check_peer`). Each check of an href puts its origin back at the end, so
#: only origins not named by the last NAMED_ORIGINS_KEPT checks are forgotten.
NAMED_ORIGINS_KEPT = 4096
_NAMED: OrderedDict[tuple[str, str, int | None], None] = OrderedDict()
_LOCK = threading.Lock()


def _remember_named(key: tuple[str, str, int | None], refresh_only: bool = False) -> None:
    with _LOCK:
        if key in _NAMED:
            _NAMED.move_to_end(key)
        elif not refresh_only:
            _NAMED[key] = None
            while len(_NAMED) > NAMED_ORIGINS_KEPT:
                _NAMED.popitem(last=False)


def check_peer(scheme: str, host: str, port: int | None, address: str) -> None:
    """An InputError of one line when a connection to ``scheme://host:port``, an origin a
    remote document named and :func:`check_href` allowed as public, reached ``address``,
    which is not public (the name answered differently, e.g. DNS rebinding), and the
    operator has not allowed private hosts; nothing for an origin the user named."""
    key = origin(f"{scheme}://{_netloc(host, port)}")
    with _LOCK:
        named = key in _NAMED
    if not named or private_hosts_allowed():
        return
    problem = address_problem(address)
    if problem:
        raise InputError(
            f"{key[0]}://{key[1]}:{key[2]} was allowed as a public host but the connection "
            f"reached {address}, a {problem} address, so nothing was read from it; {FIX}"
        )


def _netloc(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    return host if port is None else f"{host}:{port}"


def _non_public(host: str, port: int | None) -> str | None:
    """Why ``host`` is not a public host (None when every address it has is public)."""
    now = time.monotonic()
    with _LOCK:
        if _PUBLIC.get((host, port), 0.0) > now:
            return None
    try:
        addresses = _addresses(host, port)
    except OSError as exc:
        return f"cannot resolve host {host} ({exc.strerror or exc})"
    for address in addresses:
        kind = address_problem(address)
        if kind:
            ip = address.split("%", 1)[0]
            shown = host if host == ip else f"{host} ({ip})"
            return f"host {shown} is a {kind} address"
    with _LOCK:
        if len(_PUBLIC) >= PUBLIC_HOSTS_KEPT:
            for key in [k for k, expires in _PUBLIC.items() if expires <= now]:
                del _PUBLIC[key]
        if len(_PUBLIC) < PUBLIC_HOSTS_KEPT:
            _PUBLIC[(host, port)] = now + PUBLIC_TTL_SECONDS
    return None


def address_problem(address: str) -> str | None:
    """The kind of a non-public IP ``address`` (``loopback``, ``private``, ...); None
    when it is public. An IPv4 address written as IPv6 (``::ffff:10.0.0.1``) counts as
    its IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return _kind(ip)


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


def _addresses(host: str, port: int | None) -> list[str]:
    """The host's addresses from the name service, within RESOLVE_SECONDS (OSError)."""
    found: list[object] = []

    def resolve() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            found.append(exc)

    thread = threading.Thread(target=resolve, name="reattn-resolve", daemon=True)
    thread.start()
    thread.join(RESOLVE_SECONDS)
    if not found:
        raise OSError(f"no answer in {RESOLVE_SECONDS:g} s")
    if isinstance(found[0], OSError):
        raise found[0]
    return [info[4][0] for info in found[0]]  # type: ignore[index]
