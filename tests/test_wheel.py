"""The package installs from a wheel and runs without the source tree: configs ship inside
it (read through importlib.resources), and `segment` and a small `run` work from another
folder with only the installed copy on the path.

The wheel is built with this environment's setuptools (no build isolation, no network)
and installed with ``pip install --no-deps --target``; the dependencies are this
environment's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from PIL import Image
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test", "--upsampler", "bilinear"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding only the installed wheel (reattn_batch and its dist-info)."""
    work = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=work,
    )
    (wheel,) = (work / "dist").glob("reattn_batch-*.whl")
    site = work / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_the_wheel_carries_the_configs_and_no_source_tree_is_used(installed, tmp_path):
    configs = installed / "reattn_batch" / "configs"
    assert (configs / "method.yaml").is_file()
    assert (configs / "datasets" / "loveda.yaml").is_file()
    assert (configs / "models" / "ViT-T-16-test.json").is_file()
    code = (
        "import reattn_batch, reattn_batch.workers.config as c; "
        "print(reattn_batch.__file__); print(c.CONFIG_DIR); print(c.load_config().method)"
    )
    out = run_installed(installed, tmp_path, "-c", code)
    assert out.returncode == 0, out.stderr
    package, config_dir, method = out.stdout.split()
    assert Path(package).is_relative_to(installed) and Path(config_dir) == configs
    assert method == "reattnclip"


def test_the_wheel_carries_the_viewer_page_and_leaflet(installed, tmp_path):
    """`reattn-batch view` serves its page from the package (no CDN): every allow-listed
    static file, read the way the server reads it, equals the source tree's copy."""
    from reattn_batch.viewer.static_files import STATIC

    static = installed / "reattn_batch" / "viewer" / "static"
    for name in (*STATIC, "THIRD_PARTY.md", "LICENSE-leaflet.txt"):
        source = ROOT / "pipeline" / "viewer" / "static" / name
        assert (static / name).read_bytes() == source.read_bytes(), name
    code = (
        "import reattn_batch.viewer.static_files as s; d = s.load_static(); "
        "print(s.__file__); print(sorted(d) == sorted(s.STATIC), sum(map(len, d.values())))"
    )
    out = run_installed(installed, tmp_path, "-c", code)
    assert out.returncode == 0, out.stderr[-3000:]
    module, same, size = out.stdout.split()
    assert Path(module).is_relative_to(installed) and same == "True"
    assert int(size) == sum((static / name).stat().st_size for name in STATIC)


def test_segment_and_a_small_run_from_the_installed_wheel(installed, tmp_path):
    rng = np.random.default_rng(0)
    image = tmp_path / "tile.png"
    Image.fromarray(rng.integers(0, 255, (120, 150, 3), np.uint8)).save(image)
    out = run_installed(
        installed, tmp_path, "-m", "reattn_batch", "segment", str(image),
        "--classes", "building,road", *TINY, "-o", "pred.png",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    pred = np.array(Image.open(tmp_path / "pred.png"))
    assert pred.shape == (120, 150) and pred.max() <= 2

    scene = tmp_path / "scene.tif"
    profile = {
        "driver": "GTiff", "height": 300, "width": 260, "count": 3, "dtype": "uint8",
        "crs": "EPSG:25832", "transform": from_origin(356000.0, 5645000.0, 0.5, 0.5),
    }  # fmt: skip
    with rasterio.open(scene, "w", **profile) as ds:
        ds.write(rng.integers(0, 255, (3, 300, 260), np.uint8))
    out = run_installed(
        installed, tmp_path, "-m", "reattn_batch", "run", str(scene), "--classes", "building,road",
        *TINY, "--block-size", "512", "--workers", "1", "--out", "scene.labels.zarr",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    store = zarr.open_group(str(tmp_path / "scene.labels.zarr"), mode="r")
    labels = store["labels"][:]
    assert labels.shape == (300, 260) and labels.max() <= 2
    assert store.attrs["complete"] is True


def test_the_wheel_installs_one_import_name_and_every_package_folder(installed, tmp_path):
    """Only `reattn_batch` reaches site-packages: the repository's generic folder names
    (pipeline, workers, configs) do not import, and every package folder of the source
    tree is in the wheel (pyproject.toml lists them by hand)."""
    tops = {p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")}
    assert tops - {"bin"} == {"reattn_batch"}
    folders = {"pipeline": "", "workers": "workers", "configs": "configs"}
    for folder, inside in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            assert (installed / "reattn_batch" / inside / rel / "__init__.py").is_file(), rel
    code = (
        "import importlib, importlib.metadata as md, reattn_batch\n"
        "for name in ('pipeline', 'workers', 'configs'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        print(name, 'missing')\n"
        "print(reattn_batch.__version__ == md.version('reattn-batch'), reattn_batch.__version__)\n"
    )
    out = run_installed(installed, tmp_path, "-c", code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [
        "pipeline", "missing", "workers", "missing", "configs", "missing", "True", "0.1.0"
    ]  # fmt: skip
