"""A STAC Item as a scene (issue 12): the Item (a local JSON file or an http(s) URL) names
the raster to read, its id names the store, and its href is recorded in the store so the
exported Item links back (``derived_from``).

The asset read is ``--asset NAME`` (job specs: ``run.asset``) when given, else the one
keyed ``visual`` (or ``rgb``), else the one whose roles include ``visual``; an Item with
none of these is refused in one line naming ``--asset`` and the Item's asset keys.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from reattn_batch.workers.errors import InputError

#: Asset keys read by default, in order (case-insensitive); then an asset with role "visual".
DEFAULT_ASSET_KEYS = ("visual", "rgb")
ITEM_SUFFIX = ".json"


@dataclasses.dataclass(frozen=True)
class StacScene:
    """The raster a STAC Item points at.

    item_href: the Item's location (absolute path or URL), recorded in the store.
    item_id: the Item's id (the default store name).
    asset_key: the asset read; asset_href: its absolute location (path or URL).
    datetime: the Item's datetime (ISO 8601) or None.
    """

    item_href: str
    item_id: str
    asset_key: str
    asset_href: str
    datetime: str | None


#: A STAC API's Item endpoint: .../collections/{collection}/items/{id}
API_ITEM = re.compile(r"/collections/[^/]+/items/[^/?#]+/?$")


def is_stac_item(uri: str) -> bool:
    """A SCENE that names a STAC Item: a ``.json`` local file or http(s) URL, or a STAC
    API's ``/collections/{c}/items/{id}`` URL."""
    text = str(uri)
    name = text.split("?", 1)[0].rstrip("/")
    if text.startswith(("http://", "https://")):
        return name.lower().endswith(ITEM_SUFFIX) or bool(API_ITEM.search(name))
    return "://" not in text and name.lower().endswith(ITEM_SUFFIX)


def item_location(uri: str) -> str:
    """URLs as given; local paths absolute."""
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().absolute())


@functools.lru_cache(maxsize=256)
def read_item(href: str):
    """The ``pystac.Item`` at ``href`` (cached per process); UserError if it is not one."""
    import pystac

    if "://" not in href and not Path(href).is_file():
        raise InputError(f"{href}: no such STAC Item file; pass the Item's JSON path or URL")
    try:
        obj = pystac.read_file(href)
    except Exception as exc:  # unreadable, not JSON, not STAC: one line
        text = " ".join(str(exc).split())[:200]
        raise InputError(
            f"{href}: cannot read a STAC Item ({type(exc).__name__}: {text})"
        ) from None
    if not isinstance(obj, pystac.Item):
        raise InputError(
            f"{href} is a STAC {type(obj).__name__}, not an Item; pass one Item as SCENE "
            "(regional jobs take catalogs: scenes.stac_catalog)"
        )
    return obj


def choose_asset(item, asset: str | None, href: str) -> str:
    """The key of the asset to read (see the module docstring)."""
    keys = list(item.assets)
    shown = ", ".join(keys) or "none"
    if asset is not None:
        if asset not in item.assets:
            raise InputError(
                f"asset={asset}: the STAC Item {href} has no such asset; its assets: {shown}"
            )
        return asset
    lower = {k.lower(): k for k in keys}
    for key in DEFAULT_ASSET_KEYS:
        if key in lower:
            return lower[key]
    for key, value in item.assets.items():
        if "visual" in (value.roles or []):
            return key
    raise InputError(
        f"{href}: the STAC Item has no RGB/visual asset; pass asset=NAME (its assets: {shown})"
    )


def resolve_item(uri: str, asset: str | None = None) -> StacScene:
    """The Item at ``uri`` and the asset to read from it."""
    href = item_location(uri)
    item = read_item(href)
    key = choose_asset(item, asset, href)
    asset_href = item.assets[key].get_absolute_href() or item.assets[key].href
    if asset_href.startswith("file://"):  # a local file named as a URL (STAC APIs do)
        asset_href = url2pathname(urlparse(asset_href).path)
    elif "://" not in asset_href and not Path(asset_href).is_absolute():
        asset_href = str((Path(href).parent / asset_href).absolute())
    return StacScene(
        item_href=href,
        item_id=item.id,
        asset_key=key,
        asset_href=asset_href,
        datetime=item.datetime.isoformat() if item.datetime else None,
    )
