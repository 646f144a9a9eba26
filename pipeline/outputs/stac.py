"""A STAC Item for a label store (SPEC 3.3 "Export", issue 12): what the product is, where
it lies, which classes its values mean, how it was made, and its files.

- geometry / bbox: the store's outline in EPSG:4326 (edges densified before reprojection,
  ``regional.index.footprint``, odc-geo); a store without a CRS has no Item (UserError).
- datetime: the scene's acquisition time when known: the store attribute
  ``SCENE_DATETIME_ATTR`` (set by whoever knows it, e.g. a run from a STAC Item), else the
  ``TIFFTAG_DATETIME`` of a local GeoTIFF scene; otherwise the time the store was written,
  and ``reattn:datetime_source`` says which (``scene``, ``scene_file`` or ``store_written``).
- projection extension: ``proj:code`` (or ``proj:wkt2``), ``proj:shape``,
  ``proj:transform``, ``proj:bbox``; raster extension on the raster assets (uint8,
  nodata 255, resolution); classification extension on the Item and the raster assets:
  every class with its value, name, title and colour, and 255 as nodata.
- properties ``reattn:*``: method, upsampler, every hyperparameter, weight identities
  (and whether they were random), run fingerprint, software version, classes/synonyms.
- assets: ``labels`` (the Zarr store, always), ``cog``, ``polygons`` and ``quicklook``
  when given (written by the same ``export`` command); hrefs relative to the Item file.
- links: ``derived_from`` the source STAC Item when the store records one
  (``SOURCE_ITEM_ATTR``: an href string).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reattn_batch.names import name_characters
from reattn_batch.store.layout import NODATA
from reattn_batch.workers.errors import InputError

if TYPE_CHECKING:
    from reattn_batch.store import LabelStore

#: Store attribute naming the STAC Item the scene came from (an href); becomes a
#: ``derived_from`` link.
SOURCE_ITEM_ATTR = "source_stac_item"
#: Store attribute with the scene's acquisition time (ISO 8601).
SCENE_DATETIME_ATTR = "scene_datetime"
PREFIX = "reattn:"
MEDIA_TYPES = {
    ".gpkg": "application/geopackage+sqlite3",
    ".fgb": "application/vnd.flatgeobuf",
    ".parquet": "application/vnd.apache.parquet",
}
ZARR_MEDIA_TYPE = "application/vnd+zarr"
_NO_CRS = (
    "`stac`: {store} has no CRS, so a STAC Item cannot place it on Earth; "
    "assign the scene a CRS and run it again"
)


def item_id(store_path: str | os.PathLike) -> str:
    """The Item's id: the store's folder name without ``.zarr``."""
    name = Path(store_path).absolute().name
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def item_path(store_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Where ``write_item`` writes the Item: ``OUT_DIR/<id>.json``."""
    return Path(out_dir) / f"{item_id(store_path)}.json"


def check_dir(
    store: LabelStore | str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool
) -> Path:
    """The Item's path, refused (UserError) if it exists without ``overwrite`` or the folder
    is a file."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"stac={out_dir} is a file; pass a folder for the STAC Item")
    from reattn_batch.outputs.files import refuse_inputs
    from reattn_batch.store import label_store

    ls = label_store(store)
    if ls.crs_wkt is None:
        raise InputError(_NO_CRS.format(store=ls.path))
    path = item_path(ls.path, out_dir)
    refuse_inputs(ls, path, "`stac`")
    if path.exists() and not overwrite:
        raise InputError(f"`stac`: {path} already exists; pass overwrite=True to replace it")
    return path


def _class_names(names: list[str]) -> list[str]:
    """The classes' ``name`` of the classification extension: letters, digits, - and _
    only, one per class. A name with nothing of those (建筑, дорога) or one already taken
    becomes ``class_<value>``; the name as written is the ``title`` and ``description``."""
    out: list[str] = []
    for value, name in enumerate(names):
        short = name_characters(name).strip("_")
        out.append(short if short and short not in out else f"class_{value}")
    return out


def _scene_datetime(attrs: dict[str, Any], store_path: Path) -> tuple[dt.datetime, str]:
    """(datetime, source): the scene's when known, else when the store was written."""
    from pystac.utils import str_to_datetime

    recorded = attrs.get(SCENE_DATETIME_ATTR)
    if isinstance(recorded, str) and recorded:
        try:
            return str_to_datetime(recorded), "scene"
        except ValueError:
            pass
    scene = attrs.get("scene")
    if isinstance(scene, str) and Path(scene).is_file():
        try:
            import rasterio

            with rasterio.open(scene) as ds:
                stamp = ds.tags().get("TIFFTAG_DATETIME")
            if stamp:
                when = dt.datetime.strptime(stamp.strip(), "%Y:%m:%d %H:%M:%S")
                return when.replace(tzinfo=dt.UTC), "scene_file"
        except Exception:  # an unreadable or odd scene file: fall back to the store
            pass
    written = (store_path / ".zattrs").stat().st_mtime
    return dt.datetime.fromtimestamp(written, dt.UTC), "store_written"


def _classes(ls: Any) -> list[Any]:
    from pystac.extensions.classification import Classification

    out = [
        Classification.create(
            value=c,
            name=short,
            title=name,
            description=name,
            color_hint="{:02X}{:02X}{:02X}".format(*ls.colormap[c][:3]),
        )
        for c, (name, short) in enumerate(
            zip(ls.class_names, _class_names(ls.class_names), strict=True)
        )
    ]
    out.append(
        Classification.create(
            value=NODATA, name="nodata", title="nodata / not computed", nodata=True
        )
    )
    return out


def build_item(
    store: LabelStore | str | os.PathLike,
    *,
    cog: str | os.PathLike | None = None,
    vector: str | os.PathLike | None = None,
    quicklook: str | os.PathLike | None = None,
) -> Any:
    """The store's ``pystac.Item`` (asset hrefs absolute; ``write_item`` makes them
    relative to the Item file)."""
    import pystac
    import shapely.geometry
    from pystac.extensions.classification import ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension, Sampling
    from rasterio.crs import CRS

    from reattn_batch.regional.index import footprint
    from reattn_batch.store import label_store

    ls = label_store(store)
    attrs = ls.attrs
    if ls.crs_wkt is None:
        raise InputError(_NO_CRS.format(store=ls.path))
    t = ls.transform
    geometry = footprint(ls.geobox)
    when, source = _scene_datetime(attrs, ls.path)
    properties: dict[str, Any] = {
        f"{PREFIX}datetime_source": source,
        f"{PREFIX}method": attrs.get("method"),
        f"{PREFIX}upsampler": attrs.get("upsampler"),
        f"{PREFIX}hyperparameters": attrs.get("hyperparameters") or {},
        f"{PREFIX}weights": attrs.get("weights"),
        f"{PREFIX}random_weights": bool(attrs.get("random_weights", False)),
        f"{PREFIX}run_fingerprint": attrs.get("run_fingerprint"),
        f"{PREFIX}software_version": attrs.get("software_version"),
        f"{PREFIX}classes": attrs.get("classes"),
        f"{PREFIX}complete": bool(attrs.get("complete", False)),
        f"{PREFIX}scene": attrs.get("scene"),
        "gsd": abs(t.a),
    }
    if attrs.get("random_weights"):
        properties[f"{PREFIX}warning"] = "RANDOM CLIP weights: these labels mean nothing"
    item = pystac.Item(
        id=item_id(ls.path),
        geometry=geometry,
        bbox=list(shapely.geometry.shape(geometry).bounds),
        datetime=when,
        properties={k: v for k, v in properties.items() if v is not None},
    )
    item.common_metadata.created = dt.datetime.now(dt.UTC)
    item.common_metadata.description = (
        f"Class labels of {attrs.get('scene') or ls.path.name} by reattn-batch"
    )

    crs = CRS.from_wkt(ls.crs_wkt)
    epsg = crs.to_epsg()
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.apply(
        code=f"EPSG:{epsg}" if epsg else None,
        wkt2=None if epsg else crs.to_wkt(version="WKT2_2019"),
        shape=[ls.height, ls.width],
        transform=[t.a, t.b, t.c, t.d, t.e, t.f],
        bbox=list(attrs.get("spatial:bbox") or []) or None,
    )
    classes = _classes(ls)
    ClassificationExtension.ext(item, add_if_missing=True).apply(classes=classes)
    band = RasterBand.create(
        nodata=NODATA, data_type=DataType.UINT8, spatial_resolution=abs(t.a), sampling=Sampling.AREA
    )

    def raster_asset(key: str, href: Path, media_type: str, title: str) -> None:
        asset = pystac.Asset(
            href=str(Path(href).absolute()), media_type=media_type, roles=["data"], title=title
        )
        item.add_asset(key, asset)
        RasterExtension.ext(asset, add_if_missing=True).apply(bands=[band])
        ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=classes)

    raster_asset("labels", ls.path, ZARR_MEDIA_TYPE, "label store (Zarr v2; array 'labels')")
    if cog is not None:
        raster_asset(
            "cog", Path(cog), pystac.MediaType.COG, "class labels, Cloud-Optimised GeoTIFF"
        )
    if vector is not None:
        suffix = Path(vector).suffix.lower()
        item.add_asset(
            "polygons",
            pystac.Asset(
                href=str(Path(vector).absolute()),
                media_type=MEDIA_TYPES.get(suffix),
                roles=["data"],
                title="class polygons (class_index, class_name, area)",
            ),
        )
    if quicklook is not None:
        item.add_asset(
            "quicklook",
            pystac.Asset(
                href=str(Path(quicklook).absolute()),
                media_type=pystac.MediaType.PNG,
                roles=["overview"],
                title="quicklook with legend",
            ),
        )
    source_item = attrs.get(SOURCE_ITEM_ATTR)
    if isinstance(source_item, str) and source_item:
        item.add_link(pystac.Link("derived_from", source_item, media_type=pystac.MediaType.GEOJSON))
    return item


def write_item(
    store: LabelStore | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cog: str | os.PathLike | None = None,
    vector: str | os.PathLike | None = None,
    quicklook: str | os.PathLike | None = None,
) -> Path:
    """Write the store's Item to ``OUT_DIR/<id>.json`` (asset hrefs relative to it)."""
    from reattn_batch.store import label_store

    ls = label_store(store)
    item = build_item(ls, cog=cog, vector=vector, quicklook=quicklook)
    path = item_path(ls.path, out_dir).absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        item.set_self_href(str(path))
        item.make_asset_hrefs_relative()
        item.save_object(include_self_link=False, dest_href=str(path))
    except OSError as exc:
        raise InputError(f"`stac`: cannot write {path} ({exc.strerror or exc})") from None
    return path
