"""Black-box helpers for the tests that drive ``python -m reattn_batch`` as a user does.

These tests drive ``python -m reattn_batch ...`` as subprocesses, talk to real Dask
schedulers and workers on loopback (tests/cluster_helpers.py) and read stores with
zarr / rasterio only: they import nothing from ``pipeline`` or ``workers``, so that they
survive the restructuring of pipeline/ into subpackages unchanged.

Scenes are synthetic (written with rasterio into tmp_path): nothing here needs
../shared, so every test always runs (issue 11, item 11).

Store layout assumed (README, "The output store"; pipeline/store.py today): a Zarr
format 2 group with ``labels`` (y, x) uint8 (255 = nodata), group attributes holding
``complete``, ``run_fingerprint``, ``class_names`` ..., and the completion records as
the uint8 array ``block_done`` of shape (block rows, block cols), 1 for a finished block,
chunked in many blocks per chunk file ``block_done/<chunk row>/<chunk col>`` (issue 11
item 6: a few record files per scene, not one per block). Only ``done_blocks``,
``record_files``, ``record_file`` and ``drop_record`` depend on the records' layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# The tiny test model on the CPU (as tests/cluster_helpers.py)
TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test",
        "--upsampler", "bilinear", "--device", "cpu"]  # fmt: skip
CLASSES = ["--classes", "building,road,water,tree"]
#: The same model as a job spec's ``model:`` section (YAML text, no braces: str.format safe)
TINY_MODEL_YAML = """\
model:
  clip_weights: random
  upsampler: bilinear
  device: cpu
  config:
    clip_model: ViT-T-16-test
"""
ERROR_PREFIX = "reattn-batch: error:"


# ----------------------------------------------------------------------------- scenes


def texture(height: int, width: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """(bands, height, width) float64 in 0..1: smooth blobs at two scales plus fine noise,
    so that random-weight labels vary across the scene (not a constant map)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.zeros((bands, height, width))
    for cell, weight in ((64, 0.6), (12, 0.3)):
        coarse = rng.random((bands, -(-height // cell) + 1, -(-width // cell) + 1))
        for b in range(bands):
            big = cv2.resize(coarse[b], (width, height), interpolation=cv2.INTER_CUBIC)
            out[b] += weight * big
    out += 0.1 * rng.random(out.shape)
    return np.clip(out, 0, 1)


def write_scene(
    path: Path,
    width: int,
    height: int,
    *,
    dtype: str = "uint8",
    seed: int = 0,
    data: np.ndarray | None = None,
    gsd: float = 0.5,
    crs: str | None = "EPSG:25832",
    georeferenced: bool = True,
    **profile_extra,
) -> Path:
    """A tiled (256 px) GeoTIFF of ``texture`` (or ``data``: (bands, h, w)) at ``gsd``."""
    import rasterio
    from rasterio.transform import from_origin

    if data is None:
        scale = 255 if dtype == "uint8" else 4000
        data = (texture(height, width, seed=seed) * scale).astype(dtype)
    profile = {
        "driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
        "count": data.shape[0], "dtype": str(data.dtype),
        "tiled": True, "blockxsize": 256, "blockysize": 256,
    }  # fmt: skip
    if georeferenced:
        profile["transform"] = from_origin(356000.0, 5645000.0, gsd, gsd)
        if crs:
            profile["crs"] = crs
    profile.update(profile_extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def write_zarr_scene(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A Zarr (format 2) store holding ``image`` (band, y, x) uint8 with its CRS, as
    rioxarray writes it; chunks of 128 px so that one chunk can be edited."""
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr
    from rasterio.transform import from_origin

    data = (texture(height, width, seed=seed) * 255).astype("uint8")
    transform = from_origin(356000.0, 5645000.0, 0.5, 0.5)
    xs = transform.c + transform.a * (np.arange(width) + 0.5)
    ys = transform.f + transform.e * (np.arange(height) + 0.5)
    da = xr.DataArray(data, dims=("band", "y", "x"),
                      coords={"band": [1, 2, 3], "y": ys, "x": xs})  # fmt: skip
    da = da.rio.write_crs("EPSG:25832").rio.write_transform(transform)
    ds = da.to_dataset(name="image")
    ds["image"].encoding["chunks"] = (3, 128, 128)
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return path


# ----------------------------------------------------------------------------- the CLI


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    @property
    def errors(self) -> list[str]:
        """stderr lines that are the CLI's own error lines."""
        return [line for line in self.stderr.splitlines() if line.startswith(ERROR_PREFIX)]


def env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout first on the path."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), environ.get("PYTHONPATH", "")) if p
    )
    environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    environ.update(extra)
    return environ


def kill_group(proc: subprocess.Popen) -> None:
    """End a process started with start_new_session, and its children (local workers)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # workers of a LocalCluster left behind
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def start(
    *args: object,
    extra_env: dict[str, str] | None = None,
    cwd=None,
    memory_cap: int | None = None,
) -> subprocess.Popen:
    """``python -m reattn_batch ARGS`` in a session of its own; stdout/stderr piped.
    memory_cap: bytes of address space (RLIMIT_AS) for it and its local workers."""

    def limit() -> None:
        if memory_cap is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_cap, memory_cap))

    return subprocess.Popen(
        [sys.executable, "-m", "reattn_batch", *(str(a) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(**(extra_env or {})),
        cwd=cwd or REPO,
        start_new_session=True,
        preexec_fn=limit,
    )


def finish(proc: subprocess.Popen, timeout: float, started: float | None = None) -> Result:
    """Wait for ``proc`` at most ``timeout`` s; a process still running then is killed
    (with its process group) and reported as timed out."""
    started = time.monotonic() if started is None else started
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        out, err = proc.communicate()
    else:
        kill_group(proc)  # nothing may outlive the command (orphaned local workers)
    return Result(proc.returncode, out, err, time.monotonic() - started, timed_out)


def cli(*args: object, timeout: float = 240, extra_env: dict[str, str] | None = None) -> Result:
    """Run ``python -m reattn_batch ARGS`` to the end (or ``timeout``)."""
    started = time.monotonic()
    return finish(start(*args, extra_env=extra_env), timeout, started)


def ok(result: Result) -> Result:
    """Assert that a CLI run succeeded; show its stderr otherwise."""
    assert result.rc == 0 and not result.timed_out, result.stderr[-4000:]
    return result


def one_clean_error(result: Result) -> str:
    """Assert: ended (no hang), non-zero exit, exactly one error line, no traceback and
    no Dask "Compute Failed" log; returns the line without its prefix."""
    assert not result.timed_out, f"still running after {result.seconds:.0f} s (a hang)"
    assert result.rc not in (0, None), result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    assert "Compute Failed" not in result.stderr, result.stderr[-4000:]
    assert len(result.errors) == 1, result.stderr[-4000:]
    return result.errors[0].removeprefix(ERROR_PREFIX).strip()


def not_a_usage_error(line: str) -> None:
    """The error is about the run, not click refusing an option this test needs."""
    assert not re.search(r"no such option|got unexpected extra|invalid value", line, re.I), line


# ----------------------------------------------------------------------------- stores


def group(store: Path):
    import zarr

    return zarr.open_group(str(store), mode="r")


def labels(store: Path) -> np.ndarray:
    """The store's ``labels`` array (y, x) uint8."""
    return group(store)["labels"][:]


def attrs(store: Path) -> dict:
    """The store's group attributes (not the consolidated copy)."""
    import zarr

    return dict(zarr.open_group(str(store), mode="r", use_consolidated=False).attrs.asdict())


def record_files(store: Path) -> list[Path]:
    """The completion-record files: ``block_done/<chunk row>/<chunk col>`` (LAYOUT
    ASSUMPTION, see the module docstring)."""
    root = store / "block_done"
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def record_file(store: Path, row: int, col: int) -> Path:
    """The record file holding block (row, col)'s record (LAYOUT ASSUMPTION)."""
    import zarr

    ch, cw = zarr.open_array(str(store / "block_done"), mode="r").chunks
    return store / "block_done" / str(row // ch) / str(col // cw)


def drop_record(store: Path, row: int, col: int) -> None:
    """Remove block (row, col)'s completion record, as after a crash before it was written
    (LAYOUT ASSUMPTION: ``block_done`` is a uint8 zarr array, 1 = done)."""
    import zarr

    zarr.open_array(str(store / "block_done"), mode="r+")[row, col] = 0


def done_blocks(store: Path) -> int:
    """How many blocks have a completion record (0 while the store does not exist yet).
    LAYOUT ASSUMPTION: ``block_done`` is a zarr array with 1 for a finished block."""
    import zarr

    try:
        return int(np.count_nonzero(zarr.open_array(str(store / "block_done"), mode="r")[...]))
    except Exception:  # not created yet, or being replaced
        return 0


def tree_digest(path: Path) -> str:
    """sha256 over every file's relative path and bytes under ``path``: "untouched"."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``predicate`` every 0.1 s; fail (naming ``what``) after ``timeout`` s or when
    ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def job_status(*args: object) -> int:
    """``reattn-batch job ARGS`` in this process (through ``main``, as the console script
    runs it): its exit status."""
    from reattn_batch.cli import main

    try:
        main(["job", *(str(a) for a in args)])
    except SystemExit as exc:
        return int(exc.code)
    return 0


def fails_with_one_line(capsys, *args: object) -> str:
    """``reattn-batch ARGS`` in this process exits 2 with one line on stderr: that line."""
    import pytest

    from reattn_batch.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err
