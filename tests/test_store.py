"""The label store (SPEC 3.3): read back with the real readers (GDAL via rasterio, xarray,
rioxarray, zarr), written block by block from separate processes."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.crs import CRS

from reattn_batch.store import (
    StoreLayout,
    class_palette,
    create_store,
    open_labels,
    read_attrs,
    update_attrs,
    write_block,
)
from reattn_batch.store.create import rename_claiming, rename_noreplace
from reattn_batch.workers.errors import StoreError, UserError

CLASSES = ["background", "building", "low vegetation", "water", "road"]
H, W, CHUNK = 1000, 1300, 512

CASES = {
    "utm32": (25832, Affine(0.5, 0, 356000, 0, -0.5, 5645000)),
    "webmerc": (
        3857,
        Affine(0.2985821417389697, 0, 1113194.9079327357, 0, -0.2985821417389697, 6800125.4543973),
    ),
}


def pattern(row0: int, col0: int, h: int, w: int) -> np.ndarray:
    """Known label values (row//7 + col//11) % 5 in global pixel coordinates."""
    rows = np.arange(row0, row0 + h)[:, None]
    cols = np.arange(col0, col0 + w)[None, :]
    return ((rows // 7 + cols // 11) % 5).astype(np.uint8)


def gdal_open(path):
    return rasterio.open(f'ZARR:"{path}":/labels')


def user_attrs() -> dict:
    return {
        "method": "reattnclip",
        "hyperparameters": {"tau": np.float32(0.25), "window": (224, 112)},
        "synonyms": [["background"], ["building", "roof"], ["low vegetation"], ["water"], ["road"]],
        "weights": {"clip": "sha256:abc"},
        "software_version": "0.1.0",
        "run_fingerprint": "f" * 64,
    }


# Blocks written by other processes: two chunk-aligned blocks, one of them at the scene
# edge (a partial chunk); rows 512.., cols 0..511 stay unwritten.
BLOCKS = [(0, 0, 512, 1024), (512, 512, H - 512, W - 512)]


def _expected() -> np.ndarray:
    out = np.full((H, W), 255, np.uint8)
    for r0, c0, h, w in BLOCKS:
        out[r0 : r0 + h, c0 : c0 + w] = pattern(r0, c0, h, w)
    return out


@pytest.fixture(scope="module", params=sorted(CASES))
def written_store(request, tmp_path_factory):
    epsg, transform = CASES[request.param]
    crs = CRS.from_epsg(epsg)
    path = tmp_path_factory.mktemp(request.param) / "out.zarr"
    layout = StoreLayout(
        GeoBox((H, W), transform, crs.to_wkt()), chunk=CHUNK, with_confidence=False
    )
    create_store(path, layout, attrs=user_attrs(), overwrite=False, class_names=CLASSES)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        futures = [
            pool.submit(write_block, str(path), r0, c0, pattern(r0, c0, h, w), None)
            for r0, c0, h, w in BLOCKS
        ]
        for f in futures:
            f.result()
    return path, crs, transform


def test_gdal_reads_crs_transform_nodata_and_values(written_store):
    path, crs, transform = written_store
    with gdal_open(path) as ds:
        assert ds.crs == crs
        assert ds.crs.to_epsg() == crs.to_epsg()
        assert ds.transform.almost_equals(transform, precision=1e-9)
        for got, want in zip(tuple(ds.transform)[:6], tuple(transform)[:6], strict=True):
            assert got == pytest.approx(want, abs=1e-9, rel=0)
        assert (ds.height, ds.width, ds.count) == (H, W, 1)
        assert ds.dtypes == ("uint8",)
        assert ds.nodata == 255
        np.testing.assert_array_equal(ds.read(1), _expected())
        # a window read at a non-chunk offset agrees too
        window = rasterio.windows.Window(500, 300, 40, 400)
        np.testing.assert_array_equal(ds.read(1, window=window), _expected()[300:700, 500:540])
    assert (_expected()[512:, :512] == 255).all()


def test_xarray_and_rioxarray_read_georeferencing(written_store):
    import rioxarray  # noqa: F401  (registers .rio)

    path, crs, transform = written_store
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. missing consolidated metadata
        ds = xr.open_zarr(path)
    labels = ds["labels"]
    assert labels.dims == ("y", "x")
    assert labels.shape == (H, W)
    cols, rows = np.arange(W), np.arange(H)
    np.testing.assert_array_equal(ds["x"].values, transform.c + transform.a * (cols + 0.5))
    np.testing.assert_array_equal(ds["y"].values, transform.f + transform.e * (rows + 0.5))
    assert ds["x"].values[0] == transform.c + 0.5 * transform.a
    assert labels.rio.crs == crs
    assert labels.rio.transform() == transform
    assert ds.rio.crs == crs
    # default decoding masks the 255 fill as NaN; raw values without masking
    assert np.isnan(labels.values[600, 100])
    raw = xr.open_zarr(path, mask_and_scale=False)["labels"]
    assert raw.dtype == np.uint8
    assert raw.rio.nodata == 255
    np.testing.assert_array_equal(raw.values, _expected())


def test_attributes_round_trip(written_store):
    path, crs, transform = written_store
    attrs = read_attrs(path)
    expected = user_attrs()
    expected["hyperparameters"] = {"tau": 0.25, "window": [224, 112]}
    for key, value in expected.items():
        assert attrs[key] == value
    assert attrs["class_names"] == CLASSES
    assert attrs["proj:code"] == f"EPSG:{crs.to_epsg()}"
    assert CRS.from_wkt(attrs["proj:wkt2"]) == crs
    assert attrs["spatial:dimensions"] == ["y", "x"]
    assert attrs["spatial:transform"] == list(transform)[:6]
    assert attrs["spatial:shape"] == [H, W]
    xmin, ymin, xmax, ymax = attrs["spatial:bbox"]
    assert xmin == transform.c and ymax == transform.f
    assert xmax == pytest.approx(transform.c + W * transform.a)
    assert ymin == pytest.approx(transform.f + H * transform.e)
    names = {c["name"] for c in attrs["zarr_conventions"]}
    assert names == {"proj:", "spatial"}

    labels = open_labels(path)
    assert labels.dtype == np.uint8 and labels.shape == (H, W)
    assert labels.chunks == (CHUNK, CHUNK) and labels.fill_value == 255
    la = dict(labels.attrs)
    assert la["flag_values"] == [0, 1, 2, 3, 4]
    assert la["flag_meanings"] == "background building low_vegetation water road"
    assert la["grid_mapping"] == "spatial_ref"
    palette = class_palette(len(CLASSES))
    assert la["colormap"] == {
        **{str(c): [*palette[c], 255] for c in range(len(CLASSES))},
        "255": [0, 0, 0, 0],
    }
    # the same attributes through xarray (consolidated metadata) and GDAL
    ds = xr.open_zarr(path)
    assert ds.attrs["run_fingerprint"] == "f" * 64
    assert ds["labels"].attrs["flag_meanings"] == la["flag_meanings"]
    sr = ds["spatial_ref"].attrs
    assert CRS.from_wkt(sr["crs_wkt"]) == crs
    gt = [float(v) for v in sr["GeoTransform"].split()]
    assert gt == list(transform.to_gdal())
    with gdal_open(path) as gds:
        assert gds.tags()["flag_meanings"] == la["flag_meanings"]


def test_update_attrs_reaches_all_readers(written_store, tmp_path):
    path = written_store[0]
    update_attrs(path, blocks_done=np.int64(3), status="running")
    assert read_attrs(path)["blocks_done"] == 3
    assert xr.open_zarr(path).attrs["status"] == "running"  # consolidated copy refreshed
    assert read_attrs(path)["method"] == "reattnclip"


def test_palette_deterministic_and_distinct():
    a = class_palette(40)
    assert a == class_palette(40)
    assert len(set(a)) == 40
    r, g, b = a[0]
    assert r == g == b and r < 128  # background: dark grey
    assert all(0 <= v <= 255 for c in a for v in c)
    assert class_palette(3, background_index=None)[0] != a[0]


def test_no_crs_store_opens_everywhere(tmp_path):
    path = tmp_path / "pix.zarr"
    layout = StoreLayout(GeoBox((300, 200), Affine.identity(), None), chunk=128)
    create_store(path, layout, attrs={}, overwrite=False, class_names=["a", "b"])
    block = pattern(0, 128, 256, 72)
    write_block(path, 0, 128, block)

    expected = np.full((300, 200), 255, np.uint8)
    expected[:256, 128:] = block
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with gdal_open(path) as ds:
            assert ds.crs is None
            assert ds.transform.almost_equals(Affine.identity())
            np.testing.assert_array_equal(ds.read(1), expected)
    ds = xr.open_zarr(path, mask_and_scale=False)
    assert ds["labels"].dims == ("y", "x")
    assert "grid_mapping" not in ds["labels"].attrs
    np.testing.assert_array_equal(ds["x"].values, np.arange(200) + 0.5)
    np.testing.assert_array_equal(ds["labels"].values, expected)
    attrs = read_attrs(path)
    assert "crs_warning" in attrs and "proj:code" not in attrs
    assert attrs["spatial:transform"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _small(path, value: int, **kw):
    layout = StoreLayout(
        GeoBox((64, 64), Affine(1, 0, 0, 0, -1, 64), CRS.from_epsg(32632).to_wkt()), 32
    )
    create_store(path, layout, attrs={"run": value}, class_names=["a", "b"], **kw)
    write_block(path, 0, 0, np.full((64, 64), value, np.uint8))


def test_existing_store_needs_overwrite(tmp_path):
    path = tmp_path / "out.zarr"
    _small(path, 1, overwrite=False)
    with pytest.raises(StoreError, match="overwrite=True") as err:
        _small(path, 2, overwrite=False)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert "resume=True" in str(err.value)
    assert (open_labels(path)[:] == 1).all()
    assert read_attrs(path)["run"] == 1

    _small(path, 2, overwrite=True)
    assert (open_labels(path)[:] == 2).all()
    assert read_attrs(path)["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]  # no temp leftovers


def test_overwrite_recreates_with_new_shape_in_same_process(tmp_path):
    """The per-process array cache must notice that the store was replaced."""
    path = tmp_path / "out.zarr"
    _small(path, 1, overwrite=False)
    layout = StoreLayout(GeoBox((40, 50), Affine(2, 0, 10, 0, -2, 100), None), chunk=32)
    create_store(path, layout, attrs={}, overwrite=True, class_names=["a"])
    write_block(path, 32, 32, np.zeros((8, 18), np.uint8))
    labels = open_labels(path)
    assert labels.shape == (40, 50)
    assert (labels[32:, 32:] == 0).all() and (labels[:32] == 255).all()


def test_the_array_cache_is_bounded_and_still_writes_every_store(tmp_path):
    """A regional job opens thousands of stores in one process: the per-process cache of
    opened arrays keeps the most recent ones only, and an evicted store reopens."""
    from reattn_batch.store import arrays

    paths = [tmp_path / f"s{i}.zarr" for i in range(arrays._MAX_ARRAYS + 10)]
    for i, path in enumerate(paths):
        _small(path, i % 200, overwrite=False)
    assert len(arrays._ARRAYS) <= arrays._MAX_ARRAYS
    write_block(paths[0], 0, 0, np.full((64, 64), 7, np.uint8))  # evicted long ago
    for i, path in enumerate(paths):
        assert (open_labels(path)[:] == (7 if i == 0 else i % 200)).all()


def test_overwrite_refuses_to_delete_a_non_store(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="is a folder of other files"):
        _small(folder, 1, overwrite=True)
    assert (folder / "precious.txt").read_text() == "keep me"


def _digest(path) -> str:
    """sha256 over every file's relative path and bytes under ``path``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def test_a_path_that_appears_while_the_store_is_built_is_never_deleted(tmp_path):
    """Issue 19 item 4: without overwrite the store is only renamed into place. Another
    process's store created at the same path meanwhile (here: a real create_store, run
    just before ours is renamed) is left whole, and ours fails with one line."""
    path = tmp_path / "out.zarr"
    theirs: dict[str, str] = {}

    def another_run_creates_it(tmp) -> None:
        assert tmp.is_dir() and not path.exists()  # ours is built, not yet in place
        _small(path, 2, overwrite=False)
        theirs["digest"] = _digest(path)

    with pytest.raises(StoreError) as err:
        _small(path, 1, overwrite=False, _before_rename=another_run_creates_it)
    line = str(err.value)
    assert "\n" not in line and str(path) in line and "appeared" in line, line
    assert _digest(path) == theirs["digest"]  # not deleted, not touched
    assert read_attrs(path)["run"] == 2 and (open_labels(path)[:] == 2).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]  # ours removed


def test_a_folder_planted_while_the_store_is_built_is_never_replaced(tmp_path):
    """``os.rename`` onto an empty folder replaces it: the final rename must not."""
    path = tmp_path / "out.zarr"
    with pytest.raises(StoreError, match="appeared"):
        _small(path, 1, overwrite=False, _before_rename=lambda tmp: path.mkdir())
    assert path.is_dir() and not any(path.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_overwrite_moves_the_old_store_aside_and_puts_it_back_if_the_new_fails(tmp_path):
    """Issue 19 item 4: overwrite renames the old store aside, renames the new one in and
    only then deletes the old; when the new one cannot be renamed in (here: it is gone),
    the old store is back at its path, whole."""
    path = tmp_path / "out.zarr"
    _small(path, 1, overwrite=False)
    old = _digest(path)
    seen: dict[str, object] = {}

    def new_store_lost(tmp) -> None:
        aside = [p for p in tmp_path.iterdir() if p.name.startswith(".out.zarr.old-")]
        seen["path_free"] = not path.exists()
        seen["aside_is_old"] = len(aside) == 1 and _digest(aside[0]) == old
        shutil.rmtree(tmp)  # the rename of the new store in now fails

    with pytest.raises(StoreError) as err:
        _small(path, 2, overwrite=True, _before_rename=new_store_lost)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert seen == {"path_free": True, "aside_is_old": True}  # moved aside, not deleted
    assert _digest(path) == old and read_attrs(path)["run"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]  # no temp, no aside


@pytest.mark.parametrize("rename", [rename_noreplace, rename_claiming], ids=["renameat2", "claim"])
def test_rename_noreplace_never_replaces(tmp_path, rename):
    """Both ways (renameat2, and mkdir-as-claim where it is missing) refuse an existing
    empty folder, a file and a link at the target, and rename onto a free one."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    empty, afile, link = tmp_path / "empty", tmp_path / "file", tmp_path / "link"
    empty.mkdir()
    afile.write_text("keep")
    link.symlink_to(empty)
    for target in (empty, afile, link):
        with pytest.raises(OSError) as err:
            rename(src, target)
        assert err.value.errno == errno.EEXIST
    assert empty.is_dir() and not any(empty.iterdir()) and afile.read_text() == "keep"
    assert link.is_symlink() and (src / "a").is_dir()
    rename(src, tmp_path / "free")
    assert (tmp_path / "free" / "a").is_dir() and not src.exists()


def test_unwritable_parent_is_a_user_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    path = blocker / "out.zarr"
    with pytest.raises(UserError) as err:
        _small(path, 1, overwrite=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert blocker.read_text() == "x"


def test_confidence_only_when_requested(tmp_path):
    wkt = CRS.from_epsg(25832).to_wkt()
    plain, conf = tmp_path / "plain.zarr", tmp_path / "conf.zarr"
    create_store(
        plain,
        StoreLayout(GeoBox((64, 64), Affine(1, 0, 0, 0, -1, 0), wkt), 32),
        attrs={},
        class_names=["a"],
    )
    create_store(
        conf,
        StoreLayout(GeoBox((64, 64), Affine(1, 0, 0, 0, -1, 0), wkt), 32, with_confidence=True),
        attrs={},
        class_names=["a"],
    )
    assert set(zarr.open_group(str(plain), mode="r").array_keys()) == {
        "labels",
        "x",
        "y",
        "spatial_ref",
        "block_started",
        "block_done",
    }
    assert "confidence" not in xr.open_zarr(plain).data_vars

    labels = pattern(0, 0, 64, 64)
    confidence = (np.arange(64 * 64).reshape(64, 64) % 255).astype(np.uint8)
    write_block(conf, 0, 0, labels, confidence)
    cds = xr.open_zarr(conf, mask_and_scale=False)
    assert cds["confidence"].dims == ("y", "x")
    assert cds["confidence"].dtype == np.uint8
    np.testing.assert_array_equal(cds["confidence"].values, confidence)
    with rasterio.open(f'ZARR:"{conf}":/confidence') as ds:
        np.testing.assert_array_equal(ds.read(1), confidence)
        assert ds.crs == CRS.from_epsg(25832)

    with pytest.raises(ValueError, match="confidence"):
        write_block(plain, 0, 0, labels, confidence)
    with pytest.raises(ValueError, match="confidence"):
        write_block(conf, 0, 0, labels, None)


def test_write_block_rejects_misaligned_regions(tmp_path):
    path = tmp_path / "out.zarr"
    _small(path, 1, overwrite=False)
    with pytest.raises(ValueError, match="chunk grid"):
        write_block(path, 16, 0, np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="chunk boundary"):
        write_block(path, 0, 0, np.zeros((20, 32), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        write_block(path, 32, 32, np.zeros((64, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_block(path, 0, 0, np.zeros((32, 32), np.int64))
    assert (open_labels(path)[:] == 1).all()


def _south_up_custom_crs(directory) -> str:
    """A small south-up GeoTIFF in a CRS with no EPSG code (a custom transverse Mercator),
    so the WKT is the file's own text, not a registry's."""
    path = directory / "south_up.tif"
    crs = CRS.from_proj4("+proj=tmerc +lat_0=0 +lon_0=9.5 +k=0.9996 +x_0=500000 +ellps=GRS80")
    profile = {
        "driver": "GTiff", "width": 300, "height": 200, "count": 3, "dtype": "uint8",
        "crs": crs, "transform": Affine(0.3, 0, 420000.25, 0, 0.3, 5600000.75),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as out:
        out.write(np.zeros((3, 200, 300), np.uint8))
    return str(path)


@pytest.mark.parametrize("source", ["RGB.byte.tif", "cogeo.tif", "oem_koeln_50.tif", "south-up"])
def test_store_georeferencing_equals_rasterio_of_the_source(source, tmp_path):
    """open_scene's GeoBox -> StoreLayout -> store: every georeferencing attribute equals
    what rasterio reads from the source file itself (GDAL's ``_CRS`` WKT byte for byte; the
    CF grid mapping as rioxarray writes it for rasterio's CRS and transform)."""
    import pickle

    import rioxarray  # noqa: F401  (registers .rio)
    from conftest import shared_file

    from reattn_batch.scene import open_scene
    from reattn_batch.store import open_store

    path = (
        _south_up_custom_crs(tmp_path) if source == "south-up" else shared_file(f"rasters/{source}")
    )
    with rasterio.open(path) as ds:
        wkt, transform, shape, bounds = ds.crs.to_wkt(), ds.transform, ds.shape, ds.bounds
        crs = ds.crs
    scene = open_scene(str(path))
    assert pickle.loads(pickle.dumps(scene)).crs_wkt == wkt  # what the workers get
    out = tmp_path / "out.zarr"
    create_store(out, StoreLayout(scene.geobox), attrs={}, class_names=["a", "b"])

    group, labels = read_attrs(out), zarr.open_array(str(out / "labels"), mode="r").attrs
    assert labels["_CRS"] == {"wkt": wkt}
    for attrs in (group, labels):
        assert attrs["spatial:transform"] == list(transform)[:6]
        assert attrs["spatial:shape"] == list(shape)
        assert attrs["spatial:bbox"] == [  # rasterio's bounds, south-up ordered as min/max
            min(bounds.left, bounds.right), min(bounds.bottom, bounds.top),
            max(bounds.left, bounds.right), max(bounds.bottom, bounds.top),
        ]  # fmt: skip
        assert attrs["proj:wkt2"] == crs.to_wkt(version="WKT2_2019")
        assert attrs.get("proj:code") == (f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else None)
    probe = xr.DataArray(np.zeros((1, 1), np.uint8), dims=("y", "x"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyproj: no CF mapping for some CRSs
        probe = probe.rio.write_crs(crs).rio.write_transform(transform)
    grid_mapping = zarr.open_array(str(out / "spatial_ref"), mode="r").attrs
    assert dict(grid_mapping) == {"_ARRAY_DIMENSIONS": [], **probe["spatial_ref"].attrs}
    rows, cols = np.arange(shape[0]), np.arange(shape[1])
    x, _ = rasterio.transform.xy(transform, np.zeros_like(cols), cols, offset="center")
    _, y = rasterio.transform.xy(transform, rows, np.zeros_like(rows), offset="center")
    np.testing.assert_array_equal(zarr.open_array(str(out / "x"), mode="r")[:], x)
    np.testing.assert_array_equal(zarr.open_array(str(out / "y"), mode="r")[:], y)
    with gdal_open(out) as gds:
        assert (gds.crs, gds.shape) == (crs, shape)
        assert gds.transform.almost_equals(transform, precision=1e-9)
    # the store read back for the outputs has the scene's grid
    ls = open_store(out)
    assert ls.geobox == scene.geobox
    assert (ls.transform, ls.height, ls.width) == (transform, *shape)


def test_invalid_wkt_is_one_user_error():
    from reattn_batch.grid.raster import raster_geobox

    with pytest.raises(UserError, match="not valid WKT"):
        raster_geobox((10, 10), Affine.identity(), 'PROJCS["broken",')
