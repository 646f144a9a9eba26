"""What identifies a run (SPEC 3.3, 3.5): the run fingerprint, and the store attributes
that record it. A resumed or re-run store must match it; the attributes in
:data:`RUN_KEYS` say what differs when it does not.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from typing import Any

import torch

from reattn_batch.run.broadcast import run_on_workers
from reattn_batch.run.cluster import ClusterInfo
from reattn_batch.run.plan import Plan
from reattn_batch.run.request import SceneRequest
from reattn_batch.settings import FINGERPRINTED
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.model_spec import ModelSpec
from reattn_batch.workers.segmenter import autocast_dtype, resolve_device

# Store attributes that decide the labels; a resumed run must match them all.
RUN_KEYS = (
    "scene_identity", "bands", "stretch", "variable", "classes", "method", "hyperparameters",
    "upsampler", "weights", "model_gsd", "save_confidence", "precision",
)  # fmt: skip
#: Attributes the workers decide (known once connected, so not in the fingerprint, which
#: regional jobs compute without a cluster); ``--resume`` must match them as well.
WORKER_KEYS = ("precision",)
#: Names of the precisions blocks run in: plain fp32, or CUDA autocast fp16/bf16.
PRECISIONS = {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _precision_here(device: str, dtype: str) -> str | None:
    """The precision a block task of this process runs in (None: it has no such device)."""
    try:
        return PRECISIONS[autocast_dtype(dtype, resolve_device(device))]
    except UserError:
        return None


def worker_precision(client, info: ClusterInfo, model: ModelSpec) -> str:
    """The precision the block tasks will run in, as the workers that run them resolve
    ``dtype`` (``auto``: fp16 on CUDA, fp32 on CPU) and ``--device``; joined with ``+`` when
    the workers differ. Asks the workers only when it depends on them; workers that leave
    meanwhile are skipped (:func:`~reattn_batch.run.broadcast.run_on_workers`)."""
    device, dtype = model.device, model.cfg.dtype
    if device == "cpu" or dtype == "fp32":
        return "fp32"
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    able = [
        address
        for address, worker in workers.items()
        if not info.gpu_resources or (worker.get("resources") or {}).get("GPU", 0) >= 1
    ]
    answers = run_on_workers(
        client, _precision_here, device, dtype, workers=able, what="the precision query"
    )
    found = {p for p in answers.values() if p}
    if not found:  # no worker (left), or none has the device: as resolved here
        found = {
            _precision_here(device, dtype)
            or PRECISIONS[autocast_dtype(dtype, torch.device(device))]
        }
    return "+".join(sorted(found))


def _resolved_settings(request: SceneRequest, plan: Plan) -> dict[str, Any]:
    """The fingerprinted settings as the scene resolved them (default bands, stretch)."""
    values = request.settings.model_dump(include=set(FINGERPRINTED))
    values |= {"bands": plan.scene.bands, "stretch": plan.scene.stretch}
    values["variable"] = plan.scene.variable
    return {key: values[key] for key in FINGERPRINTED}


def run_fingerprint(request: SceneRequest, plan: Plan, weights: dict) -> str:
    """Hash of everything that decides the labels: input (content, scene/identity.py),
    classes, method, every parameter, weight identities (content sha256), grids and
    ``--save-confidence``; not the cluster (the precision, :data:`WORKER_KEYS`, is checked
    separately)."""
    blob = {
        "scene": plan.scene.identity,
        **_resolved_settings(request, plan),
        "classes": request.classes.as_dict(),
        "model": request.model.as_dict(),
        "weights": weights,
        "model_gsd": plan.model_gsd,
        "save_confidence": request.settings.save_confidence,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_attrs(
    request: SceneRequest, plan: Plan, weights: dict, fingerprint: str, precision: str
) -> dict:
    """The store's group attributes: what was run, on what, with which weights, in which
    precision (:func:`worker_precision`)."""
    scene = plan.scene
    attrs = {
        "software": "reattn-batch",
        "software_version": version("reattn-batch"),
        "run_fingerprint": fingerprint,
        "scene": scene.path,
        "scene_identity": scene.identity,
        "bands": list(scene.bands),
        "variable": scene.variable,
        "stretch": list(scene.stretch) if scene.stretch else None,
        "native_gsd": scene.gsd,
        "model_gsd": plan.model_gsd,
        "model_grid_shape": list(plan.grid.model_grid.shape),
        "block_size": plan.grid.block,  # resolved (`auto` -> px); a resume reuses it
        "classes": request.classes.as_dict(),
        "method": request.model.cfg.method,
        "hyperparameters": request.model.cfg.as_dict(),
        "upsampler": request.model.upsampler,
        "weights": weights,
        "random_weights": bool(weights["clip"].get("random")),
        "save_confidence": request.settings.save_confidence,
        "precision": precision,
    }
    if scene.stac_item:
        attrs["source_stac_item"] = scene.stac_item  # pipeline/outputs/stac.py: derived_from
        attrs["stac_asset"] = request.settings.asset
    if scene.scene_datetime:
        attrs["scene_datetime"] = scene.scene_datetime
    if attrs["random_weights"]:
        attrs["warning"] = "CLIP weights were RANDOM: these labels are for tests and mean nothing."
    return attrs
