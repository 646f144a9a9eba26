"""A regional job's spec file (YAML; example in ``configs/jobs/example_region.yaml``).

It names the scenes (a list, a glob, or a file of URIs), the classes, the model, the run
settings, an output root and the cluster. Its ``model:``, ``run:`` and ``cluster:``
sections are the run settings schema of ``reattn_batch.settings``; every error names the spec
file and the dotted key. Relative paths (scenes, files, output root, weights, scheduler
file) are relative to the spec file's folder, so a job does not depend on the working
directory.

Loading lists the scenes and names their stores; it reads no scene and resolves no STAC
asset (a STAC Item of a ``list``, ``glob`` or ``url_file`` is read for its id only; a
static catalog's Items are not read, ``regional/catalogue.py``): a scene that cannot be
read fails alone when the job maps it. The file is read without YAML
aliases (``workers/config.py``: ``read_yaml``), and ``intersects`` has at most
:data:`MAX_INTERSECTS_VERTICES` vertices.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from reattn_batch.regional.catalogue import DEFAULT_MAX_ITEMS
from reattn_batch.regional.paths import check_output_root
from reattn_batch.run.request import SceneRequest, item_store_name, scene_store_name
from reattn_batch.settings import (
    CLIP_WEIGHT_NAMES,
    ClusterSettings,
    ModelSettings,
    SceneSettings,
    Settings,
    comma_list,
    require_background,
    settings_error,
)
from reattn_batch.workers.classes import ClassList, build_class_list, parse_classes
from reattn_batch.workers.config import read_yaml
from reattn_batch.workers.errors import InputError, UserError
from reattn_batch.workers.model_spec import ModelSpec

#: The most vertices (coordinate pairs, all rings and parts) of ``stac_search.intersects``.
MAX_INTERSECTS_VERTICES = 10_000


class StacSearchSection(Settings):
    """``scenes.stac_search``: Items of a STAC API search (pystac-client)."""

    url: str = Field(min_length=1)  # the API's root, e.g. https://earth-search.aws.element84.com/v1
    collections: list[str] | None = None
    bbox: tuple[float, float, float, float] | None = None  # lon/lat: west, south, east, north
    intersects: dict[str, Any] | None = None  # a GeoJSON geometry in lon/lat
    datetime: str | None = None  # an instant or a window, e.g. 2024-06-01/2024-08-31
    query: dict[str, Any] | None = None  # property filter, e.g. {eo:cloud_cover: {lt: 20}}
    max_items: StrictInt = Field(DEFAULT_MAX_ITEMS, ge=1)  # the search stops there (a warning)

    _split_collections = field_validator("collections", mode="before")(comma_list)

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None:
            west, south, east, north = value
            if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
                raise ValueError("expected [west, south, east, north] in degrees, west < east")
        return value

    @field_validator("intersects")
    @classmethod
    def _geometry(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import shapely.geometry

            try:
                geometry = shapely.geometry.shape(value)
            except Exception as exc:
                raise ValueError(f"not a GeoJSON geometry ({exc})") from None
            vertices = shapely.get_num_coordinates(geometry)
            if vertices > MAX_INTERSECTS_VERTICES:
                raise ValueError(
                    f"{vertices} vertices, more than {MAX_INTERSECTS_VERTICES}: simplify the "
                    "geometry (e.g. shapely's simplify) or give its bbox"
                )
        return value

    @field_validator("datetime")
    @classmethod
    def _datetime(cls, value: str | None) -> str | None:
        if value is not None:
            from pystac.utils import str_to_datetime

            for part in value.split("/"):
                if part not in ("", ".."):
                    try:
                        str_to_datetime(part)
                    except ValueError:
                        raise ValueError(
                            f"{part!r} is not an ISO 8601 date/time; e.g. 2024-06-01/2024-08-31"
                        ) from None
        return value

    @field_validator("query")
    @classmethod
    def _query(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        ops = {"eq", "neq", "lt", "lte", "gt", "gte", "startsWith", "endsWith", "contains", "in"}
        for prop, test in (value or {}).items():
            if not isinstance(test, dict) or not test or set(test) - ops:
                raise ValueError(
                    f"{prop}: expected a mapping of operators ({', '.join(sorted(ops))}) "
                    "to values, e.g. {eo:cloud_cover: {lt: 20}}"
                )
        return value

    @model_validator(mode="after")
    def _one_area(self) -> StacSearchSection:
        if self.bbox is not None and self.intersects is not None:
            raise ValueError("give bbox or intersects, not both")
        return self


SCENE_SOURCES = ("list", "glob", "url_file", "stac_search", "stac_catalog")


class ScenesSection(Settings):
    """Exactly one of ``list``, ``glob``, ``url_file``, ``stac_search``, ``stac_catalog``."""

    items: list[str] | None = Field(None, alias="list")
    glob: str | None = None
    url_file: str | None = None
    stac_search: StacSearchSection | None = None
    stac_catalog: str | None = Field(None, min_length=1)  # a static catalog/collection JSON

    @model_validator(mode="after")
    def _exactly_one(self) -> ScenesSection:
        given = (self.items, self.glob, self.url_file, self.stac_search, self.stac_catalog)
        if sum(v is not None for v in given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SCENE_SOURCES)}")
        return self


class LocalClusterSection(Settings):
    workers: StrictInt | None = Field(None, ge=1)
    threads_per_worker: StrictInt | None = Field(None, ge=1)


class ClusterSection(Settings):
    """At most one of ``local``, ``scheduler``, ``scheduler_file`` (default: local)."""

    local: LocalClusterSection | None = None
    scheduler: str | None = None
    scheduler_file: str | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> ClusterSection:
        if sum(v is not None for v in (self.local, self.scheduler, self.scheduler_file)) > 1:
            raise ValueError("give one of local, scheduler, scheduler_file, not several")
        return self


ClassItem = str | list[str]


class JobFile(Settings):
    """The YAML file as written; :meth:`RegionalJob.load` resolves it."""

    name: str | None = None
    scenes: ScenesSection
    classes: str | list[ClassItem] | None = None
    classes_file: str | None = None
    no_background: StrictBool = False
    model: ModelSettings = ModelSettings()
    run: SceneSettings = SceneSettings()
    output_root: str
    cluster: ClusterSection = ClusterSection()


@dataclasses.dataclass(frozen=True)
class RegionalJob:
    """A validated regional job: its scenes and one model, class list and settings for all."""

    path: Path
    name: str
    scenes: tuple[str, ...]
    model: ModelSpec
    classes: ClassList
    output_root: Path
    cluster: ClusterSettings
    settings: SceneSettings
    #: each scene's store name under ``output_root`` (one path component)
    stores: Mapping[str, str]
    #: scenes that fail without being read, with their line (a catalogue named them badly)
    problems: Mapping[str, str]

    @classmethod
    def load(cls, path: str | os.PathLike) -> RegionalJob:
        """Read and validate ``path``; a UserError names the key at fault."""
        path = Path(path)
        data = read_yaml(path, "job spec")
        if not isinstance(data, dict):
            raise InputError(f"job spec {path}: expected a mapping of {', '.join(_top_keys())}")
        try:
            raw = JobFile.model_validate(data)
        except ValidationError as exc:
            raise settings_error(exc, _key_namer(path), JobFile) from None
        spec = _Resolver(path)
        output_root = spec.local("output_root", raw.output_root).absolute()
        model = spec.model(raw.model)
        classes = spec.classes(raw, model.cfg.prob_thd)
        cluster = spec.cluster(raw.cluster)
        scenes, stores, problems = spec.scenes(raw.scenes, output_root)
        try:
            check_output_root(output_root, scenes)
        except UserError as exc:
            raise spec.error("output_root", str(exc)) from None
        return cls(
            path=path.absolute(),
            name=raw.name.strip() if raw.name and raw.name.strip() else path.stem,
            scenes=scenes,
            model=model,
            classes=classes,
            output_root=output_root,
            cluster=cluster,
            settings=raw.run,
            stores=stores,
            problems=problems,
        )

    def store_for(self, scene: str) -> Path:
        """``<output_root>/<scene stem>.labels.zarr`` (a STAC Item's: ``<item id>``, made
        one safe path component): the name ``stores`` holds for each of the job's scenes."""
        return self.output_root / self.stores[scene]

    def request(self, scene: str, resume: bool = False) -> SceneRequest:
        """The scene's request; an InputError where the job knows the scene cannot be
        mapped (``problems``)."""
        if scene in self.problems:
            raise InputError(self.problems[scene])
        return SceneRequest(
            scene=scene,
            model=self.model,
            classes=self.classes,
            out=self.store_for(scene),
            settings=self.settings,
            cluster=self.cluster,
            resume=resume,
        )


def _top_keys() -> list[str]:
    return list(JobFile.model_fields)


def _key_namer(path: Path):
    """loc -> "job spec F: 'model.method'" (pydantic's union-member parts left out)."""

    def name(loc: tuple) -> str:
        parts = [
            "list" if p == "items" else str(p)
            for p in loc
            if isinstance(p, str) and not any(c in p for c in "[](),") and p not in _TYPE_PARTS
        ]
        return f"job spec {path}: '{'.'.join(parts)}'"

    return name


_TYPE_PARTS = {"str", "int", "float", "bool", "list", "dict", "function-after"}


class _Resolver:
    """Turns the file's values into paths, scenes, classes; errors name the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.absolute().parent

    def error(self, key: str, why: str) -> UserError:
        return InputError(f"job spec {self.path}: '{key}': {why}")

    def local(self, key: str, value: str | Path, base: Path | None = None) -> Path:
        """A local path; relative paths are relative to the spec file's folder."""
        if not str(value).strip():
            raise self.error(key, "expected a non-empty path")
        path = Path(str(value).strip()).expanduser()
        return path if path.is_absolute() else (base or self.base) / path

    def uri(self, value: str, base: Path) -> str:
        """A scene: URLs and GDAL /vsi paths as written; local paths made absolute."""
        value = value.strip()
        if value.startswith("zarr://"):
            rest = value[len("zarr://") :]
            return value if "://" in rest else "zarr://" + str(self.local("scenes", rest, base))
        if "://" in value or value.startswith("/vsi"):
            return value
        return str(self.local("scenes", value, base))

    def model(self, model: ModelSettings) -> ModelSpec:
        changes: dict[str, Any] = {}
        if model.clip_weights not in CLIP_WEIGHT_NAMES:
            changes["clip_weights"] = str(self.local("model.clip_weights", model.clip_weights))
        if model.upsampler_weights is not None:
            changes["upsampler_weights"] = self.local(
                "model.upsampler_weights", model.upsampler_weights
            )
        if isinstance(model.config, Path):
            changes["config"] = self.local("model.config", model.config)
        try:
            return model.model_copy(update=changes).model_spec()
        except UserError as exc:
            key = "model.config" if model.config is not None else "model"
            raise self.error(key, str(exc)) from None

    def classes(self, raw: JobFile, prob_thd: float) -> ClassList:
        if raw.classes is not None and raw.classes_file is not None:
            raise self.error("classes", "give either 'classes' or 'classes_file', not both")
        key = "classes_file" if raw.classes_file is not None else "classes"
        add_background = not raw.no_background
        try:
            if raw.classes_file is not None:
                path = self.local(key, raw.classes_file)
                class_list = parse_classes(None, path, add_background)
            elif isinstance(raw.classes, str):
                class_list = parse_classes(raw.classes, None, add_background)
            elif raw.classes:
                groups = [
                    [s.strip() for s in (item.split("/") if isinstance(item, str) else item)]
                    for item in raw.classes
                ]
                class_list = build_class_list(groups, add_background)
            else:
                raise self.error(
                    key,
                    'required: "building,road/street,water" or a list of classes '
                    "(or synonym lists)",
                )
        except UserError as exc:
            if str(exc).startswith("job spec "):
                raise
            raise self.error(key, str(exc)) from None
        fix = "drop no_background, name a class 'background', or set model.prob_thd: 0"
        try:
            require_background(class_list, prob_thd, fix)
        except UserError as exc:
            raise self.error("no_background", str(exc)) from None
        return class_list

    def cluster(self, cluster: ClusterSection) -> ClusterSettings:
        if cluster.scheduler is not None:
            return ClusterSettings(scheduler=cluster.scheduler.strip())
        if cluster.scheduler_file is not None:
            path = self.local("cluster.scheduler_file", cluster.scheduler_file)
            return ClusterSettings(scheduler_file=path)
        local = cluster.local or LocalClusterSection()
        return ClusterSettings(workers=local.workers, threads_per_worker=local.threads_per_worker)

    def scenes(
        self, scenes: ScenesSection, output_root: Path
    ) -> tuple[tuple[str, ...], dict[str, str], dict[str, str]]:
        """(the scenes, each one's store name, the problems known of some)."""
        from reattn_batch.regional.catalogue import catalog_items, search_items, store_texts

        listed = None
        if scenes.stac_search is not None:
            key = "scenes.stac_search"
            try:
                listed = search_items(scenes.stac_search)
            except UserError as exc:
                raise self.error(key, str(exc)) from None
        elif scenes.stac_catalog is not None:
            key = "scenes.stac_catalog"
            href = self.uri(scenes.stac_catalog, self.base)
            try:
                listed = catalog_items(href)
            except UserError as exc:
                raise self.error(key, str(exc)) from None
        elif scenes.items is not None:
            key = "scenes.list"
            uris = [self.uri(s, self.base) for s in scenes.items if s.strip()]
        elif scenes.glob is not None:
            key = "scenes.glob"
            pattern = str(self.local(key, scenes.glob))
            root = output_root.resolve()
            matches = sorted(glob.glob(pattern, recursive=True))
            uris = [
                str(Path(p).absolute())
                for p in matches
                if root not in Path(p).resolve().parents  # never the job's own outputs
            ]
            if matches and not uris:
                raise self.error(
                    key,
                    f"{pattern!r} matched only files under output_root {root}, which the job "
                    "skips as its own outputs; pass an output_root outside the scenes' folder",
                )
            if not uris:
                raise self.error(key, f"{pattern!r} matched no scenes; check the pattern")
        else:
            key = "scenes.url_file"
            url_file = self.local(key, scenes.url_file)
            try:
                lines = url_file.read_text().splitlines()
            except OSError as exc:
                raise self.error(key, f"cannot read {url_file} ({exc.strerror or exc})") from None
            texts = [line.strip() for line in lines]
            folder = url_file.absolute().parent
            uris = [self.uri(t, folder) for t in texts if t and not t.startswith("#")]
        names: dict[str, str] = {}
        problems: dict[str, str] = {}
        if listed is not None:  # named from what the catalogue listed
            for href, text in store_texts(listed).items():
                names[href] = item_store_name(text)
            problems.update({item.href: item.problem for item in listed if item.problem})
        else:
            for uri in dict.fromkeys(uris):  # the same scene twice is mapped once
                names[uri], problem = _store_name(uri)
                if problem:
                    problems[uri] = problem
        if not names:
            raise self.error(key, "names no scenes")
        writers: dict[str, str] = {}
        for uri, name in names.items():
            if name in writers:
                raise self.error(
                    key,
                    f"{writers[name]} and {uri} would both write {name} in the output root; "
                    "rename one of them or map them in separate jobs",
                )
            writers[name] = uri
        return tuple(names), names, problems


def _store_name(uri: str) -> tuple[str, str | None]:
    """(the store name of a listed scene, a problem that fails it): a STAC Item is read
    for its id (only); one that cannot be read is named after its file and fails alone."""
    from reattn_batch.scene.stac_item import is_stac_item, item_location, read_item

    if not is_stac_item(uri):
        return scene_store_name(uri), None
    try:
        return item_store_name(read_item(item_location(uri)).id), None
    except UserError as exc:
        return scene_store_name(uri.removesuffix(".json")), str(exc)
