"""Every module of the project imports on its own, in a fresh interpreter: no import cycle
hides behind the order in which other modules happen to be imported.

One child interpreter imports the third-party libraries once (torch, dask, ...), then forks
a process per project module; each fork starts with no project module loaded and imports
only its own, so a cycle among project modules shows as that module's failure.

Cycles that do not fail at import time (an import inside a function, or under
``TYPE_CHECKING``) are found by reading the source: every ``import``/``from`` statement
anywhere in a module's file is an edge of the project's import graph, which must have no
cycle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# the repository's folders and the import names they install as (pyproject.toml)
PACKAGES = {
    "pipeline": "reattn_batch",
    "workers": "reattn_batch.workers",
    "configs": "reattn_batch.configs",
}


def module_files() -> dict[str, Path]:
    """Import name -> source file of every project module (``__main__`` included)."""
    files = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))
            files[name] = path
    return files


def project_modules() -> list[str]:
    # running __main__ is the CLI itself (tested through python -m reattn_batch)
    return [name for name in module_files() if not name.endswith(".__main__")]


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``import``/``from`` statements anywhere in ``path`` name
    (module level, inside functions, under ``if TYPE_CHECKING``): ``from a import b`` is
    the module ``a.b`` where that is one, else ``a``; relative imports are resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def module_of(dotted: str) -> str:  # a name inside a module -> the module
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(module_of(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            # "from a import b": the module a.b where that is one, else a
            found.update(module_of(f"{base}.{alias.name}") for alias in node.names)
    found.discard("")
    found.discard(name)
    return found


def import_graph() -> nx.DiGraph:
    """Project module -> the project modules its file imports, from the source (AST)."""
    files = module_files()
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        graph.add_edges_from((name, target) for target in imported_modules(name, path, set(files)))
    return graph


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


def test_the_source_import_graph_has_no_cycle():
    graph = import_graph()
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            edges = nx.find_cycle(graph.subgraph(component))
            cycles.append(" -> ".join([*(u for u, _ in edges), edges[0][0]]))
    assert not cycles, "import cycles (any import statement in the file): " + "; ".join(cycles)


def test_the_scan_sees_imports_in_functions_and_type_checking(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from reattn_batch.blocks.task import BlockTask\n"
        "def f():\n"
        "    from reattn_batch.store import NODATA\n"
        "    import reattn_batch.workers.sliding\n"
        "    from . import grids\n"
        "    from .resample import bilinear\n"
    )
    known = set(module_files())
    assert imported_modules("reattn_batch.grid.mod", source, known) == {
        "reattn_batch.blocks.task",
        "reattn_batch.store",
        "reattn_batch.workers.sliding",
        "reattn_batch.grid.grids",
        "reattn_batch.grid.resample",
    }
    graph = import_graph()
    assert graph.has_edge("reattn_batch.blocks.task", "reattn_batch.blocks.reading")
    assert graph.has_edge("reattn_batch.cli.export", "reattn_batch.outputs.vector")


def test_every_module_is_checked():
    modules = project_modules()
    assert "reattn_batch.cli" in modules and "reattn_batch.run.spine" in modules
    assert "reattn_batch.workers.attention" in modules
    assert len(modules) == len(set(modules)) > 50
