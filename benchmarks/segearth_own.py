"""Time SegEarth-OV's OWN code on one image, from a checkout you provide. Speed only.

    python benchmarks/segearth_own.py SEGEARTH_DIR WEIGHTS.pt UPSAMPLER.ckpt PIXELS.pt OUT.pt

Run by ``benchmarks/potsdam_model_time.py --segearth-code DIR`` in a separate process,
because SegEarth-OV ships its own modified ``open_clip`` package, which must shadow the
installed one. Nothing of SegEarth-OV is copied into this project: its modules are
imported from ``SEGEARTH_DIR`` (a clone of https://github.com/likyoo/SegEarth-OV).

Its segmentor module imports mmseg, mmengine, BLIP and GEM at the top; none of them
runs in the forward pass timed here, so they are replaced by empty stand-ins. The
segmentor is built without its ``__init__`` (which loads pretrained weights and moves
everything to CUDA fp16) and given, instead: its own ``open_clip`` ViT-B/16 model with
the CLIP weights in WEIGHTS.pt (the state dict of the model our benchmark uses), its
own ``JBUStack`` with UPSAMPLER.ckpt, our query embeddings, and its Potsdam settings
(model_type SegEarth, ignore_residual, cls_token_lambda -0.3). Everything runs in fp32
on the CPU: its ``.half()`` casts are identity during the timed call, so the numbers
compare with our fp32 path. Without FeatUp's compiled CUDA extension (a CPU machine) its
JBU steps use its own pure-PyTorch ``adaptive_conv_py_simple`` (FeatUp's C++ CPU
kernel indexes one element at a time and is far slower still). PIXELS.pt holds the
CLIP-normalised image (3, H, W) and the queries (Q, 512); OUT.pt receives its mean crop
logits (Q, H, W) and the seconds of ``forward_slide``.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path


def _stand_ins() -> None:
    """Empty modules for the imports the timed forward pass never uses."""

    class _Registry:
        def register_module(self, *a, **k):
            return lambda cls: cls

    import torch

    class _Base(torch.nn.Module):  # mmseg's BaseSegmentor is an nn.Module
        def __init__(self, *a, **k):
            super().__init__()

    names = {
        "mmseg": {},
        "mmseg.models": {},
        "mmseg.models.segmentors": {"BaseSegmentor": _Base},
        "mmseg.models.data_preprocessor": {"SegDataPreProcessor": _Base},
        "mmseg.registry": {"MODELS": _Registry()},
        "mmengine": {},
        "mmengine.structures": {"PixelData": dict},
        "BLIP": {},
        "BLIP.models": {},
        "BLIP.models.blip_retrieval": {"blip_retrieval": None},
        "gem": {},
    }
    for name, attrs in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def main(segearth_dir: str, weights: str, upsampler_ckpt: str, inputs: str, out: str) -> None:
    sys.path.insert(0, str(Path(segearth_dir).resolve()))
    _stand_ins()
    import torch
    from open_clip import create_model  # SegEarth-OV's own copy (first on the path)
    from segearth_segmentor import SegEarthSegmentation
    from simfeatup_dev import upsamplers
    from simfeatup_dev.upsamplers import get_upsampler

    if upsamplers.AdaptiveConv is None:  # FeatUp's CUDA extension is not installed:
        # its own pure-PyTorch adaptive convolution (the line commented out beside it)
        upsamplers.AdaptiveConv = types.SimpleNamespace(apply=upsamplers.adaptive_conv_py_simple)

    torch.set_grad_enabled(False)
    data = torch.load(inputs)
    seg = SegEarthSegmentation.__new__(SegEarthSegmentation)
    torch.nn.Module.__init__(seg)  # its own __init__ loads pretrained weights onto CUDA
    seg.net = create_model("ViT-B/16", pretrained=None, precision="fp32", force_quick_gelu=True)
    seg.net.eval()
    seg.net.load_state_dict(torch.load(weights), strict=True)
    seg.upsampler = get_upsampler("jbu_stack", 512).eval()
    state = torch.load(upsampler_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    seg.upsampler.load_state_dict({k[10:]: v for k, v in state.items()}, strict=True)
    seg.clip_type, seg.vit_type, seg.model_type = "CLIP", "ViT-B/16", "SegEarth"
    seg.ignore_residual, seg.feature_up = True, True
    seg.cls_token_lambda, seg.output_cls_token = -0.3, True
    seg.patch_size = seg.net.visual.patch_size
    seg.feat_dim = 512
    seg.query_features = data["queries"].float()
    seg.num_queries = seg.query_features.shape[0]
    img = data["pixels"].float()[None]
    half = torch.Tensor.half
    torch.Tensor.half = lambda self, *a, **k: self  # fp32 throughout (see the docstring)
    try:
        start = time.perf_counter()
        logits = seg.forward_slide(img, [{"ori_shape": img.shape[-2:]}], 112, 224)
        seconds = time.perf_counter() - start
    finally:
        torch.Tensor.half = half
    torch.save({"logits": logits[0], "seconds": seconds}, out)
    print(f"SegEarth-OV's own code: forward_slide {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6])
