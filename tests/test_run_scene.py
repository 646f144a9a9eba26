"""`reattn-batch run`: exact stitching, georeferencing, nodata, workers (SPEC 3.1-3.4).

A tiny architecture (ViT-T-16-test, bilinear upsampler, random weights) keeps this
fast; exactness does not depend on the model's size.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from conftest import framed_rgb_byte, koeln_window_tif, labels_of
from distributed import Client, LocalCluster

from reattn_batch.cli import main
from reattn_batch.workers import model_cache

TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]
CLASSES = ["--classes", "building,road,water,tree"]


def run_cli(*args: object) -> None:
    main(["run", *(str(a) for a in args)])


@pytest.fixture(scope="module")
def koeln_crop(tmp_path_factory) -> str:
    return koeln_window_tif(tmp_path_factory.mktemp("scene"), 900, 700)


@pytest.mark.parametrize("gsd", [None, 0.8])
def test_labels_identical_for_any_block_size_and_worker_count(tmp_path, koeln_crop, gsd):
    extra = [] if gsd is None else ["--gsd", gsd]
    blocked, whole = tmp_path / "blocked.zarr", tmp_path / "whole.zarr"
    run_cli(
        koeln_crop, *CLASSES, *TINY, *extra, "--block-size", 512, "--workers", 2, "--out", blocked
    )
    run_cli(
        koeln_crop, *CLASSES, *TINY, *extra, "--block-size", 1024, "--workers", 1, "--out", whole
    )
    a, b = labels_of(blocked), labels_of(whole)
    assert a.shape == (700, 900)
    assert np.array_equal(a, b)
    assert len(np.unique(a)) > 1  # a real map, not a constant


def test_run_equals_segment_resize_none_on_the_native_grid(tmp_path, koeln_crop):
    store, pred = tmp_path / "run.zarr", tmp_path / "seg.png"
    run_cli(koeln_crop, *CLASSES, *TINY, "--block-size", 512, "--out", store)
    main(["segment", koeln_crop, *CLASSES, *TINY, "--resize", "none", "-o", str(pred)])
    assert np.array_equal(labels_of(store), cv2.imread(str(pred), cv2.IMREAD_UNCHANGED))


def test_gdal_xarray_and_rioxarray_read_the_georeferencing(tmp_path, koeln_crop):
    store = tmp_path / "geo.zarr"
    run_cli(koeln_crop, *CLASSES, *TINY, "--save-confidence", "--out", store)
    with rasterio.open(koeln_crop) as src, rasterio.open(f'ZARR:"{store}":/labels') as out:
        assert out.crs == src.crs and out.crs.to_epsg() == 25832
        assert out.transform.almost_equals(src.transform, precision=1e-9)
        assert (out.width, out.height) == (900, 700)
        assert np.array_equal(out.read(1), labels_of(store))
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    ds = xr.open_zarr(store, mask_and_scale=False)
    assert ds.labels.dims == ("y", "x") and ds.labels.dtype == np.uint8
    assert ds.rio.crs.to_epsg() == 25832
    attrs = zarr.open_group(str(store), mode="r").attrs.asdict()
    assert attrs["classes"]["names"] == ["background", "building", "road", "water", "tree"]
    assert attrs["random_weights"] is True and attrs["method"] == "reattnclip"
    conf = zarr.open_group(str(store), mode="r")["confidence"][:]
    assert conf.dtype == np.uint8 and conf.max() <= 254 and conf.min() > 254 / 5 - 1  # >= 1/C


def test_nodata_border_is_255_and_all_nodata_crops_are_skipped(tmp_path):
    """RGB.byte.tif (Landsat, nodata 0 border) placed in a wider nodata frame, so that
    whole crops hold nothing but nodata."""
    scene = framed_rgb_byte(tmp_path)
    store = tmp_path / "landsat.zarr"
    run_cli(scene, *CLASSES, *TINY, "--out", store)
    labels = labels_of(store)
    with rasterio.open(scene) as ds:
        valid = ds.dataset_mask() > 0
    assert np.array_equal(labels == 255, ~valid)
    attrs = zarr.open_group(str(store), mode="r").attrs.asdict()
    assert attrs["crops_run"] < attrs["crops_total"]  # the all-nodata corners never ran


def test_model_loaded_once_per_worker_in_a_multi_block_job(tmp_path, koeln_crop):
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        address = cluster.scheduler_address
        run_cli(koeln_crop, *CLASSES, *TINY, "--block-size", 512, "--scheduler", address,
                "--out", tmp_path / "s.zarr")  # fmt: skip
        loads = client.run(model_cache.load_count)
    assert sum(loads.values()) >= 1
    assert all(n <= 1 for n in loads.values()), loads


def test_zarr_input_works_like_its_geotiff(tmp_path, koeln_crop):
    import rioxarray

    source = tmp_path / "koeln_in.zarr"
    rioxarray.open_rasterio(koeln_crop).to_dataset(name="image").to_zarr(source)
    a, b = tmp_path / "from_tif.zarr", tmp_path / "from_zarr.zarr"
    run_cli(koeln_crop, *CLASSES, *TINY, "--out", a)
    run_cli(source, "--variable", "image", *CLASSES, *TINY, "--out", b)
    assert np.array_equal(labels_of(a), labels_of(b))
    with rasterio.open(f'ZARR:"{b}":/labels') as out, rasterio.open(koeln_crop) as src:
        assert out.crs == src.crs and out.transform.almost_equals(src.transform)
