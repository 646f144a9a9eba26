"""`export --vector`: class polygons merged across blocks (SPEC 3.3, issue 12).

The oracle is GDAL's polygonization of the WHOLE raster at once
(``rasterio.features.shapes``), computed here independently of the block-wise code; areas
are checked against pixel counts; files are opened by GDAL (pyogrio) and pyarrow.
Synthetic stores (built with the store module, 512 px blocks) have label patterns planted
across block edges and corners; one test maps the shared Koeln tile with the real `run`.
"""

from __future__ import annotations

import json

import geopandas
import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.geometry
from affine import Affine
from conftest import koeln_window_tif, labels_of
from distributed import Client, LocalCluster
from odc.geo.geobox import GeoBox
from rasterio.crs import CRS

from reattn_batch.cli import main
from reattn_batch.outputs import vector
from reattn_batch.store import StoreLayout, create_store, open_store, write_block

CLASSES = ["background", "building", "road", "water"]
H, W = 1300, 1100  # 3 x 3 blocks of 512, the last ones partial
BLOCK = 512
TRANSFORM = Affine(0.5, 0, 356000, 0, -0.5, 5645000)  # 0.25 m^2 pixels
PIXEL_AREA = 0.25
CRS_25832 = CRS.from_epsg(25832)


def planted_labels(nodata: bool = True) -> np.ndarray:
    """Regions of every size crossing block edges and corners, speckle, a ring around the
    corner (512, 512), a U whose arms meet only in the next block, diagonal contacts."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 4, (H // 37 + 1, W // 41 + 1)).astype(np.uint8)
    lab = np.repeat(np.repeat(coarse, 37, 0), 41, 1)[:H, :W].copy()
    speckle = rng.random((H, W)) < 0.02
    lab[speckle] = rng.integers(0, 4, int(speckle.sum()))
    lab[100:900, 505:520] = 2  # a road along and across the seam x = 512
    lab[450:580, 450:580] = 3  # a water ring around the block corner (512, 512)
    lab[480:550, 480:550] = 1  # with a building inside
    lab[700:800, 980:1030] = 0  # a U of class 1: arms in block column 1 ...
    lab[700:790, 1000:1010] = 1
    lab[700:790, 1020:1030] = 1
    lab[790:800, 1000:1030] = 1  # ... joined in the same block; and one across x = 1024:
    lab[1100:1200, 1000:1100] = 0
    lab[1100:1190, 1010:1020] = 3
    lab[1100:1190, 1030:1040] = 3
    lab[1190:1200, 1010:1040] = 3
    lab[1018:1030, 296:308] = 0  # two pixels meeting only at a corner, across y = 1024
    lab[1023, 301] = 1
    lab[1024, 302] = 1
    if nodata:
        lab[560:590, :] = 255  # a nodata strip across every block column
    return lab


def make_store(path, labels: np.ndarray, block: int | None = BLOCK, crs=CRS_25832):
    """A label store of ``labels`` in 512-px chunks; ``block`` None: no recorded block size."""
    h, w = labels.shape
    layout = StoreLayout(GeoBox((h, w), TRANSFORM, crs.to_wkt() if crs else None), chunk=512)
    attrs = {
        "software_version": "0.1.0",
        "run_fingerprint": "feedfacecafebeef",
        "classes": {"names": CLASSES, "background_index": 0},
    }
    if block is not None:
        attrs["block_size"] = block
    create_store(path, layout, attrs=attrs, class_names=CLASSES, background_index=0)
    for r in range(0, h, 512):
        for c in range(0, w, 512):
            write_block(path, r, c, np.ascontiguousarray(labels[r : r + 512, c : c + 512]))
    return path


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def labels():
    return planted_labels()


@pytest.fixture(scope="module")
def store(tmp_path_factory, labels):
    return make_store(tmp_path_factory.mktemp("vec") / "planted.labels.zarr", labels)


def export(client, store, out, **options):
    request = vector.plan_vector(store, out, **options)
    return vector.export_vector(request, client)


def whole_raster(labels, classes=(1, 2, 3), connectivity=4, transform=TRANSFORM):
    """(class, polygon) of the whole raster polygonized at once by GDAL."""
    return [
        (int(v), shapely.geometry.shape(g))
        for g, v in rasterio.features.shapes(
            labels,
            mask=np.isin(labels, classes),
            connectivity=connectivity,
            transform=transform,
        )
    ]


def read(path):
    df = pyogrio.read_dataframe(path)
    return df["class_index"].to_numpy(), np.asarray(df.geometry.values), df


# ----------------------------------------------------------------------------- exactness


@pytest.fixture(scope="module")
def gpkg(client, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "planted.gpkg"
    summary = export(client, store, out)
    return out, summary


def test_polygons_equal_a_whole_raster_polygonization(gpkg, labels):
    out, summary = gpkg
    classes, geoms, _ = read(out)
    expected = whole_raster(labels)
    assert summary.blocks == 9 and summary.merged > 20  # regions really crossed blocks
    assert len(geoms) == len(expected) == summary.features
    mine = sorted((int(c), shapely.normalize(g).wkb) for c, g in zip(classes, geoms, strict=True))
    oracle = sorted((c, shapely.normalize(g).wkb) for c, g in expected)
    assert mine == oracle  # same regions, same vertices (up to ring start and order)
    assert shapely.is_valid(geoms).all()
    assert set(shapely.get_type_id(geoms).tolist()) == {int(shapely.GeometryType.POLYGON)}


def test_area_is_pixel_count_times_pixel_area(gpkg, labels):
    classes, geoms, df = read(gpkg[0])
    counts = np.bincount(labels.ravel(), minlength=256)
    assert 0 not in classes and 255 not in classes  # background and nodata left out
    for c in (1, 2, 3):
        mask = classes == c
        assert df["area"].to_numpy()[mask].sum() == pytest.approx(counts[c] * PIXEL_AREA, rel=1e-12)
        assert shapely.area(geoms[mask]).sum() == pytest.approx(counts[c] * PIXEL_AREA, rel=1e-9)
    assert (df["class_name"].to_numpy() == np.asarray(CLASSES, dtype=object)[classes]).all()


def test_no_edge_runs_along_a_block_boundary_between_same_class_pixels(gpkg, labels):
    _, geoms, _ = read(gpkg[0])
    inverse = ~TRANSFORM
    along = 0
    for geom in geoms:
        for ring in [geom.exterior, *geom.interiors]:
            cols, rows = inverse @ np.asarray(ring.coords).T
            cols, rows = np.rint(cols).astype(int), np.rint(rows).astype(int)
            for (c0, r0), (c1, r1) in zip(
                zip(cols[:-1], rows[:-1], strict=True),
                zip(cols[1:], rows[1:], strict=True),
                strict=True,
            ):
                if c0 == c1 and c0 % BLOCK == 0 and 0 < c0 < W:  # on a vertical block edge
                    r = np.arange(min(r0, r1), max(r0, r1))
                    assert (labels[r, c0 - 1] != labels[r, c0]).all(), (c0, r0, r1)
                    along += len(r)
                if r0 == r1 and r0 % BLOCK == 0 and 0 < r0 < H:  # on a horizontal one
                    c = np.arange(min(c0, c1), max(c0, c1))
                    assert (labels[r0 - 1, c] != labels[r0, c]).all(), (r0, c0, c1)
                    along += len(c)
    assert along > 0  # class changes on block edges exist, and only those are edges


def test_eight_connectivity_equals_the_whole_raster_polygonization(client, store, labels, tmp_path):
    out = tmp_path / "planted8.fgb"
    summary = export(client, store, out, connectivity=8)
    classes, geoms, _ = read(out)
    expected = whole_raster(labels, connectivity=8)
    assert len(geoms) == len(expected) == summary.features
    assert len(expected) < len(whole_raster(labels))  # diagonal contacts joined regions
    assert shapely.is_valid(geoms).all()
    assert set(shapely.get_type_id(geoms).tolist()) == {int(shapely.GeometryType.MULTIPOLYGON)}

    def key(c, g):
        return (c, *np.round(g.bounds, 6), round(g.area, 6))

    mine = {key(int(c), g): g for c, g in zip(classes, geoms, strict=True)}
    assert len(mine) == len(geoms)
    for c, g in expected:  # GDAL writes self-touching rings; make_valid gives the point set
        assert mine[key(c, g)].equals(shapely.make_valid(g))


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb", ".parquet"])
def test_each_format_reads_back_with_crs_and_metadata(client, store, gpkg, tmp_path, suffix):
    out = tmp_path / f"planted{suffix}"
    export(client, store, out)
    reference = sorted(shapely.normalize(read(gpkg[0])[1]).tolist(), key=lambda g: g.wkb)
    if suffix == ".parquet":
        # pyogrio's GDAL wheel has no Parquet driver: read the GeoParquet metadata with
        # pyarrow, and the file with geopandas (which applies that metadata).
        assert "Parquet" not in pyogrio.list_drivers() or pyogrio.read_info(out)["crs"]
        meta = pq.read_schema(out).metadata
        geo = json.loads(meta[b"geo"])
        assert geo["primary_column"] == "geometry"
        assert geo["columns"]["geometry"]["encoding"] == "WKB"
        assert geo["columns"]["geometry"]["geometry_types"] == ["Polygon"]
        df = geopandas.read_parquet(out)
        assert CRS.from_user_input(df.crs) == CRS_25832
        extra = json.loads(meta[b"reattn_batch"])
    else:
        info = pyogrio.read_info(out)
        assert info["crs"] == "EPSG:25832"
        assert info["geometry_type"] == "Polygon"
        assert list(info["fields"]) == ["class_index", "class_name", "area"]
        extra = info["layer_metadata"]
        df = pyogrio.read_dataframe(out)
    assert extra["area_units"] == "metre^2"
    assert json.loads(extra["classes"]) == {"1": "building", "2": "road", "3": "water"}
    geoms = sorted(shapely.normalize(np.asarray(df.geometry.values)).tolist(), key=lambda g: g.wkb)
    assert len(geoms) == len(reference)
    assert all(a.equals_exact(b, 0) for a, b in zip(geoms, reference, strict=True))


def test_classes_and_min_area(client, store, labels, tmp_path):
    out = tmp_path / "water.gpkg"
    export(client, store, out, classes="water", min_area=50.0)
    classes, geoms, df = read(out)
    expected = [g for c, g in whole_raster(labels, classes=(3,)) if g.area >= 50.0]
    assert set(classes.tolist()) == {3}
    assert len(geoms) == len(expected) and (df["area"] >= 50.0).all()
    assert sorted(shapely.normalize(geoms).tolist(), key=lambda g: g.wkb) == sorted(
        shapely.normalize(np.asarray(expected)).tolist(), key=lambda g: g.wkb
    )


def test_simplified_neighbours_still_meet(client, tmp_path):
    labels = planted_labels(nodata=False)
    store = make_store(tmp_path / "full.labels.zarr", labels)
    out = tmp_path / "simple.gpkg"
    export(client, store, out, classes=",".join(CLASSES), simplify=2.0)
    _, geoms, df = read(out)
    exact = whole_raster(labels, classes=(0, 1, 2, 3))
    assert len(geoms) <= len(exact)
    assert shapely.is_valid(geoms).all()
    total = H * W * PIXEL_AREA
    union = shapely.union_all(geoms)
    # no overlaps: the parts add up to their union; no gaps: the union is the scene
    assert shapely.area(geoms).sum() == pytest.approx(union.area, rel=1e-9)
    assert union.area == pytest.approx(total, rel=1e-9)
    assert union.geom_type == "Polygon" and not list(union.interiors)
    vertices = shapely.get_num_coordinates(geoms).sum()
    assert vertices < 0.8 * sum(shapely.get_num_coordinates(g) for _, g in exact)
    assert df["area"].sum() == pytest.approx(total, rel=1e-12)  # areas stay the pixel areas


def test_an_empty_selection_writes_an_empty_layer(client, tmp_path):
    store = make_store(tmp_path / "empty.labels.zarr", np.zeros((600, 700), np.uint8))
    out = tmp_path / "none.fgb"
    assert export(client, store, out).features == 0
    df = pyogrio.read_dataframe(out)
    assert len(df) == 0 and pyogrio.read_info(out)["crs"] == "EPSG:25832"


def test_a_store_without_a_recorded_block_size_uses_the_default_block(client, labels, tmp_path):
    store = make_store(tmp_path / "unrecorded.labels.zarr", labels, block=None)
    assert "block_size" not in open_store(store).attrs
    request = vector.plan_vector(store, tmp_path / "default.gpkg")
    assert request.block_size == 2048  # DEFAULT_BLOCK, a multiple of the 512-px chunk
    summary = vector.export_vector(request, client)
    assert summary.blocks == 1  # 1300 x 1100 fits in one 2048-px block
    classes, geoms, _ = read(request.out)
    mine = sorted((int(c), shapely.normalize(g).wkb) for c, g in zip(classes, geoms, strict=True))
    assert mine == sorted((c, shapely.normalize(g).wkb) for c, g in whole_raster(labels))


# ----------------------------------------------------------------------------- command line


def cli_exit(args) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code


def test_cli_on_an_embedded_cluster(store, labels, tmp_path):
    out = tmp_path / "cli.parquet"
    main(["export", str(store), "--vector", str(out), "--workers", "2", "--min-area", "1"])
    df = geopandas.read_parquet(out)
    expected = [g for _, g in whole_raster(labels) if g.area >= 1]
    assert len(df) == len(expected)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--vector", "x.shp"], "unknown format"),
        (["--vector", "x.gpkg", "--classes", "forest"], "not in the store's classes"),
        (["--vector", "x.gpkg", "--min-area", "-1"], "--min-area"),
        (["--vector", "x.gpkg", "--simplify", "nan"], "--simplify"),
        (["--classes", "water"], "needs --vector"),
    ],
)
def test_bad_input_is_one_line(store, tmp_path, capsys, args, words):
    args = [a if not a.startswith("x.") else str(tmp_path / a) for a in args]
    assert cli_exit(["export", store, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_existing_output_needs_overwrite(store, tmp_path, capsys):
    out = tmp_path / "x.gpkg"
    out.write_text("keep")
    assert cli_exit(["export", store, "--vector", out]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "keep"


# ----------------------------------------------------------------------------- real data

TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]


def test_store_made_by_run_on_the_shared_tile(client, tmp_path):
    scene = koeln_window_tif(tmp_path, 700, 600)  # skips where ../shared is absent
    store = tmp_path / "koeln.labels.zarr"
    main(["run", scene, "--classes", "building,road,water,tree", *TINY, "--block-size", "512",
          "--workers", "1", "--out", str(store)])  # fmt: skip
    labels = labels_of(store)
    out = tmp_path / "koeln.gpkg"
    summary = export(client, store, out)
    classes, geoms, df = read(out)
    with rasterio.open(scene) as ds:
        transform = ds.transform
    expected = whole_raster(labels, classes=(1, 2, 3, 4), transform=transform)
    assert summary.blocks == 4 and len(geoms) == len(expected) > 0
    mine = sorted((int(c), shapely.normalize(g).wkb) for c, g in zip(classes, geoms, strict=True))
    assert mine == sorted((c, shapely.normalize(g).wkb) for c, g in expected)
    counts = np.bincount(labels.ravel(), minlength=256)
    pixel_area = abs(transform.a * transform.e)
    for c in (1, 2, 3, 4):
        assert df["area"][classes == c].sum() == pytest.approx(counts[c] * pixel_area, rel=1e-12)
