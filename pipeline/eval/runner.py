"""`eval`: a model setting over a labelled dataset -> one confusion matrix (SPEC 4).

Per image: read RGB (OpenCV, as mmcv) and label (Pillow, as mmseg; reduce_zero_label),
resize the long side to 448 exactly as mmcv's imrescale, crops 224/112, mean logits
bilinearly back to the image size (``segment_array``), labels, and a (C + 1, C)
count matrix (reattn_batch.eval.metrics) that is summed over the dataset.

Two ways to run the images of one setting:
- local: the segmenter is built once and reused for every image; the next image and
  label are read in a thread while the current one runs;
- Dask (``--scheduler``): one task per image on the workers' cached model
  (reattn_batch.workers.model_cache), the text embeddings computed once by a task of their own;
  tasks return the image's counts (and its prediction when it is to be saved, written
  here). Submission is bounded, so a dataset of any size does not flood the scheduler.
Image and label paths must be readable by the workers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reattn_batch.eval.datasets import Sample, read_label
from reattn_batch.eval.metrics import confusion_matrix
from reattn_batch.eval.pooled import pooled_segmentations
from reattn_batch.image.io import read_rgb, rescaled_size, write_label_png
from reattn_batch.image.segment import Segmentation, segment_array
from reattn_batch.report import Clock, TimedSegmenter, model_facts
from reattn_batch.workers.classes import ClassList
from reattn_batch.workers.errors import InputError, UserError
from reattn_batch.workers.model_spec import ModelSpec, assemble_segmenter, load_model_parts
from reattn_batch.workers.postprocess import labels_from_logits
from reattn_batch.workers.segmenter import Segmenter
from reattn_batch.workers.sliding import crop_grid
from reattn_batch.workers.text import query_embeddings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LabelRules:
    """How ground truth is read and scored."""

    num_classes: int
    reduce_zero_label: bool = False
    ignore_index: int = 255


@dataclasses.dataclass(frozen=True)
class Setting:
    """One model setting of a run (a grid row, or the single setting)."""

    name: str
    spec: ModelSpec
    overrides: dict  # the config keys this setting changes (grid rows), for the record
    reported: dict  # dataset key -> mIoU (percent) the paper reports for this row


@dataclasses.dataclass(frozen=True)
class ImageTask:
    """What one image's evaluation needs besides the model; small and picklable."""

    classes: ClassList
    rules: LabelRules
    long_side: int | None
    want_prediction: bool
    torch_threads: int = 0


@dataclasses.dataclass
class SettingResult:
    """counts: (C + 1, C) int64 summed over ``images`` images; seconds: wall time."""

    setting: Setting
    counts: np.ndarray
    images: int
    seconds: float
    clock: Clock | None = None  # --report: phases and facts


def load_sample(sample: Sample, rules: LabelRules) -> tuple[np.ndarray, np.ndarray]:
    """-> (rgb (H, W, 3) uint8, truth (h, w) uint8 after reduce_zero_label)."""
    return read_rgb(sample.image), read_label(sample.label, rules.reduce_zero_label)


@torch.no_grad()
def predict(
    segmenter: Segmenter,
    classes: ClassList,
    rgb: np.ndarray,
    label_shape: tuple[int, int],
    long_side: int | None,
) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w) uint8 class indices at the label's size.

    ``segment_array`` resizes the logits to the image size; where a label's size
    differs (not in the reference protocol, which needs them equal), the image-size
    logits are resized again, bilinearly with align_corners=False, to the label size.
    """
    return labels_at(segmenter, classes, segment_array(segmenter, classes, rgb, long_side),
                     label_shape)  # fmt: skip


def labels_at(
    segmenter: Segmenter,
    classes: ClassList,
    result: Segmentation,
    label_shape: tuple[int, int],
) -> np.ndarray:
    """A Segmentation's (h, w) uint8 labels at the label's size (see ``predict``)."""
    if result.labels.shape == tuple(label_shape):
        return result.labels
    logits = F.interpolate(
        torch.from_numpy(result.logits)[None], size=label_shape, mode="bilinear",
        align_corners=False,
    )[0]  # fmt: skip
    cfg = segmenter.cfg
    labels, _ = labels_from_logits(
        logits, classes.query_class, len(classes.synonyms), cfg.logit_scale, cfg.prob_thd,
        classes.background_index,
    )  # fmt: skip
    return labels.numpy()


def score_image(
    segmenter: Segmenter, task: ImageTask, rgb: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """-> (counts (C + 1, C) int64, prediction (h, w) uint8)."""
    pred = predict(segmenter, task.classes, rgb, truth.shape, task.long_side)
    return score(task, truth, pred), pred


def score(task: ImageTask, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(C + 1, C) int64 counts of one image."""
    rules = task.rules
    return confusion_matrix(truth, pred, rules.num_classes, rules.ignore_index)


def image_task(
    spec: ModelSpec, queries: np.ndarray, task: ImageTask, sample: Sample
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Dask task: one image on this worker's cached model -> (counts, prediction or None,
    timing). ``timing``: seconds of ``load`` (the cached model, the image and its label)
    and ``model`` (pixels to logits), ``crops_run``, and the model facts for --report."""
    from reattn_batch.workers.model_cache import segmenter_for

    if task.torch_threads and torch.get_num_threads() != task.torch_threads:
        torch.set_num_threads(task.torch_threads)  # Dask sets OMP_NUM_THREADS=1 in workers
    start = time.perf_counter()
    segmenter = TimedSegmenter(segmenter_for(spec, queries))
    rgb, truth = load_sample(sample, task.rules)
    loaded = time.perf_counter() - start
    counts, pred = score_image(segmenter, task, rgb, truth)
    timing = {
        "load": loaded, "model": segmenter.model_seconds,
        "crops_run": _crops(rgb, task, spec), **model_facts(segmenter),
    }  # fmt: skip
    return counts, (pred if task.want_prediction else None), timing


def _prefetched(samples: list[Sample], rules: LabelRules) -> Iterator[tuple[Sample, tuple]]:
    """Yield (sample, (rgb, truth)) with the next pair already being read in a thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-read") as pool:
        future = pool.submit(load_sample, samples[0], rules) if samples else None
        for i, sample in enumerate(samples):
            loaded = future.result()
            if i + 1 < len(samples):
                future = pool.submit(load_sample, samples[i + 1], rules)
            yield sample, loaded


OnImage = Callable[[Sample, np.ndarray | None], None]


def run_local(
    setting: Setting, samples: list[Sample], task: ImageTask, on_image: OnImage, clock: Clock
) -> np.ndarray:
    """All images in this process with one segmenter -> summed (C + 1, C) counts.

    batch_size 1 (CPU): image by image; larger (CUDA): crops of consecutive images share
    full batches (pipeline/eval/pooled.py)."""
    spec = setting.spec
    with clock.phase("load"):
        parts = load_model_parts(spec)
    with clock.phase("text"):
        queries = query_embeddings(parts[0], task.classes.queries)
    with clock.phase("load"):
        segmenter = TimedSegmenter(assemble_segmenter(spec, parts, queries))
    c = task.rules.num_classes
    total = np.zeros((c + 1, c), dtype=np.int64)
    truths: dict[int, tuple[Sample, np.ndarray]] = {}

    def images() -> Iterator[tuple[int, np.ndarray]]:
        loaded = _prefetched(samples, task.rules)
        for index in range(len(samples)):
            with clock.phase("load"):
                sample, (rgb, truth) = next(loaded)
            clock.facts["crops_run"] = clock.facts.get("crops_run", 0) + _crops(rgb, task, spec)
            truths[index] = sample, truth
            yield index, rgb

    if segmenter.batch_size > 1:
        results = pooled_segmentations(segmenter, task.classes, images(), task.long_side)
    else:
        results = (
            (i, segment_array(segmenter, task.classes, rgb, task.long_side)) for i, rgb in images()
        )
    for index, result in results:
        sample, truth = truths.pop(index)
        pred = labels_at(segmenter, task.classes, result, truth.shape)
        total += score(task, truth, pred)
        with clock.phase("write"):
            on_image(sample, pred if task.want_prediction else None)
    clock.add("model", segmenter.model_seconds)
    clock.facts |= model_facts(segmenter)
    return total


def _crops(rgb: np.ndarray, task: ImageTask, spec: ModelSpec) -> int:
    """Crops of one image's model input."""
    h, w = rgb.shape[:2]
    if task.long_side:
        h, w = rescaled_size(h, w, task.long_side)
    return len(crop_grid(h, w, spec.cfg.crop, spec.cfg.stride))


def run_dask(
    setting: Setting,
    samples: list[Sample],
    task: ImageTask,
    on_image: OnImage,
    clock: Clock,
    client,
    info,
) -> np.ndarray:
    """One task per image on a connected Dask cluster -> summed (C + 1, C) counts.

    ``clock`` gets the workers' seconds summed over tasks (they overlap in time across
    workers and threads) and this process's ``write``."""
    import operator

    from reattn_batch.run.bounded import bounded_as_completed, window_for
    from reattn_batch.workers.model_cache import embed_queries_timed

    c = task.rules.num_classes
    total = np.zeros((c + 1, c), dtype=np.int64)
    resources = {"GPU": 1} if info.gpu_resources else None
    task = dataclasses.replace(task, torch_threads=info.torch_threads)
    spec = setting.spec
    run = uuid.uuid4().hex[:12]  # keys unique to this run: a shared scheduler may hold others
    text = client.submit(
        embed_queries_timed, spec, task.classes.queries, resources=resources,
        key=f"eval-text-{run}",
    )  # fmt: skip
    queries = client.submit(
        operator.itemgetter(0), text, resources=resources, key=f"eval-queries-{run}"
    )
    owner: dict[str, Sample] = {}

    def submit(index: int, sample: Sample):
        future = client.submit(
            image_task, spec, queries, task, sample, resources=resources,
            key=f"eval-{run}-{index}",
        )  # fmt: skip
        owner[future.key] = sample
        return future

    finished = bounded_as_completed(
        lambda item: submit(*item), enumerate(samples), window_for(info.total_threads)
    )
    for future in finished:
        sample = owner.pop(future.key)
        try:
            counts, pred, timing = future.result()
        except UserError:
            raise
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else ""
            raise InputError(
                f"{sample.image}: evaluation failed on a worker: {type(exc).__name__}: {reason}"
            ) from exc
        total += counts
        for phase in ("load", "model"):
            clock.add(phase, timing.pop(phase))
        clock.facts["crops_run"] = clock.facts.get("crops_run", 0) + timing.pop("crops_run")
        clock.facts |= timing
        with clock.phase("write"):
            on_image(sample, pred)
    for phase, seconds in text.result()[1].items():
        clock.add(phase, seconds)
    return total


class _Progress:
    """A log line every ``interval`` seconds and at the end."""

    def __init__(self, name: str, total: int, interval: float = 10.0) -> None:
        self.name, self.total, self.done = name, total, 0
        self.start = self.last = time.monotonic()
        self.interval = interval

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.interval or self.done == self.total:
            self.last = now
            per_image = (now - self.start) / self.done
            log.info("%s: %d/%d images, %.2f s/image", self.name, self.done, self.total, per_image)


def prediction_path(save_dir: Path, sample: Sample) -> Path:
    """Where a sample's prediction PNG goes: <save_dir>/<relative stem>.png."""
    return save_dir / f"{sample.name}.png"


def run_setting(
    setting: Setting,
    samples: list[Sample],
    task: ImageTask,
    save_dir: Path | None = None,
    dask: tuple | None = None,
) -> SettingResult:
    """Evaluate one setting over ``samples``: locally, or on ``dask`` = (client, ClusterInfo)."""
    task = dataclasses.replace(task, want_prediction=save_dir is not None)
    progress = _Progress(setting.name, len(samples))
    start = time.perf_counter()
    clock = Clock()

    def on_image(sample: Sample, pred: np.ndarray | None) -> None:
        if save_dir is not None and pred is not None:
            path = prediction_path(save_dir, sample)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_label_png(path, pred)
        progress.step()

    if dask is None:
        counts = run_local(setting, samples, task, on_image, clock)
    else:
        counts = run_dask(setting, samples, task, on_image, clock, *dask)
    return SettingResult(setting, counts, len(samples), time.perf_counter() - start, clock)


def run_settings(
    settings: list[Setting],
    samples: list[Sample],
    task: ImageTask,
    save_dir: Path | None = None,
    cluster=None,
) -> list[SettingResult]:
    """Every setting in turn; ``cluster`` (a reattn_batch.settings.ClusterSettings) runs the
    images on Dask, connected once. With several settings, predictions go to
    <save_dir>/<setting name>/."""

    def where(setting: Setting) -> Path | None:
        if save_dir is None:
            return None
        return save_dir / setting.name if len(settings) > 1 else save_dir

    if cluster is None:
        return [run_setting(s, samples, task, where(s)) for s in settings]
    from reattn_batch.run.cluster import connect

    with connect(cluster) as (client, info):
        log.info("Dask dashboard: %s", info.dashboard)
        return [run_setting(s, samples, task, where(s), (client, info)) for s in settings]
