"""Scenes of a regional job from a STAC catalogue (issue 12): a STAC API search
(pystac-client) or a static catalog/collection. Each Item becomes one scene, named by its
href (``pipeline/scene/stac_item.py`` reads it) and a store named from the id the listing
returned, so a re-run of the job skips the Items already mapped.

A catalogue is untrusted (issue 19):

- every document is read within the bounds of ``scene/stac_io.py`` (timeouts, a body
  cap, checked redirects), and every href a remote document names (a ``next`` page, an
  Item's ``self`` link, a catalog's ``child`` and ``item`` links) must pass
  ``scene/href_policy.py``;
- a listing ends, with a warning and the Items found so far, at ``max_items`` Items
  (default :data:`DEFAULT_MAX_ITEMS`), at a ``next`` link it has already followed, or
  after :data:`LISTING_SECONDS`;
- listing reads no asset: each Item is read again and its asset resolved only when its
  scene is mapped, so one Item that is missing, refused or without a visual asset fails
  only its own scene (a :class:`Listed` with a ``problem`` fails at once, unread).
"""

from __future__ import annotations

import dataclasses
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
    """One Item of a catalogue: where to read it, the id the listing gave, and a problem
    (one line) that fails its scene without reading it (None: nothing known wrong)."""

    href: str
    item_id: str
    problem: str | None = None


class _Listing:
    """The Items found so far, once each (by id and by href), within the cap and time."""

    def __init__(self, source: str, cap: int) -> None:
        self.source, self.cap = source, cap
        self.deadline = time.monotonic() + LISTING_SECONDS
        self.found: dict[str, Listed] = {}
        self.hrefs: set[str] = set()
        self.counted = 0  # Items and documents counted against the cap
        self.repeats = 0

    def add(self, listed: Listed) -> None:
        self.counted += 1
        if listed.item_id in self.found or listed.href in self.hrefs:
            self.repeats += 1
            return
        self.found[listed.item_id] = listed
        self.hrefs.add(listed.href)

    def more(self, what: str) -> bool:
        """Whether to go on; else logs why the listing stops here."""
        if self.counted >= self.cap:
            log.warning(
                "%s: stopped at %d %s (max_items); the catalogue may hold more: raise "
                "scenes.stac_search.max_items to map them", self.source, self.cap, what,
            )  # fmt: skip
            return False
        if time.monotonic() > self.deadline:
            log.warning(
                "%s: stopped after %g s of listing with %d Items; the catalogue may hold "
                "more", self.source, LISTING_SECONDS, len(self.found),
            )  # fmt: skip
            return False
        return True

    def items(self) -> list[Listed]:
        if self.repeats:
            log.warning(
                "%s: %d Items listed more than once were mapped once", self.source, self.repeats
            )
        return list(self.found.values())


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
            super().__init__(max_retries=None)
            self.session = CheckedSession()

        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            href = source.href if isinstance(source, Link) else str(source)
            if not is_url(href):  # StacApiIO would open() it as a local file
                check_href(href, root, what="link", schemes=DOCUMENT_SCHEMES)
            return super().read_text(source, *args, **kwargs)

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

    from reattn_batch.scene.stac_io import stac_timeout

    listing = _Listing(f"STAC API search at {search.url}", search.max_items)
    io = _api_io(search.url)
    timeout = stac_timeout()
    try:
        client = Client.open(search.url, stac_io=io, timeout=(timeout, timeout))
        result = client.search(
            collections=search.collections,
            bbox=list(search.bbox) if search.bbox else None,
            intersects=search.intersects,
            datetime=search.datetime,
            query=search.query,
            max_items=search.max_items,
        )
        for data in result.items_as_dicts():
            if (listed := _search_item(data, search.url)) is not None:
                listing.add(listed)
            if not listing.more("Items"):
                break
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
    links = data.get("links") or []
    self_href = next(
        (x.get("href") for x in links if isinstance(x, dict) and x.get("rel") == "self"), None
    )
    if isinstance(self_href, str) and self_href.strip():
        try:
            href = check_href(self_href, api_url, what="Item link", schemes=DOCUMENT_SCHEMES)
        except UserError as exc:
            return Listed(self_href, item_id, str(exc))
        return Listed(href, item_id)
    collection = data.get("collection")
    if isinstance(collection, str) and collection:
        path = f"collections/{quote(collection, safe='')}/items/{quote(item_id, safe='')}"
        return Listed(f"{api_url.rstrip('/')}/{path}", item_id)
    return Listed(
        f"{api_url}#{quote(item_id, safe='')}",
        item_id,
        f"STAC Item {item_id!r} from {api_url} has no self link and no collection; "
        "it cannot be read again as a scene",
    )


# ----------------------------------------------------------------------------- static


def catalog_items(href: str) -> list[Listed]:
    """Items of a static STAC catalog or collection (all levels, each catalog's Items
    before its children's), read within the bounds of the module docstring. Each Item is
    read once for its id; one that cannot be read or is refused is listed under its href
    with its problem (its scene fails). An unreadable or refused catalog fails the listing
    (UserError)."""
    from pystac import STACObjectType
    from pystac.serialization import identify_stac_object_type

    from reattn_batch.scene.stac_item import read_item

    if not is_url(href) and not Path(href).is_file():
        raise InputError(f"{href}: no such STAC catalog file")
    listing = _Listing(f"STAC catalog {href}", DEFAULT_MAX_ITEMS)
    stack, seen = [href], {href}
    while stack and listing.more("Items and catalogs"):
        current = stack.pop()
        data = _read_json(current)
        kind = _kind(data, identify_stac_object_type)
        if current != href:
            listing.counted += 1  # documents count against the cap too
        if kind == STACObjectType.ITEM and current == href:
            item = read_item(href)
            return [Listed(href, item.id)]
        if kind not in (STACObjectType.CATALOG, STACObjectType.COLLECTION):
            raise InputError(f"{current} is not a STAC catalog or collection")
        children: list[str] = []
        for link in data.get("links") or []:
            if not isinstance(link, dict) or link.get("rel") not in ("child", "item"):
                continue
            target, problem = _follow(link.get("href"), current, link["rel"])
            if link["rel"] == "child":
                if problem:
                    raise InputError(problem)
                if target not in seen:
                    seen.add(target)
                    children.append(target)
                continue
            if problem:  # no id: the href names the store (made one safe component)
                listing.add(Listed(target, target, problem))
            else:
                try:
                    listing.add(Listed(target, read_item(target).id))
                except UserError as exc:
                    listing.add(Listed(target, target, str(exc)))
            if not listing.more("Items and catalogs"):
                return listing.items()
        stack.extend(reversed(children))
    return listing.items()


def _read_json(href: str) -> dict[str, Any]:
    from reattn_batch.scene.stac_io import read_text

    try:
        data = json.loads(read_text(href, local=not is_url(href)))
    except UserError as exc:
        raise InputError(f"cannot read the STAC catalog {href} ({exc})") from None
    except ValueError as exc:
        raise InputError(f"cannot read the STAC catalog {href} ({one_line(exc, 200)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{href} is not a STAC catalog or collection")
    return data


def _kind(data: dict[str, Any], identify) -> Any:
    try:
        return identify(data)
    except Exception:
        return None


def _follow(raw: Any, base: str, rel: str) -> tuple[str, str | None]:
    """A ``child`` or ``item`` link of the document at ``base``: (absolute href, problem).
    A remote document's links must pass the href policy; a local one's are the user's."""
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
