"""Who the viewer answers: the Host allow-list and, off the loopback, the URL's token.

Every request's ``Host`` header must name the loopback (``localhost``, ``127.0.0.1``,
``[::1]``), the address the server is bound to (for a wildcard address, this machine's
name and the addresses it resolves to), or one of ``allow_hosts``: a web page elsewhere
cannot reach the server through a DNS name it controls (DNS rebinding). A server bound to
an address other machines can reach also requires a random token as the first part of
every path (``/t/<token>/...``): the URL it prints carries it, and the page asks for
everything relative to that URL.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import re
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from reattn_batch.workers.errors import InputError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
#: Paths start with this and the token when one is required.
TOKEN_PREFIX = "/t/"
#: Random bytes of the token (it is their URL-safe base64 text).
TOKEN_BYTES = 24
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?"
)


def is_loopback(host: str) -> bool:
    """True if every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def host_name(text: str) -> str:
    """``text`` as an allow-list entry (lower case, an IPv6 address without brackets); an
    InputError naming ``allow_hosts`` unless it is a host name or an IP address."""
    name = text.strip().lower()
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if _HOST_NAME.fullmatch(name):
        return name.rstrip(".")
    raise InputError(
        f"allow_hosts={text!r} is not a host name or IP address; "
        "pass the name alone, without a scheme, port or path"
    )


def _machine_names() -> set[str]:
    """This machine's host name and the addresses it resolves to."""
    names = {socket.gethostname().lower()}
    with contextlib.suppress(socket.gaierror, UnicodeError):
        infos = socket.getaddrinfo(socket.gethostname(), None)
        names |= {i[4][0].split("%")[0] for i in infos}
    return names


@dataclass(frozen=True)
class Access:
    """The Host names a server answers and the token its paths need (None: none)."""

    hosts: frozenset[str]
    token: str | None

    @classmethod
    def for_bind(cls, host: str, allow_hosts: Iterable[str] = ()) -> Access:
        """The access rules of a server bound to ``host``: a token unless it is the loopback."""
        names = set(LOOPBACK_NAMES) | {host_name(h) for h in allow_hosts}
        bare = host.strip("[]").lower()
        if bare in WILDCARD_ADDRESSES:
            names |= _machine_names()
        else:
            names.add(bare)
        token = None if is_loopback(host) else secrets.token_urlsafe(TOKEN_BYTES)
        return cls(frozenset(names), token)

    @property
    def base(self) -> str:
        """The path of the page: ``/``, or ``/t/<token>/``."""
        return "/" if self.token is None else f"{TOKEN_PREFIX}{self.token}/"

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request's ``Host`` header names an allowed host (its port ignored)."""
        try:
            name = urlsplit(f"//{header or ''}").hostname
        except ValueError:  # e.g. an unclosed '['
            return False
        if name is None:
            return False
        with contextlib.suppress(ValueError):
            name = str(ipaddress.ip_address(name))  # one spelling of an IPv6 address
        return name.rstrip(".") in self.hosts

    def route_path(self, path: str) -> str | None:
        """``path`` without the token (``/t/<token>/api/info`` -> ``/api/info``); None if a
        token is required and ``path`` does not start with the right one; ``""`` for the
        right token without the slash after it (``/t/<token>``: redirect to ``base``)."""
        if self.token is None:
            return path
        if not path.startswith(TOKEN_PREFIX):
            return None
        given, slash, rest = path[len(TOKEN_PREFIX) :].partition("/")
        same = hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode("ascii"))
        if not same:
            return None
        return "/" + rest if slash else ""
