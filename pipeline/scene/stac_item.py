"""A STAC Item as a scene (issue 12): the Item (a local JSON file or an http(s) URL) names
the raster to read, its id names the store, and its href is recorded in the store so the
exported Item links back (``derived_from``).

The asset read is ``--asset NAME`` (job specs: ``run.asset``) when given, else the one
keyed ``visual`` (or ``rgb``), else the one whose roles include ``visual``; an Item with
none of these is refused in one line naming ``--asset`` and the Item's asset keys.

An Item read over http(s) is untrusted (issue 19): it is read within the bounds of
``scene/stac_io.py``, its asset href must pass ``scene/href_policy.py`` (relative hrefs
are joined on the URL that answered, after redirects), and its asset is opened only as a
GeoTIFF/COG (:data:`ASSET_DRIVER`), never as a VRT or another format that names further
files. A local Item file is the user's own and may name local files. The id names a
store only as one safe path component (:func:`store_stem`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from reattn_batch.names import name_characters
from reattn_batch.scene.href_policy import check_href, is_url
from reattn_batch.workers.describe import one_line
from reattn_batch.workers.errors import InputError, UserError

#: The one GDAL driver an asset named by a remote Item is opened with (GeoTIFF/COG): a VRT
#: and GDAL's other indirect formats name further files (local paths, /vsicurl/ URLs of
#: any host) that GDAL would open unchecked; other formats are refused, not audited.
ASSET_DRIVER = "GTiff"
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

    @property
    def remote(self) -> bool:
        """The Item came over http(s): its asset is untrusted (see :data:`ASSET_DRIVER`)."""
        return remote_item(self.item_href)


def remote_item(item_href: str) -> bool:
    """An Item at ``item_href`` (a path or URL, as a store records it) is remote, so its
    asset is opened with :data:`ASSET_DRIVER` only: it was read over http(s)."""
    return is_url(item_href)


#: A STAC API's Item endpoint: .../collections/{collection}/items/{id}
API_ITEM = re.compile(r"/collections/[^/]+/items/[^/?#]+/?$")


def is_stac_item(uri: str) -> bool:
    """A SCENE that names a STAC Item: a ``.json`` local file or http(s) URL, or a STAC
    API's ``/collections/{c}/items/{id}`` URL."""
    text = str(uri)
    name = text.split("?", 1)[0].rstrip("/")
    if is_url(text):
        return name.lower().endswith(ITEM_SUFFIX) or bool(API_ITEM.search(name))
    return "://" not in text and name.lower().endswith(ITEM_SUFFIX)


def item_location(uri: str) -> str:
    """URLs as given; local paths absolute."""
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().absolute())


#: A STAC Item id used as a store name as it is; any other id is made one (store_stem).
SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
#: Characters of an unsafe id kept in its store name, before the hash suffix.
UNSAFE_ID_KEPT = 100


def store_stem(item_id: str) -> str:
    """One safe path component from a STAC Item id (which comes from a catalogue, so is
    untrusted): the id itself when it matches :data:`SAFE_ID` without ``..``; otherwise
    its letters, digits, ``_`` and ``-`` (runs of anything else as one ``_``, at most
    UNSAFE_ID_KEPT characters) and ``-`` with 12 hex digits of the id's sha256, so the
    name is deterministic, never holds a separator, ``..``, NUL or a leading dot, and two
    ids do not share it (``../../x`` -> ``x-`` + 12 hex digits)."""
    text = str(item_id)
    if SAFE_ID.fullmatch(text) and ".." not in text:
        return text
    kept = name_characters(text).strip("_-")[:UNSAFE_ID_KEPT]
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{kept or 'item'}-{digest}"


def read_item(href: str):
    """The ``pystac.Item`` at ``href`` (cached per process), read within the bounds of
    ``scene/stac_io.py``; UserError if it cannot be read or is not an Item."""
    return read_item_document(href)[0]


@functools.lru_cache(maxsize=256)
def read_item_document(href: str):
    """(the ``pystac.Item`` at ``href``, where its relative hrefs are joined: the URL that
    answered after the redirects of an http(s) ``href``, else ``href``), cached per
    process; see :func:`read_item`."""
    import pystac

    from reattn_batch.scene.stac_io import BoundedStacIO

    remote = is_url(href)
    if not remote and "://" in href:
        raise InputError(f"{href}: a STAC Item is read from a local file or an http(s) URL")
    if not remote and not Path(href).is_file():
        raise InputError(f"{href}: no such STAC Item file; pass the Item's JSON path or URL")
    stac_io = BoundedStacIO(local=not remote)
    try:
        obj = pystac.read_file(href, stac_io=stac_io)
    except UserError:
        raise
    except Exception as exc:  # unreadable, not JSON, not STAC: one line
        raise InputError(f"{href}: cannot read a STAC Item ({one_line(exc)})") from None
    if not isinstance(obj, pystac.Item):
        raise InputError(
            f"{href} is a STAC {type(obj).__name__}, not an Item; pass one Item as SCENE "
            "(regional jobs take catalogs: scenes.stac_catalog)"
        )
    return obj, stac_io.bases.get(href, href)


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
    """The Item at ``uri`` and the asset to read from it: an Item read over http(s) may
    name only what ``scene/href_policy.py`` allows (relative hrefs on its own URL)."""
    href = item_location(uri)
    item, base = read_item_document(href)
    key = choose_asset(item, asset, href)
    if is_url(href):  # joined on the URL that answered (after redirects), then checked
        asset_href = check_href(item.assets[key].href, base)
    else:  # the user's own file: local paths too
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
