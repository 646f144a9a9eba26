"""Scenes of a regional job from a STAC catalogue (issue 12): a STAC API search
(pystac-client) or a static catalog/collection. Each Item becomes one scene, named by its
href (``pipeline/scene/stac_item.py`` reads it), and a store named from what the listing
gave (:func:`store_texts`): a search's Item id (``<collection>__<id>`` where two listed
Items of different collections share an id), a static catalog's Item file name (read
without reading the Item), so a re-run of the job skips the Items already mapped.

A catalogue is untrusted (issue 19):

- every document is read within the bounds of ``scene/stac_io.py`` (timeouts, a body
  cap, checked redirects, checked peer addresses), and every href a remote document
  names (a ``next`` page, an Item's ``self`` link, a catalog's ``child`` and ``item``
  links) must pass ``scene/href_policy.py``, joined on the URL that answered;
- a listing ends, with a warning and the Items found so far, when the catalogue holds
  more than ``max_items`` Items (default :data:`DEFAULT_MAX_ITEMS`; a static catalog:
  that many Items and catalogs), at a ``next`` link it has already followed, or after
  :data:`LISTING_SECONDS`;
- listing reads no asset (and a static catalog's listing no Item): each Item is read
  and its asset resolved only when its scene is mapped, so one Item that is missing,
  refused or without a visual asset fails only its own scene (a :class:`Listed` with a
  ``problem`` fails at once, unread).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit
from urllib.request import url2pathname

from reattn_batch.scene.href_policy import DOCUMENT_SCHEMES, check_href, is_url
from reattn_batch.workers.describe import one_line
from reattn_batch.workers.errors import InputError, UserError

log = logging.getLogger(__name__)

#: Items a listing returns at most unless ``scenes.stac_search.max_items`` says otherwise
#: (also the most documents a static catalog walk reads).
DEFAULT_MAX_ITEMS = 10_000
#: Seconds a whole listing (all pages of a search, a catalog walk) may take.
LISTING_SECONDS = 600.0


@dataclasses.dataclass(frozen=True)
class Listed:
    """One Item of a catalogue: where to read it, the name the listing gave it (a search:
    the Item's id; a static catalog: its file name, see :func:`href_name`), its
    collection where the listing gave one, and a problem (one line) that fails its scene
    without reading it (None: nothing known wrong)."""

    href: str
    item_id: str
    problem: str | None = None
    collection: str | None = None


class _Listing:
    """The Items found so far, once each (by href; a search's also by collection and id),
    within the cap and time."""

    def __init__(self, source: str, cap: int, what: str, fix: str, by_id: bool) -> None:
        self.source, self.cap, self.what, self.fix, self.by_id = source, cap, what, fix, by_id
        self.deadline = time.monotonic() + LISTING_SECONDS
        self.found: list[Listed] = []
        self.keys: set[tuple[str | None, str]] = set()
        self.hrefs: set[str] = set()
        self.counted = 0  # Items and documents counted against the cap
        self.repeats = 0

    def add(self, listed: Listed) -> None:
        self.counted += 1
        key = (listed.collection, listed.item_id)
        if listed.href in self.hrefs or (self.by_id and key in self.keys):
            self.repeats += 1
            return
        self.found.append(listed)
        self.keys.add(key)
        self.hrefs.add(listed.href)

    def full(self) -> bool:
        """Whether the listing ends before one more Item or document (there is one): the
        cap or the time is reached; logs why."""
        if self.counted >= self.cap:
            log.warning(
                "%s: stopped at %d %s; the catalogue holds more: %s", self.source, self.cap,
                self.what, self.fix,
            )  # fmt: skip
            return True
        if time.monotonic() > self.deadline:
            log.warning(
                "%s: stopped after %g s of listing with %d Items; the catalogue may hold "
                "more", self.source, LISTING_SECONDS, len(self.found),
            )  # fmt: skip
            return True
        return False

    def items(self) -> list[Listed]:
        if self.repeats:
            log.warning(
                "%s: %d Items listed more than once were mapped once", self.source, self.repeats
            )
        return list(self.found)


def store_texts(listed: list[Listed]) -> dict[str, str]:
    """Each Item's href -> the text its store is named from (``run/request.py``:
    ``item_store_name`` makes it one safe path component): its name, unless another
    listed Item has the same name; then ``<collection>__<name>`` where its collection
    tells them apart (STAC ids are unique only within a collection), else
    ``<name>-<12 hex digits of the href's sha256>``. The same listing gives the same
    names on every run."""
    counts = collections.Counter(item.item_id for item in listed)
    pairs = collections.Counter((item.collection, item.item_id) for item in listed)
    out: dict[str, str] = {}
    for item in listed:
        if counts[item.item_id] == 1:
            out[item.href] = item.item_id
        elif item.collection and pairs[(item.collection, item.item_id)] == 1:
            out[item.href] = f"{item.collection}__{item.item_id}"
        else:
            digest = hashlib.sha256(item.href.encode("utf-8", "surrogatepass")).hexdigest()
            out[item.href] = f"{item.item_id}-{digest[:12]}"
    return out


# ----------------------------------------------------------------------------- STAC API


def _api_io(root: str):
    """pystac-client's StacApiIO within the bounds of ``scene/stac_io.py``; the API at
    ``root`` may name its own origin and public hosts (``scene/href_policy.py``)."""
    from pystac.link import Link
    from pystac_client.stac_api_io import StacApiIO
    from requests import Request

    from reattn_batch.scene.stac_io import CheckedSession, send

    class ApiIO(StacApiIO):
        repeated: str | None = None  # a next link met twice: the search ended there

        def __init__(self) -> None:
            super().__init__()
            # StacApiIO's session (its timeout and max_retries) is replaced: every request
            # goes through `request` below, on this session, within stac_io's bounds
            self.session = CheckedSession()

        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            if isinstance(source, Link):  # StacApiIO sends it through `request` (checked)
                return super().read_text(source, *args, **kwargs)
            # never StacApiIO's open() of a local file: an href joined on the API's root
            # and checked, then read within the bounds
            return self.request(str(source), *args, **kwargs)

        def request(
            self,
            href: str,
            method: str | None = None,
            headers: dict[str, str] | None = None,
            parameters: dict[str, Any] | None = None,
        ) -> str:
            href = check_href(href, root, what="link", schemes=DOCUMENT_SCHEMES)
            method = (method or "GET").upper()
            if method in ("POST", "PUT", "PATCH"):
                request = Request(method, href, headers=headers, json=parameters)
            else:
                request = Request(method, href, headers=headers, params=dict(parameters or {}))
            modified = self._req_modifier(request) if self._req_modifier else None
            prepared = self.session.prepare_request(modified or request)
            data = send(self.session, prepared)
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{href}: not UTF-8 text, so not a STAC API page") from None

        def get_pages(
            self, url: str, method: str | None = None, parameters: dict[str, Any] | None = None
        ) -> Iterator[dict[str, Any]]:
            """StacApiIO.get_pages, ending at a ``next`` link already followed."""
            page = self.read_json(url, method=method, parameters=parameters)
            followed: set[str] = set()
            while isinstance(page, dict) and (page.get("features") or page.get("collections")):
                yield page
                link = next(
                    (
                        x
                        for x in page.get("links") or []
                        if isinstance(x, dict) and x.get("rel") == "next"
                    ),
                    None,
                )
                if link is None or not isinstance(link.get("href"), str):
                    return
                link = {**link, "href": urljoin(url, link["href"])}
                key = json.dumps(link, sort_keys=True, default=str)
                if key in followed:
                    self.repeated = link["href"]
                    return
                followed.add(key)
                page = self.read_json(Link.from_dict(link), parameters=parameters)

    return ApiIO()


def search_items(search: Any) -> list[Listed]:
    """Items of a ``scenes.stac_search`` section (``StacSearchSection``), in the API's
    order, within the bounds of the module docstring; a UserError (one line) when the API
    cannot be reached or searched."""
    from pystac_client import Client

    listing = _Listing(
        f"STAC API search at {search.url}", search.max_items, "Items (max_items)",
        "raise scenes.stac_search.max_items to map them", by_id=True,
    )  # fmt: skip
    io = _api_io(search.url)
    try:  # no timeout here: stac_io's bounds apply to every request (ApiIO.request)
        client = Client.open(search.url, stac_io=io)
        result = client.search(
            collections=search.collections,
            bbox=list(search.bbox) if search.bbox else None,
            intersects=search.intersects,
            datetime=search.datetime,
            query=search.query,
            max_items=search.max_items + 1,  # one more: whether the search holds more
        )
        for data in result.items_as_dicts():
            if listing.full():
                break
            if (listed := _search_item(data, search.url)) is not None:
                listing.add(listed)
    except UserError:
        raise
    except Exception as exc:
        raise InputError(f"STAC API search at {search.url} failed ({one_line(exc, 200)})") from None
    if io.repeated:
        log.warning(
            "STAC API search at %s: the page at %s names itself (or an earlier page) as "
            "`next`; the search ended there with %d Items", search.url, io.repeated,
            len(listing.found),
        )  # fmt: skip
    return listing.items()


def _search_item(data: Any, api_url: str) -> Listed | None:
    """A search result as a scene: its ``self`` link (checked), else the API's
    ``/collections/{c}/items/{id}`` endpoint; None (a warning) without an id."""
    item_id = data.get("id") if isinstance(data, dict) else None
    if not isinstance(item_id, str) or not item_id.strip():
        log.warning("STAC API search at %s returned a feature without an id; left out", api_url)
        return None
    collection = data.get("collection")
    collection = collection if isinstance(collection, str) and collection else None
    links = data.get("links") or []
    self_href = next(
        (x.get("href") for x in links if isinstance(x, dict) and x.get("rel") == "self"), None
    )
    if isinstance(self_href, str) and self_href.strip():
        try:
            href = check_href(self_href, api_url, what="Item link", schemes=DOCUMENT_SCHEMES)
        except UserError as exc:
            return Listed(self_href, item_id, str(exc), collection)
        return Listed(href, item_id, None, collection)
    if collection:
        path = f"collections/{quote(collection, safe='')}/items/{quote(item_id, safe='')}"
        return Listed(f"{api_url.rstrip('/')}/{path}", item_id, None, collection)
    return Listed(
        f"{api_url}#{quote(item_id, safe='')}",
        item_id,
        f"STAC Item {item_id!r} from {api_url} has no self link and no collection; "
        "it cannot be read again as a scene",
    )


# ----------------------------------------------------------------------------- static


def catalog_items(href: str) -> list[Listed]:
    """Items of a static STAC catalog or collection (all levels, each catalog's Items
    before its children's), read within the bounds of the module docstring. Only the
    catalogs are read: each Item is named by its file name (:func:`href_name`) and read
    when its scene is mapped; an item link that is refused is listed with its problem
    (its scene fails). An unreadable or refused catalog fails the listing (UserError).
    ``href`` naming one Item lists that Item, named by its id."""
    from pystac import STACObjectType
    from pystac.serialization import identify_stac_object_type

    from reattn_batch.scene.stac_item import read_item

    if not is_url(href) and not Path(href).is_file():
        raise InputError(f"{href}: no such STAC catalog file")
    listing = _Listing(
        f"STAC catalog {href}", DEFAULT_MAX_ITEMS, "Items and catalogs",
        f"a static catalog is listed up to {DEFAULT_MAX_ITEMS:,} of them; map its "
        "sub-catalogs in separate jobs", by_id=False,
    )  # fmt: skip
    stack, seen = [href], {href}
    while stack:
        current = stack.pop()
        if current != href:
            if listing.full():
                break
            listing.counted += 1  # documents count against the cap too
        data, base = _read_json(current)
        kind = _kind(data, identify_stac_object_type)
        if kind == STACObjectType.ITEM and current == href:
            item = read_item(href)
            return [Listed(href, item.id)]
        if kind not in (STACObjectType.CATALOG, STACObjectType.COLLECTION):
            raise InputError(f"{current} is not a STAC catalog or collection")
        children: list[str] = []
        for link in data.get("links") or []:
            if not isinstance(link, dict) or link.get("rel") not in ("child", "item"):
                continue
            target, problem = _follow(link.get("href"), base, link["rel"])
            if link["rel"] == "child":
                if problem:
                    raise InputError(problem)
                if target not in seen:
                    seen.add(target)
                    children.append(target)
                continue
            if listing.full():
                return listing.items()
            listing.add(Listed(target, href_name(target), problem))
        stack.extend(reversed(children))
    return listing.items()


def href_name(href: str) -> str:
    """The name of a static catalog's Item: the last part of its href's path without
    ``.json`` (``.../S2A_x/S2A_x.json`` -> ``S2A_x``), ``item`` when nothing is left."""
    path = urlsplit(href).path if "://" in href else href
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name.lower().endswith(".json"):
        name = name[: -len(".json")]
    return name or "item"


def _read_json(href: str) -> tuple[dict[str, Any], str]:
    """(the catalog at ``href``, where its relative links are joined: the URL that
    answered, after redirects, or ``href``)."""
    from reattn_batch.scene.stac_io import read_document

    try:
        text, base = read_document(href, local=not is_url(href))
        data = json.loads(text)
    except UserError as exc:
        raise InputError(f"cannot read the STAC catalog {href} ({exc})") from None
    except ValueError as exc:
        raise InputError(f"cannot read the STAC catalog {href} ({one_line(exc, 200)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{href} is not a STAC catalog or collection")
    return data, base


def _kind(data: dict[str, Any], identify) -> Any:
    try:
        return identify(data)
    except Exception:
        return None


def _follow(raw: Any, base: str, rel: str) -> tuple[str, str | None]:
    """A ``child`` or ``item`` link of the document read from ``base`` (its URL after
    redirects, or its path): (absolute href, problem). A remote document's links must pass
    the href policy; a local one's are the user's."""
    if not isinstance(raw, str) or not raw.strip():
        return f"{base}#{rel}", f"a {rel} link of {base} has no href"
    if is_url(base):
        try:
            return check_href(raw, base, what=f"{rel} link", schemes=DOCUMENT_SCHEMES), None
        except UserError as exc:
            return raw, str(exc)
    if is_url(raw):
        return raw, None
    if raw.startswith("file://"):
        return url2pathname(urlsplit(raw).path), None
    return os.path.normpath(Path(base).parent / raw), None
