"""Issue 19 item 8: every command on a path that is not what it expects.

One matrix, (command, wrong path): `run`, `job run`, `export` (each format), `info` and
`view`, each given a plain file, a folder of other files, someone's Zarr (format 2 and
3), a label store whose metadata is damaged, a missing path, an unfinished label store,
an output path equal to an input (the store, the scene, the job spec), an output root in
a Zarr store, and a busy port. Each cell runs the command (in this process through
``main``, which is what the console script calls; the one cell that serves, `view` of an
unfinished store, as a subprocess) and checks: a refusal is exactly one
``reattn-batch: error:`` line that says what is wrong, a non-zero exit and no traceback;
a command that reads an unfinished store works and warns once that it is unfinished; and
in every cell the files given to the command are byte for byte as before.

A store being written by another run (its lock held, as a running `run` holds it) has
tests of its own below: `info` and `view` read it with a warning that it is being written,
`export` and `run` refuse it with one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import cli_helpers as h
import pytest
import zarr

from reattn_batch.cli import main
from reattn_batch.store import lock_store

pytestmark = pytest.mark.timeout(600)


@dataclasses.dataclass(frozen=True)
class Place:
    """The module's files: a scene, its finished store and the wrong paths."""

    root: Path
    scene: Path
    store: Path
    unfinished: Path
    damaged: Path
    plain: Path
    folder: Path
    zarr2: Path
    zarr3: Path
    zarr_scene: Path
    missing: Path

    def spec(self, name: str, scenes: str, output_root: Path | str) -> Path:
        """A job spec (tiny model, one local worker) next to the files."""
        path = self.root / "specs" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(
            f"name: {name}\nscenes:\n  {scenes}\nclasses: building,road\n{h.TINY_MODEL_YAML}"
            f"output_root: {json.dumps(str(output_root))}\n"
            "cluster:\n  local: {workers: 1, threads_per_worker: 1}\n"
        )
        return path


def _zarr_group(path: Path, zarr_format: int) -> Path:
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    root.attrs["title"] = "somebody's datacube"
    root.create_array("ndvi", shape=(4, 64, 64), chunks=(1, 64, 64), dtype="float32")[:] = 0.5
    return path


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Place:
    root = tmp_path_factory.mktemp("wrong-paths")
    scene = h.write_scene(root / "scene.tif", 300, 260)
    store = root / "scene.labels.zarr"
    h.ok(h.cli("run", scene, *h.CLASSES, *h.TINY, "--out", store))
    # An unfinished store, as a run killed before its block's record leaves it.
    unfinished = root / "unfinished.labels.zarr"
    shutil.copytree(store, unfinished)
    zarr.open_group(str(unfinished), mode="r+", use_consolidated=False).attrs["complete"] = False
    h.drop_record(unfinished, 0, 0)
    shutil.rmtree(unfinished / "labels" / "0")
    damaged = root / "damaged.labels.zarr"
    shutil.copytree(store, damaged)
    (damaged / ".zattrs").write_text('{"class_names": ["background", "building"')  # cut off
    plain = root / "notes.txt"
    plain.write_text("not a store\n")
    folder = root / "results"
    (folder / "sub").mkdir(parents=True)
    (folder / "keep.txt").write_text("keep me")
    (folder / "sub" / "table.csv").write_text("a,b\n1,2\n")
    return Place(
        root=root,
        scene=scene,
        store=store,
        unfinished=unfinished,
        damaged=damaged,
        plain=plain,
        folder=folder,
        zarr2=_zarr_group(root / "cube.zarr", 2),
        zarr3=_zarr_group(root / "cube3.zarr", 3),
        zarr_scene=h.write_zarr_scene(root / "image.zarr", 300, 260),
        missing=root / "missing.zarr",
    )


@dataclasses.dataclass(frozen=True)
class Cell:
    """One command on one wrong path: ``argv(place, out)`` (``out``: an empty folder for
    the command's outputs) and what its line must say (a regular expression), or
    ``warns``: it works and warns once that the store is unfinished."""

    argv: Callable[[Place, Path], list]
    says: str = ""
    warns: bool = False


STORES = {
    "plain file": (lambda p: p.plain, "notes.txt"),
    "folder of other files": (lambda p: p.folder, "results"),
    "foreign zarr v2": (lambda p: p.zarr2, "cube.zarr"),
    "foreign zarr v3": (lambda p: p.zarr3, "cube3.zarr"),
    "damaged store": (lambda p: p.damaged, "damaged.labels.zarr.*damaged"),
    "missing": (lambda p: p.missing, "missing.zarr.*no such"),
}
READERS = {
    "info": lambda s, o: ["info", s],
    "export --cog": lambda s, o: ["export", s, "--cog", o / "x.tif"],
    "export --quicklook": lambda s, o: ["export", s, "--quicklook", o / "x.png"],
    "export --vector": lambda s, o: ["export", s, "--vector", o / "x.gpkg", "--workers", "1"],
    "export --stac": lambda s, o: ["export", s, "--stac", o / "stac"],
    "view": lambda s, o: ["view", s],
}
M = [*h.CLASSES, *h.TINY]


def _not_a_store(name: str, what: str) -> str:
    """The line of `run --out` onto something no flag makes usable: another path, no flag."""
    return rf"{name} exists and is {what}.*pass another --out"


def _job(name: str, scenes: str, root) -> Callable[[Place, Path], list]:
    """`job run` of a spec whose scenes line is ``scenes`` (formatted with the place) and
    whose output root is ``root(place, out)``."""
    return lambda p, o: ["job", "run", p.spec(name, scenes.format(p=p), root(p, o))]


def _summary(name: str, summary) -> Callable[[Place, Path], list]:
    """`job run --summary S` of a good spec (its output root: the cell's empty folder)."""
    return lambda p, o: [
        *_job(name, "list: [{p.scene}]", lambda p, o: o)(p, o),
        "--summary",
        summary(p),
    ]


CELLS: dict[str, Cell] = {
    # the read commands on what is not a label store
    **{
        f"{command} | {kind}": Cell(
            lambda p, o, argv=argv, store=store: argv(store(p), o), says=says
        )
        for command, argv in READERS.items()
        for kind, (store, says) in STORES.items()
    },
    # ... and on an unfinished one: they work, and say so
    "info | unfinished": Cell(lambda p, o: ["info", p.unfinished], warns=True),
    "info --json | unfinished": Cell(lambda p, o: ["info", "--json", p.unfinished], warns=True),
    "export --cog | unfinished": Cell(
        lambda p, o: ["export", p.unfinished, "--cog", o / "x.tif"], warns=True
    ),
    "export --quicklook | unfinished": Cell(
        lambda p, o: ["export", p.unfinished, "--quicklook", o / "x.png"], warns=True
    ),
    "export --stac | unfinished": Cell(
        lambda p, o: ["export", p.unfinished, "--stac", o], warns=True
    ),
    # view: a busy port, a wrong --scene
    "view --port | busy": Cell(
        lambda p, o: ["view", p.store, "--port", "{busy}"],
        says=r"cannot listen on 127\.0\.0\.1:\d+",
    ),
    "view --scene | plain file": Cell(
        lambda p, o: ["view", p.store, "--scene", p.plain], says="notes.txt"
    ),
    "view --scene | missing": Cell(
        lambda p, o: ["view", p.store, "--scene", p.missing], says="missing.zarr"
    ),
    # export: an output path that is an input
    "export --cog | = the store": Cell(
        lambda p, o: ["export", p.store, "--cog", p.store, "--overwrite"],
        says="inside the store",
    ),
    "export --cog | = the scene": Cell(
        lambda p, o: ["export", p.store, "--cog", p.scene, "--overwrite"],
        says="scene.tif is the store's input scene",
    ),
    "export --quicklook | = the scene": Cell(
        lambda p, o: ["export", p.store, "--quicklook", p.scene, "--overwrite"],
        says="scene.tif is the store's input scene",
    ),
    "export --vector | in the store": Cell(
        lambda p, o: ["export", p.store, "--vector", p.store / "x.gpkg", "--overwrite"],
        says="inside the store",
    ),
    "export --stac | = the store": Cell(
        lambda p, o: ["export", p.store, "--stac", p.store], says="inside the store"
    ),
    "export --stac | = the store, --overwrite": Cell(
        lambda p, o: ["export", p.store, "--stac", p.store, "--overwrite"],
        says="inside the store",
    ),
    # run: a SCENE that is not imagery
    "run | scene: plain file": Cell(
        lambda p, o: ["run", p.plain, *M, "--out", o / "s.zarr"], says="notes.txt: not a raster"
    ),
    "run | scene: folder of other files": Cell(
        lambda p, o: ["run", p.folder, *M, "--out", o / "s.zarr"], says="results: not a raster"
    ),
    "run | scene: foreign zarr v2": Cell(
        lambda p, o: ["run", p.zarr2, *M, "--out", o / "s.zarr"],
        says="cube.zarr: not a readable Zarr",
    ),
    "run | scene: foreign zarr v3": Cell(
        lambda p, o: ["run", p.zarr3, *M, "--out", o / "s.zarr"],
        says="cube3.zarr: not a readable Zarr",
    ),
    "run | scene: a label store": Cell(
        lambda p, o: ["run", p.store, *M, "--out", o / "s.zarr"],
        says="scene.labels.zarr is a label store reattn-batch wrote, not imagery",
    ),
    "run | scene: missing": Cell(
        lambda p, o: ["run", p.missing, *M, "--out", o / "s.zarr"], says="missing.zarr: no such"
    ),
    # run: an --out that no flag makes usable (the line asks for another path, not a flag)
    "run --out | plain file": Cell(
        lambda p, o: ["run", p.scene, *M, "--out", p.plain],
        says=_not_a_store("notes.txt", "a file"),
    ),
    "run --out --resume | plain file": Cell(
        lambda p, o: ["run", p.scene, *M, "--out", p.plain, "--resume"],
        says=_not_a_store("notes.txt", "a file"),
    ),
    "run --out | folder of other files": Cell(
        lambda p, o: ["run", p.scene, *M, "--out", p.folder],
        says=_not_a_store("results", "a folder of other files"),
    ),
    "run --out --overwrite | folder of other files": Cell(
        lambda p, o: ["run", p.scene, *M, "--out", p.folder, "--overwrite"],
        says="results exists and is",  # (worded so before: a regression guard)
    ),
    "run --out | foreign zarr v2": Cell(
        lambda p, o: ["run", p.scene, *M, "--out", p.zarr2],
        says=_not_a_store("cube.zarr", "a Zarr store"),
    ),
    "run --out --resume | foreign zarr v2": Cell(
        lambda p, o: ["run", p.scene, *M, "--out", p.zarr2, "--resume"],
        says=_not_a_store("cube.zarr", "a Zarr store"),
    ),
    "run --out --overwrite | foreign zarr v3": Cell(
        lambda p, o: ["run", p.scene, *M, "--out", p.zarr3, "--overwrite"],
        says="cube3.zarr exists and is a Zarr store",
    ),
    "run --out --resume | damaged store": Cell(
        lambda p, o: ["run", p.scene, *M, "--out", p.damaged, "--resume"],
        says=_not_a_store("damaged.labels.zarr", "a Zarr store that is not a readable label"),
    ),
    "run --out | the scene": Cell(
        lambda p, o: ["run", p.scene, *M, "--out", p.scene, "--overwrite"],
        says="is, holds or lies inside the input",
    ),
    "run --out | under a file": Cell(
        lambda p, o: ["run", p.scene, *M, "--out", p.plain / "x.zarr"],
        says="notes.txt",  # (one line before too, once the cluster had started)
    ),
    "run --out | in the zarr scene": Cell(
        lambda p, o: ["run", p.zarr_scene, "--variable", "image", *M, "--out", p.zarr_scene / "x"],
        says="is, holds or lies inside the input",
    ),
    # job run: a spec that is not one, an output root in a Zarr store, a summary onto an input
    "job run | spec: plain file": Cell(lambda p, o: ["job", "run", p.plain], says="notes.txt"),
    "job run | spec: folder": Cell(lambda p, o: ["job", "run", p.folder], says="results"),
    "job run | spec: missing": Cell(
        lambda p, o: ["job", "run", p.missing], says="missing.zarr: no such file"
    ),
    "job run | output_root: plain file": Cell(
        _job("j1", "list: [{p.scene}]", lambda p, o: p.plain),
        says="'output_root'.*notes.txt",  # (one line before too)
    ),
    "job run | output_root: a label store": Cell(
        _job("j2", "list: [{p.scene}]", lambda p, o: p.store),
        says="'output_root'.*scene.labels.zarr is a Zarr store",
    ),
    "job run | output_root: foreign zarr": Cell(
        _job("j3", "list: [{p.scene}]", lambda p, o: p.zarr2),
        says="'output_root'.*cube.zarr is a Zarr store",
    ),
    "job run | output_root: in a zarr": Cell(
        _job("j4", "list: [{p.scene}]", lambda p, o: p.zarr3 / "out"),
        says="'output_root'.*lies inside .*cube3.zarr",
    ),
    "job run | output_root: the zarr scene": Cell(
        _job("j5", "list: [{p.zarr_scene}]", lambda p, o: p.zarr_scene),
        says="'output_root'.*is or lies inside the input scene",
    ),
    "job run | output_root: the scenes' folder": Cell(
        _job("j6", "glob: {p.root}/*.tif", lambda p, o: p.root),
        says="matched only files under output_root",
    ),
    "job run --summary | = the scene": Cell(
        _summary("j7", lambda p: p.scene), says="--summary .*scene.tif is the input scene"
    ),
    "job run --summary | = the spec": Cell(
        _summary("j8", lambda p: p.root / "specs" / "j8.yaml"),
        says="--summary .*j8.yaml is the job spec",
    ),
    "job run --summary | folder": Cell(
        _summary("j9", lambda p: p.folder), says="--summary .*results is a folder"
    ),
    "job run --summary | in a store": Cell(
        _summary("j10", lambda p: p.store / "summary.json"),
        says="--summary .*lies inside the Zarr store",
    ),
}


def _main(argv: list, capsys, caplog) -> tuple[int, list[str], list[logging.LogRecord]]:
    """Run the CLI's entry point in this process: (exit status, stderr lines, warnings).
    An exception that escapes it fails the cell with its traceback."""
    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        try:
            main([str(a) for a in argv])
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - the finding is the traceback itself
            pytest.fail(f"a traceback:\n{traceback.format_exc()}")
    err = capsys.readouterr().err.splitlines()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    return status, err, warnings


def _unfinished_warnings(texts: list[str], store: Path) -> list[str]:
    """The warnings that say ``store`` is unfinished and what its unwritten pixels read as."""
    return [t for t in texts if str(store) in t and "unfinished" in t and "255" in t]


@pytest.mark.parametrize("name", list(CELLS))
def test_a_command_on_a_wrong_path_is_one_line_or_a_warning_and_touches_nothing(
    name, place, tmp_path, capsys, caplog
):
    cell = CELLS[name]
    out = tmp_path / "out"
    out.mkdir()
    argv = cell.argv(place, out)
    busy = None
    if "{busy}" in argv:
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        argv = [str(busy.getsockname()[1]) if a == "{busy}" else a for a in argv]
    before = h.tree_digest(place.root)
    try:
        status, err, warnings = _main(argv, capsys, caplog)
    finally:
        if busy is not None:
            busy.close()
    assert h.tree_digest(place.root) == before, f"{name}: the command changed its inputs"
    assert not any("Traceback" in line for line in err), "\n".join(err)
    errors = [line for line in err if line.startswith(h.ERROR_PREFIX)]
    if cell.warns:
        assert status == 0 and not errors, "\n".join(err)
        texts = [r.getMessage() for r in warnings]
        assert len(_unfinished_warnings(texts, place.unfinished)) == 1, texts
        if argv[0] == "export":
            assert any(out.iterdir()), "the export wrote nothing"
        return
    assert status not in (0, None), f"{name}: exit status {status}"
    assert len(errors) == 1, "\n".join(err)
    h.not_a_usage_error(errors[0])
    assert re.search(cell.says, errors[0]), errors[0]
    assert not any(out.rglob("*")), f"{name}: wrote {sorted(out.rglob('*'))}"


def _view_warnings(store: Path) -> list[str]:
    """`view STORE` as a subprocess, stopped once its URL is printed: its WARNING lines.
    (`view` serves until stopped, unlike the matrix's commands.)"""
    proc = h.start("view", store, "--port", "0")
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and "http://" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "http://127.0.0.1:" in line, proc.stderr.read()[-3000:]
    finally:
        result = h.finish(proc, timeout=30)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [t for t in result.stderr.splitlines() if "WARNING" in t]


def test_view_of_an_unfinished_store_serves_it_and_warns(place):
    before = h.tree_digest(place.root)
    warned = _view_warnings(place.unfinished)
    assert h.tree_digest(place.root) == before
    assert len(_unfinished_warnings(warned, place.unfinished)) == 1, warned


BEING_WRITTEN = {  # command on a store another run is writing -> its line, or None: a warning
    "info": (lambda p, o: ["info", p.store], None),
    "info --json": (lambda p, o: ["info", "--json", p.store], None),
    "export --cog": (
        lambda p, o: ["export", p.store, "--cog", o / "x.tif"],
        "scene.labels.zarr is being written by another run now.*wait for that run to end",
    ),
    "export --stac": (
        lambda p, o: ["export", p.store, "--stac", o],
        "scene.labels.zarr is being written by another run now",
    ),
    "run --resume": (
        lambda p, o: ["run", p.scene, *M, "--out", p.store, "--resume"],
        "scene.labels.zarr is in use by another run",
    ),
    "run --overwrite": (
        lambda p, o: ["run", p.scene, *M, "--out", p.store, "--overwrite"],
        "scene.labels.zarr is in use by another run",
    ),
}


def _being_written_warnings(texts: list[str], store: Path) -> list[str]:
    return [t for t in texts if str(store) in t and "being written by another run now" in t]


@pytest.mark.parametrize("name", list(BEING_WRITTEN))
def test_a_store_being_written_is_read_with_a_warning_or_refused(
    name, place, tmp_path, capsys, caplog
):
    argv, says = BEING_WRITTEN[name]
    out = tmp_path / "out"
    out.mkdir()
    with lock_store(place.store):  # what a running `run` holds
        before = h.tree_digest(place.root)
        status, err, warnings = _main(argv(place, out), capsys, caplog)
        assert h.tree_digest(place.root) == before, f"{name}: the command changed its inputs"
    assert not any("Traceback" in line for line in err), "\n".join(err)
    errors = [line for line in err if line.startswith(h.ERROR_PREFIX)]
    if says is None:
        assert status == 0 and not errors, "\n".join(err)
        texts = [r.getMessage() for r in warnings]
        assert len(_being_written_warnings(texts, place.store)) == 1, texts
        return
    assert status not in (0, None), f"{name}: exit status {status}"
    assert len(errors) == 1, "\n".join(err)
    assert re.search(says, errors[0]), errors[0]
    assert not any(out.rglob("*")), f"{name}: wrote {sorted(out.rglob('*'))}"


def test_view_of_a_store_being_written_serves_it_and_warns(place):
    with lock_store(place.store):
        warned = _view_warnings(place.store)
    assert len(_being_written_warnings(warned, place.store)) == 1, warned


@pytest.mark.parametrize("marker", [".zattrs", ".zmetadata"])
def test_a_folder_of_zarr_metadata_alone_is_a_zarr_store_to_run_and_job(
    marker, place, tmp_path, capsys
):
    """One list of the files that make a folder a Zarr store: a folder holding only
    ``.zattrs`` (or ``.zmetadata``) was "a Zarr store" as a job's output root and "a
    folder of other files" as `run --out`."""
    folder = tmp_path / "attrs.zarr"
    folder.mkdir()
    (folder / marker).write_text("{}")
    before = h.tree_digest(folder)
    line = h.fails_with_one_line(capsys, "run", place.scene, *M, "--out", folder)
    assert re.search(_not_a_store("attrs.zarr", "a Zarr store"), line), line
    spec = place.spec(f"attrs{marker}", f"list: [{place.scene}]", folder)
    line = h.fails_with_one_line(capsys, "job", "run", spec)
    assert "attrs.zarr is a Zarr store" in line, line
    assert h.tree_digest(folder) == before


def test_resume_into_an_empty_folder_starts_the_store_there(place, tmp_path):
    """An empty folder at --out holds no store yet (a mounted volume, a `mkdir`):
    `--resume` starts one there, as at a new path, and it equals a first run's store."""
    empty = tmp_path / "empty.labels.zarr"
    empty.mkdir()
    h.ok(h.cli("run", place.scene, *M, "--out", empty, "--resume"))
    assert h.attrs(empty)["complete"] is True
    assert (h.labels(empty) == h.labels(place.store)).all()
