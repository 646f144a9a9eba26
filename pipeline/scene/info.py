"""What a task needs to read a scene (:class:`SceneInfo`), and the error of a failed read."""

from __future__ import annotations

from dataclasses import dataclass

from odc.geo.geobox import GeoBox

from reattn_batch.grid.raster import OnGeobox
from reattn_batch.scene.uri import error_text, is_remote
from reattn_batch.workers.errors import UserError


@dataclass
class SceneInfo(OnGeobox):
    """What a task needs to read a scene: cheap, picklable, no open handles.

    geobox: the native grid (shape (rows, cols), transform, CRS; grid/raster.py), which
    ``height``, ``width``, ``transform`` and ``crs_wkt`` read.
    """

    geobox: GeoBox
    gsd: float
    bands: tuple[int, ...]
    mask_band: int | None
    nodata: float | None
    dtype: str
    stretch: tuple[float, float] | None
    identity: str
    #: What the reader opens: an absolute local path or a GDAL /vsi path (not the user's text).
    path: str
    variable: str | None = None
    #: The source's internal tile (rows, cols): a read decodes whole tiles (a scene stored
    #: as one strip of every row decodes the whole strip); None: unknown.
    tile: tuple[int, int] | None = None
    #: Bands of a source tile (pixel-interleaved files decode every band of a tile).
    tile_bands: int = 1
    #: GDAL reports a per-dataset mask band (internal or .msk mask) that is not alpha.
    internal_mask: bool = False
    #: The STAC Item the scene came from (its href) and its datetime, when it came from one.
    stac_item: str | None = None
    scene_datetime: str | None = None
    #: The one GDAL driver the scene may be opened with (an asset a remote STAC Item
    #: names: ``scene/stac_item.py`` ASSET_DRIVER); None: any driver.
    driver: str | None = None

    @property
    def is_zarr(self) -> bool:
        return self.variable is not None


class WindowReadError(UserError):
    """Reading a window failed (corrupt tiles, a failed remote request).

    ``window`` is ``((row0, row1), (col0, col1))`` in native pixels. Remote reads
    (``remote`` is True) are worth retrying; otherwise the job fails with this message.
    """

    def __init__(
        self,
        path: str,
        window: tuple[tuple[int, int], tuple[int, int]],
        cause: BaseException | str,
    ) -> None:
        (r0, r1), (c0, c1) = window
        self.path = path
        self.window = ((int(r0), int(r1)), (int(c0), int(c1)))
        detail = error_text(cause) if isinstance(cause, BaseException) else str(cause)
        #: The failure as text (GDAL's exception objects do not survive pickling).
        self.cause = detail
        hint = (
            "the server failed or stalled: check it and retry"
            if is_remote(path)
            else "the file may be corrupt: check it (gdalinfo -checksum)"
        )
        window_text = f"rows {r0}:{r1}, cols {c0}:{c1}"
        super().__init__(f"{path}: could not read {window_text} ({detail}); {hint}")

    @property
    def remote(self) -> bool:
        return is_remote(self.path)

    def __reduce__(self):
        return (type(self), (self.path, self.window, self.cause))
