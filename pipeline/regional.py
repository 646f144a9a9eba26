"""Scheduled regional jobs: many scenes, one spec file (`reattn-batch job run SPEC.yaml`).

A job spec (YAML; example in ``configs/jobs/example_region.yaml``) names the scenes (a
list, a glob, or a file of URIs), the classes, the model, the run settings, an output
root and the cluster. ``run_job`` maps every scene into its own label store
``<output_root>/<scene stem>.labels.zarr`` with one model and class list for all, and
is idempotent, so cron or Airflow can simply run it again:

- a store that is complete and of the same run (same ``run_fingerprint``) is skipped;
- a store of the same run that is not complete is resumed (only unfinished blocks);
- a store of a different run (the scene file, classes, model or settings changed) is
  never overwritten: the scene fails with a line saying so;
- a scene that fails (unreadable file, a failed read, a worker error) is recorded with
  its one-line message and the job goes on with the next scene.

Outputs in the output root: ``index.json`` and ``index.geojson`` (one entry / feature per
scene: status, message, blocks, crops, seconds, run fingerprint, footprint in EPSG:4326),
rewritten after every scene, and ``summary.json`` (or ``--summary``) at the end. The
job's exit status is 0 when no scene failed and 1 otherwise (2: the spec itself is
wrong, or another run holds the output root's lock).

Relative paths in a spec (scenes, files, output root, weights, scheduler file) are
relative to the spec file's folder, so the job does not depend on the working directory.
The cluster is connected to once, and only when some scene needs computing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from pipeline import store
from pipeline.cluster import ClusterInfo, ClusterRequest, connect
from pipeline.job import RunRequest, default_out, plan, run_fingerprint, run_scene
from workers.classes import ClassList, build_class_list, parse_classes
from workers.config import read_yaml
from workers.errors import UserError
from workers.model_spec import ModelSpec, describe_weights

log = logging.getLogger(__name__)

#: What happened to a scene in this run (``pending``: not reached yet, index only).
STATUSES = ("done", "resumed", "skipped", "failed")
INDEX_JSON = "index.json"
INDEX_GEOJSON = "index.geojson"
SUMMARY_JSON = "summary.json"
LOCK_FILE = ".reattn-batch-job.lock"
#: Points per footprint edge before reprojection (edges curve in EPSG:4326).
FOOTPRINT_EDGE_POINTS = 8

_TOP_KEYS = (
    "name", "scenes", "classes", "classes_file", "no_background", "model", "run",
    "output_root", "cluster",
)  # fmt: skip
_SCENE_KEYS = ("list", "glob", "url_file")
_MODEL_KEYS = (
    "method", "clip_weights", "upsampler", "upsampler_weights", "config", "prob_thd", "device",
)  # fmt: skip
_RUN_KEYS = ("gsd", "block_size", "bands", "stretch", "save_confidence", "variable")
_CLUSTER_KEYS = ("local", "scheduler", "scheduler_file")
_LOCAL_KEYS = ("workers", "threads_per_worker")
_UPSAMPLERS = ("jbu_one", "jbu_stack", "bilinear")
_DEVICES = ("auto", "cpu", "cuda")


# ----------------------------------------------------------------------------- the spec


class _Reader:
    """Typed access to the spec's values; every error names the spec and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.absolute().parent

    def error(self, key: str, why: str) -> UserError:
        return UserError(f"job spec {self.path}: '{key}': {why}")

    def mapping(self, key: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping of {', '.join(allowed)}")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            name = f"{key}.{unknown[0]}" if key else str(unknown[0])
            raise self.error(name, f"unknown key; known keys here: {', '.join(allowed)}")
        return value

    def string(self, key: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value.strip()

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def integer(self, key: str, value: Any, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {value!r}")
        return float(value)

    def numbers(self, key: str, value: Any) -> list[Any]:
        """A YAML list, or a comma-separated string ("3,2,1")."""
        if isinstance(value, str):
            try:
                return [yaml.safe_load(v) for v in value.split(",")]
            except yaml.YAMLError:
                raise self.error(key, f"expected comma-separated numbers, got {value!r}") from None
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {value!r}")
        return value

    def local_path(self, key: str, value: Any, base: Path | None = None) -> Path:
        """A local path; relative paths are relative to the spec file's folder."""
        path = Path(self.string(key, value)).expanduser()
        return path if path.is_absolute() else (base or self.base) / path

    def uri(self, value: str, base: Path) -> str:
        """A scene: URLs and GDAL /vsi paths as written; local paths made absolute."""
        value = value.strip()
        if value.startswith("zarr://"):
            rest = value[len("zarr://") :]
            return value if "://" in rest else "zarr://" + str(self._local(rest, base))
        if "://" in value or value.startswith("/vsi"):
            return value
        return str(self._local(value, base))

    @staticmethod
    def _local(value: str, base: Path) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path


@dataclasses.dataclass(frozen=True)
class JobSpecFile:
    """A validated job spec: the scenes and one RunRequest template shared by all."""

    path: Path
    name: str
    scenes: tuple[str, ...]
    model: ModelSpec
    classes: ClassList
    output_root: Path
    cluster: ClusterRequest
    gsd: float | None = None
    block_size: int = 2048
    bands: tuple[int, ...] | None = None
    stretch: tuple[float, float] | None = None
    variable: str | None = None
    save_confidence: bool = False

    @classmethod
    def load(cls, path: str | os.PathLike) -> JobSpecFile:
        """Read and validate ``path``; a UserError names the key at fault."""
        path = Path(path)
        data = read_yaml(path, "job spec")
        r = _Reader(path)
        if not isinstance(data, dict):
            raise UserError(f"job spec {path}: expected a mapping of {', '.join(_TOP_KEYS)}")
        top = r.mapping("", data, _TOP_KEYS)
        for key in ("scenes", "output_root"):
            if top.get(key) is None:
                raise r.error(key, "is required")

        name = r.string("name", top["name"]) if top.get("name") is not None else path.stem
        output_root = r.local_path("output_root", top["output_root"]).absolute()
        model = _model_spec(r, r.mapping("model", top.get("model"), _MODEL_KEYS))
        classes = _classes(r, top, model.cfg.prob_thd)
        run = r.mapping("run", top.get("run"), _RUN_KEYS)
        cluster = _cluster(r, top.get("cluster"))
        scenes = _scenes(r, top["scenes"], output_root)

        gsd = None
        if run.get("gsd") is not None:
            gsd = r.number("run.gsd", run["gsd"])
            if gsd <= 0:
                raise r.error("run.gsd", "must be a positive pixel size in the scenes' CRS units")
        block_size = r.integer("run.block_size", run.get("block_size", 2048))
        if block_size % 512:
            raise r.error("run.block_size", f"must be a multiple of 512, got {block_size}")
        bands = None
        if run.get("bands") is not None:
            values = r.numbers("run.bands", run["bands"])
            if len(values) not in (1, 3) or not all(
                isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in values
            ):
                raise r.error("run.bands", "give 3 band numbers (R,G,B) or 1 (grey), 1-based")
            bands = tuple(values)
        stretch = None
        if run.get("stretch") is not None:
            values = r.numbers("run.stretch", run["stretch"])
            if len(values) != 2:
                raise r.error("run.stretch", "expected [LO, HI], e.g. [0, 3000]")
            lo, hi = (r.number("run.stretch", v) for v in values)
            if not hi > lo:
                raise r.error("run.stretch", "HI must be greater than LO")
            stretch = (lo, hi)
        variable = r.string("run.variable", run["variable"]) if run.get("variable") else None
        save_confidence = r.boolean("run.save_confidence", run.get("save_confidence", False))
        return cls(
            path=path.absolute(),
            name=name,
            scenes=scenes,
            model=model,
            classes=classes,
            output_root=output_root,
            cluster=cluster,
            gsd=gsd,
            block_size=block_size,
            bands=bands,
            stretch=stretch,
            variable=variable,
            save_confidence=save_confidence,
        )

    def store_for(self, scene: str) -> Path:
        """``<output_root>/<scene stem>.labels.zarr``."""
        return self.output_root / default_out(scene).name

    def request(self, scene: str, resume: bool = False) -> RunRequest:
        return RunRequest(
            scene=scene,
            model=self.model,
            classes=self.classes,
            out=self.store_for(scene),
            gsd=self.gsd,
            block_size=self.block_size,
            bands=self.bands,
            stretch=self.stretch,
            variable=self.variable,
            cluster=self.cluster,
            save_confidence=self.save_confidence,
            resume=resume,
        )


def load_job_spec(path: str | os.PathLike) -> JobSpecFile:
    return JobSpecFile.load(path)


def _model_spec(r: _Reader, model: dict[str, Any]) -> ModelSpec:
    from workers.config import MethodConfig, load_config

    method = r.string("model.method", model["method"]) if model.get("method") else None
    clip_weights = r.string("model.clip_weights", model.get("clip_weights", "openai"))
    if clip_weights not in ("openai", "random"):
        clip_weights = str(r.local_path("model.clip_weights", clip_weights))
    upsampler = r.string("model.upsampler", model.get("upsampler", "jbu_one"), _UPSAMPLERS)
    upsampler_weights = None
    if model.get("upsampler_weights") is not None:
        upsampler_weights = str(r.local_path("model.upsampler_weights", model["upsampler_weights"]))
    device = r.string("model.device", model.get("device", "auto"), _DEVICES)
    prob_thd = None
    if model.get("prob_thd") is not None:
        prob_thd = r.number("model.prob_thd", model["prob_thd"])

    config = model.get("config")
    config_file = None
    overrides: dict[str, Any] = {}
    if isinstance(config, str):
        config_file = r.local_path("model.config", config)
    elif config is not None:
        known = tuple(f.name for f in dataclasses.fields(MethodConfig))
        overrides = dict(r.mapping("model.config", config, known))
    overrides |= {k: v for k, v in (("method", method), ("prob_thd", prob_thd)) if v is not None}
    try:
        cfg = load_config(config_file, (), overrides=overrides)
    except UserError as exc:
        raise r.error("model.config" if config is not None else "model", str(exc)) from None
    return ModelSpec(
        clip_weights=clip_weights,
        upsampler=upsampler,
        upsampler_weights=upsampler_weights,
        cfg=cfg,
        device=device,
    )


def _classes(r: _Reader, top: dict[str, Any], prob_thd: float) -> ClassList:
    classes, classes_file = top.get("classes"), top.get("classes_file")
    add_background = not r.boolean("no_background", top.get("no_background", False))
    if classes is not None and classes_file is not None:
        raise r.error("classes", "give either 'classes' or 'classes_file', not both")
    key = "classes_file" if classes_file is not None else "classes"
    try:
        if classes_file is not None:
            class_list = parse_classes(None, r.local_path(key, classes_file), add_background)
        elif isinstance(classes, str):
            class_list = parse_classes(classes, None, add_background)
        elif isinstance(classes, list) and classes:
            groups = []
            for item in classes:
                if isinstance(item, str):
                    groups.append([s.strip() for s in item.split("/")])
                elif isinstance(item, list) and all(isinstance(s, str) for s in item):
                    groups.append([s.strip() for s in item])
                else:
                    raise r.error(key, f"each class is a name or a list of synonyms, got {item!r}")
            class_list = build_class_list(groups, add_background)
        else:
            raise r.error(
                key,
                'required: "building,road/street,water" or a list of classes (or synonym lists)',
            )
    except UserError as exc:
        if str(exc).startswith("job spec "):
            raise
        raise r.error(key, str(exc)) from None
    if prob_thd > 0 and class_list.background_index is None:
        raise r.error(
            "no_background",
            f"prob_thd {prob_thd} needs a background class and none is left: drop "
            "no_background, name a class 'background', or set model.prob_thd: 0",
        )
    return class_list


def _cluster(r: _Reader, value: Any) -> ClusterRequest:
    cluster = r.mapping("cluster", value, _CLUSTER_KEYS)
    given = [k for k in _CLUSTER_KEYS if k in cluster]
    if len(given) > 1:
        raise r.error(f"cluster.{given[1]}", f"give one of {', '.join(_CLUSTER_KEYS)}, not both")
    if "scheduler" in cluster:
        return ClusterRequest(scheduler=r.string("cluster.scheduler", cluster["scheduler"]))
    if "scheduler_file" in cluster:
        return ClusterRequest(
            scheduler_file=r.local_path("cluster.scheduler_file", cluster["scheduler_file"])
        )
    local = r.mapping("cluster.local", cluster.get("local"), _LOCAL_KEYS)
    return ClusterRequest(
        workers=r.integer("cluster.local.workers", local["workers"])
        if local.get("workers") is not None
        else None,
        threads_per_worker=r.integer(
            "cluster.local.threads_per_worker", local["threads_per_worker"]
        )
        if local.get("threads_per_worker") is not None
        else None,
    )


def _scenes(r: _Reader, value: Any, output_root: Path) -> tuple[str, ...]:
    scenes = r.mapping("scenes", value, _SCENE_KEYS)
    given = [k for k in _SCENE_KEYS if k in scenes]
    if len(given) != 1:
        raise r.error("scenes", f"give exactly one of {', '.join(_SCENE_KEYS)}")
    kind = given[0]
    key = f"scenes.{kind}"
    if kind == "list":
        items = scenes["list"]
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise r.error(key, "expected a list of paths or URLs")
        uris = [r.uri(s, r.base) for s in items if s.strip()]
    elif kind == "glob":
        pattern = str(r.local_path(key, scenes["glob"]))
        root = output_root.resolve()
        uris = [
            str(Path(p).absolute())
            for p in sorted(glob.glob(pattern, recursive=True))
            if root not in Path(p).resolve().parents  # never the job's own outputs
        ]
        if not uris:
            raise r.error(key, f"{pattern!r} matched no scenes; check the pattern")
    else:
        url_file = r.local_path(key, scenes["url_file"])
        try:
            lines = url_file.read_text().splitlines()
        except OSError as exc:
            raise r.error(key, f"cannot read {url_file} ({exc.strerror or exc})") from None
        texts = [line.strip() for line in lines]
        uris = [r.uri(t, url_file.absolute().parent) for t in texts if t and not t.startswith("#")]
    uris = list(dict.fromkeys(uris))  # the same scene twice is mapped once
    if not uris:
        raise r.error(key, "names no scenes")
    stores: dict[str, str] = {}
    for uri in uris:
        name = default_out(uri).name
        if name in stores:
            raise r.error(
                key,
                f"{stores[name]} and {uri} would both write {name} in the output root; "
                "rename one of them or map them in separate jobs",
            )
        stores[name] = uri
    return tuple(uris)


# ----------------------------------------------------------------------------- footprints


def footprint(
    transform: Any, height: int, width: int, crs_wkt: str | None
) -> dict[str, Any] | None:
    """The scene's outline as a GeoJSON geometry in EPSG:4326 (lon, lat), or None without
    a CRS. Edges are densified before reprojection so that they follow the true outline."""
    if not crs_wkt:
        return None
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    t = Affine(*transform[:6])
    n = FOOTPRINT_EDGE_POINTS
    ring_px = (
        [(width * i / n, 0.0) for i in range(n)]
        + [(float(width), height * i / n) for i in range(n)]
        + [(width * (n - i) / n, float(height)) for i in range(n)]
        + [(0.0, height * (n - i) / n) for i in range(n)]
    )
    ring = [t @ p for p in ring_px]
    ring.append(ring[0])
    geom = {"type": "Polygon", "coordinates": [ring]}
    return transform_geom(CRS.from_wkt(crs_wkt), "EPSG:4326", geom, precision=9)


def _bbox(geom: dict[str, Any] | None) -> list[float] | None:
    if geom is None:
        return None
    coords: list[tuple[float, float]] = []

    def walk(c: Any) -> None:
        if c and isinstance(c[0], int | float):
            coords.append((c[0], c[1]))
        else:
            for item in c:
                walk(item)

    walk(geom["coordinates"])
    xs, ys = [c[0] for c in coords], [c[1] for c in coords]
    return [min(xs), min(ys), max(xs), max(ys)]


def _store_facts(path: Path) -> dict[str, Any]:
    """What an existing store says about itself (nothing when there is none)."""
    if not (path / ".zgroup").exists():
        return {}
    attrs = store.read_attrs(path)
    facts: dict[str, Any] = {
        "complete": bool(attrs.get("complete")),
        "run_fingerprint": attrs.get("run_fingerprint"),
    }
    with contextlib.suppress(Exception):  # an old or damaged store: no block counts
        import zarr

        done = zarr.open_array(str(path / store.BLOCK_DONE), mode="r", zarr_format=2)
        facts["blocks"] = int(done.size)
        facts["blocks_done"] = len(store.done_blocks(path))
    shape = attrs.get("spatial:shape")
    transform = attrs.get("spatial:transform")
    if shape and transform:
        geom = footprint(transform, shape[0], shape[1], attrs.get("proj:wkt2"))
        facts["footprint"] = geom
    return facts


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class SceneEntry:
    """One scene's line in the index and the summary."""

    uri: str
    store: str
    status: str = "pending"
    message: str | None = None
    blocks: int | None = None  # blocks in the store
    blocks_done: int | None = None  # blocks with a completion record after this run
    computed: int = 0  # blocks computed in this run
    crops: int = 0  # crops run in this run
    seconds: float = 0.0
    run_fingerprint: str | None = None
    complete: bool = False
    footprint: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """For index.json and summary.json: everything but the geometry, plus its bbox."""
        out = dataclasses.asdict(self)
        out["bbox"] = _bbox(out.pop("footprint"))
        return out

    def feature(self) -> dict[str, Any]:
        props = dataclasses.asdict(self)
        geometry = props.pop("footprint")
        return {"type": "Feature", "geometry": geometry, "properties": props}


@dataclasses.dataclass(frozen=True)
class JobReport:
    scenes: list[SceneEntry]
    counts: dict[str, int]
    seconds: float
    summary: Path
    index: Path

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, UserError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader (cron, Airflow) never sees a torn file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _counts(entries: list[SceneEntry]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for entry in entries:
        counts[entry.status] = counts.get(entry.status, 0) + 1
    return counts


def write_index(spec: JobSpecFile, entries: list[SceneEntry]) -> Path:
    root = spec.output_root
    head = {"job": spec.name, "spec": str(spec.path), "updated": _now()}
    _write_json(
        root / INDEX_JSON,
        {
            **head,
            "output_root": str(root),
            "counts": _counts(entries),
            "scenes": [e.record() for e in entries],
        },
    )
    _write_json(
        root / INDEX_GEOJSON,
        {"type": "FeatureCollection", **head, "features": [e.feature() for e in entries]},
    )
    return root / INDEX_JSON


@contextlib.contextmanager
def _job_lock(root: Path) -> Iterator[None]:
    """One run per output root at a time (cron may start a run before the last ends)."""
    with open(root / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"another job run is writing to {root} (it holds {LOCK_FILE}); "
                "wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {_now()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _LazyConnection:
    """Connect to the cluster on first use, once; a failure fails every later use at once."""

    def __init__(self, request: ClusterRequest, stack: contextlib.ExitStack) -> None:
        self.request, self.stack = request, stack
        self.connection: tuple[Any, ClusterInfo] | None = None
        self.error: UserError | None = None

    def __call__(self) -> tuple[Any, ClusterInfo]:
        if self.error is not None:
            raise self.error
        if self.connection is None:
            try:
                self.connection = self.stack.enter_context(connect(self.request))
            except UserError as exc:
                self.error = exc
                raise
        return self.connection


def _map_scene(
    spec: JobSpecFile,
    entry: SceneEntry,
    weights: dict[str, Any],
    connection: _LazyConnection,
) -> None:
    """Skip, resume or map one scene; a failure is recorded on ``entry``, never raised."""
    out = Path(entry.store)
    request = spec.request(entry.uri)
    start = time.perf_counter()
    try:
        resume = False
        if (out / ".zgroup").exists():
            attrs = store.read_attrs(out)
            scene, _, model_gsd = plan(request)
            if attrs.get("run_fingerprint") != run_fingerprint(scene, request, model_gsd, weights):
                raise UserError(
                    f"{out} holds labels of a different run (the scene file, classes, model "
                    "or run settings changed since it was written); it is left as it is: "
                    "move or delete it to map this scene again"
                )
            if attrs.get("complete"):
                entry.status = "skipped"
                return
            resume = True
        elif connection.connection is None:
            plan(request)  # a scene that cannot be opened needs no cluster
        result = run_scene(dataclasses.replace(request, resume=resume), connection=connection())
        entry.status = "resumed" if resume else "done"
        entry.computed, entry.crops = result.computed, result.crops
    except Exception as exc:
        entry.status, entry.message = "failed", _one_line(exc)
        log.debug("scene %s failed", entry.uri, exc_info=True)
    finally:
        entry.seconds = round(time.perf_counter() - start, 3)
        try:
            facts = _store_facts(out)
        except Exception as exc:  # a path that is not a store: say so, keep going
            facts = {}
            log.debug("cannot read %s: %s", out, exc)
        for key, value in facts.items():
            setattr(entry, key, value)


def run_job(spec: JobSpecFile, summary_path: Path | None = None) -> JobReport:
    """Map every scene of ``spec``; write the index (after each scene) and the summary."""
    started, start = _now(), time.perf_counter()
    root = spec.output_root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"job spec {spec.path}: 'output_root': cannot create {root} ({exc.strerror or exc})"
        ) from None
    summary_path = Path(summary_path) if summary_path else root / SUMMARY_JSON
    with _job_lock(root):
        try:
            weights = describe_weights(spec.model)  # once; a missing file fails the job
        except UserError as exc:
            raise UserError(f"job spec {spec.path}: 'model': {exc}") from None
        entries = [SceneEntry(uri=s, store=str(spec.store_for(s))) for s in spec.scenes]
        index = write_index(spec, entries)
        with contextlib.ExitStack() as stack:
            connection = _LazyConnection(spec.cluster, stack)
            for i, entry in enumerate(entries, 1):
                log.info("job %s: scene %d/%d %s", spec.name, i, len(entries), entry.uri)
                _map_scene(spec, entry, weights, connection)
                log.info(
                    "job %s: scene %d/%d %s: %s%s (%.1f s)", spec.name, i, len(entries),
                    entry.uri, entry.status, f": {entry.message}" if entry.message else "",
                    entry.seconds,
                )  # fmt: skip
                write_index(spec, entries)
        counts = _counts(entries)
        seconds = round(time.perf_counter() - start, 3)
        summary = {
            "job": spec.name,
            "spec": str(spec.path),
            "software": "reattn-batch",
            "software_version": version("reattn-batch"),
            "started": started,
            "finished": _now(),
            "seconds": seconds,
            "output_root": str(root),
            "index": str(index),
            "index_geojson": str(root / INDEX_GEOJSON),
            "exit_status": 1 if counts["failed"] else 0,
            "counts": counts,
            "scenes": [e.record() for e in entries],
        }
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(summary_path, summary)
    return JobReport(entries, counts, seconds, summary_path, index)
