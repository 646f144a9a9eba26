"""What identifies a run (SPEC 3.3, 3.5): the run fingerprint, and the store attributes
that record it. A resumed or re-run store must match it; the attributes in
:data:`RUN_KEYS` say what differs when it does not.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from typing import Any

from pipeline.run.plan import Plan
from pipeline.run.request import SceneRequest
from pipeline.settings import FINGERPRINTED

# Store attributes that decide the labels; a resumed run must match them all.
RUN_KEYS = (
    "scene_identity", "bands", "stretch", "variable", "classes", "method", "hyperparameters",
    "upsampler", "weights", "model_gsd", "block_size",
)  # fmt: skip


def _resolved_settings(request: SceneRequest, plan: Plan) -> dict[str, Any]:
    """The fingerprinted settings as the scene resolved them (default bands, stretch)."""
    values = request.settings.model_dump(include=set(FINGERPRINTED))
    values |= {"bands": plan.scene.bands, "stretch": plan.scene.stretch}
    values["variable"] = plan.scene.variable
    return {key: values[key] for key in FINGERPRINTED}


def run_fingerprint(request: SceneRequest, plan: Plan, weights: dict) -> str:
    """Hash of everything that decides the labels: input, classes, method, every
    parameter, weight identities, grids (not the cluster)."""
    blob = {
        "scene": plan.scene.identity,
        **_resolved_settings(request, plan),
        "classes": request.classes.as_dict(),
        "model": request.model.as_dict(),
        "weights": weights,
        "model_gsd": plan.model_gsd,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_attrs(request: SceneRequest, plan: Plan, weights: dict, fingerprint: str) -> dict:
    """The store's group attributes: what was run, on what, with which weights."""
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
        "block_size": request.settings.block_size,
        "classes": request.classes.as_dict(),
        "method": request.model.cfg.method,
        "hyperparameters": request.model.cfg.as_dict(),
        "upsampler": request.model.upsampler,
        "weights": weights,
        "random_weights": bool(weights["clip"].get("random")),
    }
    if scene.stac_item:
        attrs["source_stac_item"] = scene.stac_item  # pipeline/outputs/stac.py: derived_from
        attrs["stac_asset"] = request.settings.asset
    if scene.scene_datetime:
        attrs["scene_datetime"] = scene.scene_datetime
    if attrs["random_weights"]:
        attrs["warning"] = "CLIP weights were RANDOM: these labels are for tests and mean nothing."
    return attrs
