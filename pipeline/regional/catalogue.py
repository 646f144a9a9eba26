"""Scenes of a regional job from a STAC catalogue (issue 12): a STAC API search
(pystac-client) or a static catalog/collection (pystac). Each Item becomes one scene,
named by its href (``pipeline/scene/stac_item.py`` reads it), so its store is
``<item id>.labels.zarr`` and a re-run of the job skips the Items already mapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reattn_batch.workers.describe import one_line
from reattn_batch.workers.errors import InputError, UserError


def item_href(item: Any, api_url: str | None = None) -> str:
    """Where the Item can be read again: its self link, else (an API's Item) the
    ``/collections/{c}/items/{id}`` endpoint."""
    href = item.get_self_href()
    if href:
        return href
    if api_url and item.collection_id:
        return f"{api_url.rstrip('/')}/collections/{item.collection_id}/items/{item.id}"
    raise InputError(f"STAC Item {item.id} has no self link; it cannot be read again as a scene")


def search_items(search: Any) -> list[str]:
    """Item hrefs of a ``scenes.stac_search`` section (``StacSearchSection``), in the
    API's order; a UserError (one line) when the API cannot be reached or searched."""
    from pystac_client import Client

    try:
        client = Client.open(search.url)
        result = client.search(
            collections=search.collections,
            bbox=list(search.bbox) if search.bbox else None,
            intersects=search.intersects,
            datetime=search.datetime,
            query=search.query,
            max_items=search.max_items,
        )
        items = list(result.items())
    except UserError:
        raise
    except Exception as exc:
        raise InputError(f"STAC API search at {search.url} failed ({one_line(exc, 200)})") from None
    return [item_href(item, search.url) for item in items]


def catalog_items(href: str) -> list[str]:
    """Item hrefs of a static STAC catalog or collection (all levels), in its order."""
    import pystac

    if "://" not in href and not Path(href).is_file():
        raise InputError(f"{href}: no such STAC catalog file")
    try:
        catalog = pystac.read_file(href)
    except Exception as exc:
        raise InputError(f"cannot read the STAC catalog {href} ({one_line(exc, 200)})") from None
    if isinstance(catalog, pystac.Item):
        return [item_href(catalog)]
    if not isinstance(catalog, pystac.Catalog):
        raise InputError(f"{href} is not a STAC catalog or collection")
    try:
        return [item_href(item) for item in catalog.get_items(recursive=True)]
    except UserError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read the Items of {href} ({one_line(exc, 200)})") from None
