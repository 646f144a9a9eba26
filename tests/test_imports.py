"""Every module of the project imports on its own, in a fresh interpreter: no import cycle
hides behind the order in which other modules happen to be imported.

One child interpreter imports the third-party libraries once (torch, dask, ...), then forks
a process per project module; each fork starts with no project module loaded and imports
only its own, so a cycle among project modules shows as that module's failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the repository's folders and the import names they install as (pyproject.toml)
PACKAGES = {
    "pipeline": "reattn_batch",
    "workers": "reattn_batch.workers",
    "configs": "reattn_batch.configs",
}


def project_modules() -> list[str]:
    names = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__main__":
                continue  # running it is the CLI itself (tested through python -m reattn_batch)
            names.append(".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return names


CHILD = r"""
import importlib, json, os, sys, traceback
for lib in ("torch", "open_clip", "distributed", "rasterio", "zarr", "xarray", "rioxarray",
            "pydantic", "click", "rich", "cv2", "yaml", "odc.geo", "rio_cogeo"):
    importlib.import_module(lib)
assert not [m for m in sys.modules if m.split(".")[0] == "reattn_batch"]
results = {}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException:
            message = traceback.format_exc(limit=6)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    results[name] = b"".join(chunks).decode()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def import_failures() -> dict[str, str]:
    modules = project_modules()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(modules)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", project_modules())
def test_module_imports_alone(import_failures, module):
    assert import_failures[module] == "", import_failures[module]


def test_every_module_is_checked():
    modules = project_modules()
    assert "reattn_batch.cli" in modules and "reattn_batch.run.spine" in modules
    assert "reattn_batch.workers.attention" in modules
    assert len(modules) == len(set(modules)) > 50
