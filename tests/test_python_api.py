"""The Python API as a user meets it: the README's example, run as written in a fresh venv
with the package installed from its wheel (not editable), against the command line.

The venv holds only the wheel; its third-party libraries come from this environment (a
.pth line), so nothing is downloaded. Its results are checked against `reattn-batch
segment` and `reattn-batch run` on the same image and scene: labels equal, coordinates,
CRS and transform kept, the map_scene store bit for bit the run's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from PIL import Image
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
CLASSES = "building,road/parking lot,water"
MODEL_FLAGS = [
    "--clip-weights",
    "random",
    "--upsampler",
    "bilinear",
    "--set",
    "clip_model=ViT-T-16-test",
    "--device",
    "cpu",
]  # fmt: skip  (the README example's load_model keywords, as flags)
CRS = "EPSG:25832"
TRANSFORM = from_origin(356000.0, 5645000.0, 0.5, 0.5)


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    return block


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new venv with the wheel of this tree installed (pip install of the built wheel).

    ``--target`` its site-packages, never ``--prefix``: pip then uninstalls the running
    environment's own copy (this editable install) first."""
    work = tmp_path_factory.mktemp("api-venv")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(ROOT)],
        check=True, capture_output=True, cwd=work,
    )  # fmt: skip
    (wheel,) = (work / "dist").glob("reattn_batch-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # this environment's third-party packages; its own editable reattn_batch is not on it
    # (a path line does not run the editable finder's .pth)
    (site / "_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    return venv


def venv_run(venv: Path, cwd: Path, *args: str, timeout: float = 1200):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def write_scene(path: Path) -> np.ndarray:
    """A 3-band uint8 GeoTIFF with structure (bands of colour, a square); (3, H, W)."""
    rng = np.random.default_rng(7)
    h, w = 300, 260
    data = rng.integers(0, 40, (3, h, w), dtype=np.uint8)
    data[0, :, :100] += 180
    data[1, 120:220, 60:200] += 150
    data[2, 200:, :] += 120
    profile = {"driver": "GTiff", "height": h, "width": w, "count": 3, "dtype": "uint8",
               "crs": CRS, "transform": TRANSFORM}  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return data


CHECKS = r"""
import json
np.save("api_da_labels.npy", labels.values)
np.save("api_np_labels.npy", pred)
np.save("api_np_logits.npy", logits)
facts = {
    "dims": list(labels.dims),
    "crs": labels.rio.crs.to_string(),
    "transform": list(labels.rio.transform())[:6],
    "x_equal": bool(np.array_equal(labels.x.values, image.x.values)),
    "y_equal": bool(np.array_equal(labels.y.values, image.y.values)),
    "class_names": labels.attrs["class_names"],
    "open_labels_crs": ds.rio.crs.to_string(),
    "open_labels_transform": list(ds.rio.transform())[:6],
    "open_labels_names": ds.attrs["class_names"],
    "open_labels_dtype": str(ds.labels.dtype),
    "blocks": summary.blocks,
    "module": type(model).__mro__[1].__module__ + "." + type(model).__mro__[1].__name__,
}
import importlib
for name in ("pipeline", "workers", "configs"):
    try:
        importlib.import_module(name)
        facts[name] = "imported"
    except ModuleNotFoundError:
        facts[name] = "missing"
facts["file"] = rb.__file__
facts["version"] = rb.__version__
json.dump(facts, open("facts.json", "w"))
"""


@pytest.fixture(scope="module")
def example_run(fresh_venv, tmp_path_factory):
    """The README example run in a folder holding scene.tif, then the CLI on the same."""
    work = tmp_path_factory.mktemp("api-example")
    data = write_scene(work / "scene.tif")
    out = venv_run(fresh_venv, work, "-c", readme_example() + "\n" + CHECKS)
    assert out.returncode == 0, out.stderr[-4000:]
    facts = json.loads((work / "facts.json").read_text())
    return work, data, facts, out.stdout


def test_the_readme_example_runs_from_the_installed_wheel_only(example_run, fresh_venv):
    work, _, facts, stdout = example_run
    assert Path(facts["file"]).is_relative_to(fresh_venv)  # not this source tree
    assert (facts["pipeline"], facts["workers"], facts["configs"]) == ("missing",) * 3
    assert facts["version"] == "0.1.0"
    assert facts["module"] == "torch.nn.modules.module.Module"  # Segmenter is an nn.Module
    assert "('y', 'x') EPSG:25832 ['background', 'building', 'road', 'water']" in stdout


def test_segment_equals_the_cli_segment_on_the_same_image(example_run, fresh_venv):
    work, data, facts, _ = example_run
    Image.fromarray(np.moveaxis(data, 0, -1)).save(work / "scene.png")
    cli = venv_run(
        fresh_venv, work, "-m", "reattn_batch", "segment", "scene.png", "--classes", CLASSES,
        *MODEL_FLAGS, "-o", "cli.png", "--save-logits", "cli_logits.npy",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    want = np.array(Image.open(work / "cli.png"))
    np.testing.assert_array_equal(np.load(work / "api_np_labels.npy"), want)
    np.testing.assert_array_equal(np.load(work / "api_da_labels.npy"), want)
    np.testing.assert_array_equal(
        np.load(work / "api_np_logits.npy"), np.load(work / "cli_logits.npy")
    )
    assert len(np.unique(want)) > 1  # a planted structure, not one class everywhere


def test_segment_keeps_the_dataarrays_coordinates_crs_and_transform(example_run):
    _, _, facts, _ = example_run
    assert facts["dims"] == ["y", "x"] and facts["x_equal"] and facts["y_equal"]
    assert facts["crs"] == CRS
    assert facts["transform"] == list(TRANSFORM)[:6]
    assert facts["class_names"] == ["background", "building", "road", "water"]


def test_map_scene_on_a_users_client_equals_reattn_batch_run_bit_for_bit(example_run, fresh_venv):
    work, _, facts, _ = example_run
    cli = venv_run(
        fresh_venv, work, "-m", "reattn_batch", "run", "scene.tif", "--classes", CLASSES,
        *MODEL_FLAGS, "--out", "cli.labels.zarr", "--workers", "1",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    api = zarr.open_group(str(work / "scene.labels.zarr"), mode="r")
    run = zarr.open_group(str(work / "cli.labels.zarr"), mode="r")
    assert api.attrs["complete"] is True and run.attrs["complete"] is True
    assert api["labels"][:].tobytes() == run["labels"][:].tobytes()
    assert api.attrs["run_fingerprint"] == run.attrs["run_fingerprint"]
    assert facts["blocks"] >= 1


def test_open_labels_has_the_scenes_crs_transform_and_classes(example_run):
    _, _, facts, _ = example_run
    assert facts["open_labels_crs"] == CRS
    assert facts["open_labels_transform"] == list(TRANSFORM)[:6]
    assert facts["open_labels_names"] == ["background", "building", "road", "water"]
    assert facts["open_labels_dtype"] == "uint8"
