"""`run` on bad input (one line, exit 2, nothing written lost) and on awkward input
that must work. README's "Bad input" table points here."""

from __future__ import annotations

import re

import numpy as np
import pytest
import rasterio
import zarr
from conftest import shared_file
from distributed import LocalCluster
from rasterio.transform import from_origin

from reattn_batch.cli import main
from reattn_batch.store import read_attrs

TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]
CLASSES = ["--classes", "building,road"]
TRANSFORM = from_origin(356000.0, 5645000.0, 0.5, 0.5)


def write_tif(path, data: np.ndarray, crs="EPSG:25832", **extra) -> str:
    """(bands, h, w) array -> a GeoTIFF."""
    profile = {
        "driver": "GTiff", "height": data.shape[1], "width": data.shape[2], "count": data.shape[0],
        "dtype": data.dtype, "transform": TRANSFORM, **extra,
    }  # fmt: skip
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return str(path)


def run_fails(capsys, *args) -> str:
    """Run `reattn-batch run ...`; assert exit 2 with exactly one line; return it."""
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *(str(a) for a in args)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reattn-batch: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    return write_tif(
        tmp_path_factory.mktemp("in") / "rgb.tif", rng.integers(0, 255, (3, 300, 260), np.uint8)
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["missing.tif", *CLASSES], "no such file"),
        (["RGB", "--classes", ""], "class list is empty"),
        (["RGB", "--classes", "road,Road"], "listed twice"),
        (["RGB", "--classes", "road/street,street"], "listed twice"),
        (["RGB", "--classes", ",".join(f"c{i}" for i in range(255))], "uint8"),
        (["RGB", *CLASSES, "--method", "segformer"], "--method"),
        (["RGB", *CLASSES, "--set", "alhpa=0.1"], "'alhpa'"),
        (["RGB", *CLASSES, "--bands", "1,2,9"], "9"),
        (["RGB", *CLASSES, "--block-size", "1000"], "--block-size"),
        (
            ["RGB", *CLASSES, "--clip-weights", "/nonexistent/ViT-B-16.pt"],
            "/nonexistent/ViT-B-16.pt",
        ),
        (["RGB", *CLASSES, "--scheduler", "tcp://127.0.0.1:1"], "scheduler"),
    ],
)
def test_bad_input_one_line(capsys, tmp_path, rgb, args, needle):
    args = [rgb if a == "RGB" else a for a in args]
    if "--clip-weights" not in args:
        args += TINY
    line = run_fails(capsys, *args, "--out", tmp_path / "o.zarr")
    assert needle in line


def test_not_a_raster_and_corrupt_weights(capsys, tmp_path, rgb):
    fake = tmp_path / "scene.tif"
    fake.write_text("this is not a GeoTIFF")
    assert str(fake) in run_fails(capsys, fake, *CLASSES, *TINY, "--out", tmp_path / "o.zarr")
    weights = tmp_path / "ViT-B-16.pt"
    weights.write_bytes(b"\x00garbage" * 100)
    tiny = ["--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]
    out = tmp_path / "o.zarr"
    line = run_fails(capsys, rgb, *CLASSES, "--clip-weights", weights, *tiny, "--out", out)
    assert str(weights) in line
    assert not (tmp_path / "o.zarr").exists()


def test_more_than_four_bands_needs_bands(capsys, tmp_path):
    five = write_tif(tmp_path / "five.tif", np.zeros((5, 64, 64), np.uint8))
    assert "--bands" in run_fails(capsys, five, *CLASSES, *TINY, "--out", tmp_path / "o.zarr")


def test_unwritable_output_location(capsys, tmp_path, rgb):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert "writable" in run_fails(capsys, rgb, *CLASSES, *TINY, "--out", blocker / "o.zarr")


# ------------------------------------------------------------------ awkward input that works


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def run_ok(scheduler: str, scene: str, out) -> np.ndarray:
    main(["run", scene, *CLASSES, *TINY, "--scheduler", scheduler, "--out", str(out)])
    assert read_attrs(out)["complete"] is True
    return zarr.open_group(str(out), mode="r")["labels"][:]


def test_scene_smaller_than_one_crop(scheduler, tmp_path):
    rng = np.random.default_rng(1)
    scene = write_tif(tmp_path / "small.tif", rng.integers(0, 255, (3, 100, 150), np.uint8))
    labels = run_ok(scheduler, scene, tmp_path / "o.zarr")
    assert labels.shape == (100, 150) and labels.max() <= 2


def test_all_nodata_scene_is_all_255(scheduler, tmp_path):
    scene = write_tif(tmp_path / "empty.tif", np.zeros((3, 300, 300), np.uint8), nodata=0)
    labels = run_ok(scheduler, scene, tmp_path / "o.zarr")
    assert (labels == 255).all()
    assert read_attrs(tmp_path / "o.zarr")["crops_run"] == 0


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_single_band_scenes(scheduler, tmp_path, dtype):
    ramp = (np.add.outer(np.arange(240), np.arange(260)) * (3 if dtype == "uint8" else 40)) % 4000
    data = ramp.astype(dtype)[None] if dtype == "uint16" else (ramp % 256).astype(dtype)[None]
    scene = write_tif(tmp_path / f"grey_{dtype}.tif", data)
    labels = run_ok(scheduler, scene, tmp_path / "o.zarr")
    assert labels.shape == (240, 260) and labels.max() <= 2
    stretch = read_attrs(tmp_path / "o.zarr")["stretch"]
    assert (stretch is not None) == (dtype == "uint16")  # one scene-wide stretch, uint16 only


def test_rgba_alpha_is_the_mask(scheduler, tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 255, (4, 260, 300), np.uint8)
    data[3] = 255
    data[3, :, :100] = 0  # transparent left third
    scene = write_tif(tmp_path / "rgba.tif", data, photometric="RGB", extra_samples=None)
    with rasterio.open(scene, "r+") as ds:
        ds.colorinterp = [
            rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
            rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha,
        ]  # fmt: skip
    labels = run_ok(scheduler, scene, tmp_path / "o.zarr")
    assert (labels[:, :100] == 255).all() and (labels[:, 100:] != 255).all()


def test_scene_without_crs_uses_pixel_coordinates(scheduler, tmp_path, caplog):
    rng = np.random.default_rng(3)
    scene = write_tif(
        tmp_path / "nocrs.tif", rng.integers(0, 255, (3, 200, 220), np.uint8), crs=None
    )
    labels = run_ok(scheduler, scene, tmp_path / "o.zarr")
    assert labels.shape == (200, 220)
    assert "crs_warning" in read_attrs(tmp_path / "o.zarr")
    assert any("CRS" in r.getMessage() for r in caplog.records)


def test_corrupt_tiles_fail_naming_the_window_and_leave_a_resumable_store(
    scheduler, capsys, tmp_path
):
    koeln = shared_file("rasters/oem_koeln_50.tif")
    scene = tmp_path / "corrupt.tif"
    with rasterio.open(koeln) as src:
        write_tif(scene, src.read(), tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(
        scene
    ) as ds:  # the tile at block row 3, col 3 (rows 768:1000, cols 768:1000)
        offset = int(ds.get_tag_item("BLOCK_OFFSET_3_3", "TIFF", bidx=1))
    with open(scene, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 2000)
    out = tmp_path / "o.zarr"
    blocks = ["--block-size", "512", "--scheduler", scheduler]
    line = run_fails(capsys, scene, *CLASSES, *TINY, *blocks, "--out", out)
    found = re.search(r"rows (\d+):(\d+), cols (\d+):(\d+)", line)
    assert found and "--resume" in line
    r0, r1, c0, c1 = map(int, found.groups())
    assert r0 < 1000 and r1 > 768 and c0 < 1000 and c1 > 768  # the window holds the bad tile
    assert out.exists() and read_attrs(out).get("complete") is not True
