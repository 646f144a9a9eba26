"""GeoTIFF/COG (anything GDAL opens; an asset a remote STAC Item names: GeoTIFF/COG only)
through rasterio: metadata and windowed reads."""

from __future__ import annotations

import warnings

import numpy as np

from reattn_batch.grid.raster import raster_geobox
from reattn_batch.scene.handles import cached, handle_key
from reattn_batch.scene.identity import local_raster_identity, remote_identity
from reattn_batch.scene.info import SceneInfo
from reattn_batch.scene.policy import choose_bands, pixel_size, unique_bands, valid_mask
from reattn_batch.scene.uri import error_text, gdal_env, is_remote
from reattn_batch.workers.errors import InputError

#: What GDAL says of a file that is not in the format of the driver it was asked to use.
NOT_THIS_FORMAT = "not recognized as being in a supported file format"


def open_dataset(
    uri: str, path: str, bands: tuple[int, ...] | None, driver: str | None = None
) -> SceneInfo:
    """The scene's metadata; ``driver``: the one GDAL driver it may be opened with (None:
    any), kept in the SceneInfo for every later open."""
    import rasterio
    from rasterio.enums import MaskFlags
    from rasterio.errors import RasterioError

    try:
        with gdal_env(path), warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path, driver=driver)
    except RasterioError as exc:
        text = error_text(exc)
        if driver is not None and NOT_THIS_FORMAT in text:
            raise InputError(
                f"{uri}: not opened as a GeoTIFF/COG ({text}); an asset a remote STAC "
                f"document names is read only with GDAL's {driver} driver, never as a VRT "
                "or another format that names further files"
            ) from None
        if is_remote(path):
            raise InputError(
                f"{uri}: could not open it ({text}); check the URL and, for s3, credentials"
            ) from None
        raise InputError(
            f"{uri}: not a raster GDAL can read ({text}); pass a GeoTIFF/COG or a .zarr store"
        ) from None
    with ds:
        count = ds.count
        if count < 1:
            hint = (
                f" (it has subdatasets: {', '.join(ds.subdatasets[:5])})" if ds.subdatasets else ""
            )
            raise InputError(
                f"{uri}: the scene has no bands{hint}; pass a raster with 1, 3 or 4 bands"
            )
        interp = [ci.name for ci in ds.colorinterp]
        chosen, mask_band = choose_bands(uri, count, bands, interp)
        dtypes = {ds.dtypes[b - 1] for b in chosen}
        if len(dtypes) != 1:
            raise InputError(f"{uri}: bands {chosen} have different types {sorted(dtypes)}")
        dtype = dtypes.pop()
        if np.dtype(dtype).kind not in "uif":
            raise InputError(f"{uri}: {dtype} pixels are not supported; pass integer or float data")
        nodata = ds.nodatavals[chosen[0] - 1]
        flags = ds.mask_flag_enums[chosen[0] - 1]
        internal = (
            mask_band is None
            and MaskFlags.per_dataset in flags
            and MaskFlags.alpha not in flags
            and MaskFlags.nodata not in flags
        )
        transform = ds.transform
        if transform.is_identity and (ds.gcps[0] or ds.rpcs):
            kind = "ground control points (GCPs)" if ds.gcps[0] else "RPCs"
            raise InputError(
                f"{uri}: georeferenced by {kind} only, which reattn-batch does not warp; "
                "warp it to a map grid first, e.g. `gdalwarp -t_srs EPSG:XXXX "
                f"{'-rpc ' if not ds.gcps[0] else ''}in.tif out.tif`, and map out.tif"
            )
        crs_wkt = ds.crs.to_wkt() if ds.crs else None
        if is_remote(path):
            meta = repr(
                (ds.width, ds.height, ds.count, ds.dtypes, tuple(transform), crs_wkt,
                 ds.block_shapes, ds.overviews(1), ds.nodatavals, ds.compression)
            )  # fmt: skip
            with gdal_env(path):
                identity = remote_identity(path, meta)
        else:  # content sample of the file, its sidecars and a VRT's sources
            identity = local_raster_identity(path, ds.files)
        return SceneInfo(
            geobox=raster_geobox((ds.height, ds.width), transform, crs_wkt),
            gsd=pixel_size(uri, transform),
            bands=chosen,
            mask_band=mask_band,
            nodata=None if nodata is None else float(nodata),
            dtype=str(dtype),
            stretch=None,
            identity=identity,
            path=path,
            variable=None,
            internal_mask=internal,
            tile=tuple(int(v) for v in ds.block_shapes[0]),
            tile_bands=count if ds.interleaving and ds.interleaving.name == "pixel" else 1,
            driver=driver,
        )


def handle(scene: SceneInfo):
    import rasterio

    def opener():
        with gdal_env(scene.path), warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(scene.path, driver=scene.driver)

    return cached(handle_key(scene), opener)


def read(scene: SceneInfo, r0: int, r1: int, c0: int, c1: int, out_shape=None):
    """(values (k, h, w), valid (h, w)) of the distinct bands, window or decimated read."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    ds = handle(scene)
    unique, _ = unique_bands(scene)
    indexes = unique + ([scene.mask_band] if scene.mask_band else [])
    window = Window(c0, r0, c1 - c0, r1 - r0)
    shape = None if out_shape is None else (len(indexes), *out_shape)
    with gdal_env(scene.path):
        values = ds.read(
            indexes=indexes, window=window, out_shape=shape, resampling=Resampling.nearest
        )
        mask = None
        if scene.mask_band:
            values, mask = values[:-1], values[-1]
        elif scene.internal_mask:
            mshape = None if out_shape is None else tuple(out_shape)
            mask = ds.read_masks(
                unique[0], window=window, out_shape=mshape, resampling=Resampling.nearest
            )
    return values, valid_mask(scene, values, mask)
