"""Model time on the 448x448 Potsdam image (issue 9 targets), in ONE run. Speed only.

    python benchmarks/potsdam_model_time.py [--json OUT] [--repeats 1]

The 448x448 resize of ../shared/data/labelled/potsdam/img/2_10_0_0_512_512.png (9 crops
of 224 at stride 112), jbu_stack with the shared FeatUp checkpoint, fp32, CPU, random
CLIP weights. Times ``slide_inference`` (pixels to mean logits) for reattnclip and
segearth-ov, upsampler_path full vs rank_reduced, batch 1 vs 8, and one crop split into
encoder and upsampler. Ratios are against SegEarth-OV's own code for segearth-ov on this
image: timed in the same run when ``--segearth-code DIR`` names a clone of
https://github.com/likyoo/SegEarth-OV (benchmarks/segearth_own.py runs it in its own
process with the same random CLIP weights and checkpoint, and its logits are compared
with ours), else 20.5 s, a figure recorded earlier on the same machine type.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.model_throughput import machine_info  # noqa: E402
from reattn_batch.workers.backbone import load_backbone  # noqa: E402
from reattn_batch.workers.classes import parse_classes  # noqa: E402
from reattn_batch.workers.config import load_config  # noqa: E402
from reattn_batch.workers.encoder import encode_crops  # noqa: E402
from reattn_batch.workers.segmenter import Segmenter, normalise  # noqa: E402
from reattn_batch.workers.sliding import slide_inference  # noqa: E402
from reattn_batch.workers.text import query_embeddings  # noqa: E402
from reattn_batch.workers.upsampled_logits import upsampled_cosines  # noqa: E402
from reattn_batch.workers.upsampler import load_upsampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT.parent / "shared/data/labelled/potsdam/img/2_10_0_0_512_512.png"
CKPT = ROOT.parent / "shared/data/weights/featup_clip_jbu_stack_cocostuff.ckpt"
CLASSES = "road/parking lot,building,low vegetation,tree,car,clutter/background"
SEGEARTH_OWN_S = 20.5  # SegEarth-OV's code, segearth-ov, this image: recorded earlier


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--paths", default="rank_reduced,full", help="upsampler paths to time")
    p.add_argument("--segearth-code", default=None, help="a SegEarth-OV clone: time it too")
    args = p.parse_args(argv)
    if not IMAGE.is_file() or not CKPT.is_file():
        print(f"error: needs {IMAGE} and {CKPT} (../shared/data)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    rgb = np.asarray(Image.open(IMAGE).convert("RGB").resize((448, 448), Image.BILINEAR))
    pixels = normalise(rgb)
    backbone = load_backbone("random", "ViT-B-16-quickgelu", 0)
    classes = parse_classes(CLASSES)
    queries = query_embeddings(backbone, classes.queries)
    ups = load_upsampler("jbu_stack", CKPT)
    info = machine_info(torch.device("cpu"), None, "ViT-B-16-quickgelu")
    print("Potsdam 448x448, 9 crops, jbu_stack (real ckpt), fp32, random CLIP weights")
    print(f"  {info['device_name']}, torch {info['torch']}, load {info['loadavg_start']}")
    own_s, own_logits = SEGEARTH_OWN_S, None
    if args.segearth_code:
        own_s, own_logits = time_segearth_own(args.segearth_code, backbone, pixels, queries)
        info["segearth_own_s"] = own_s
    reference = "timed in this run" if own_logits is not None else "recorded earlier"
    rows = []
    batches = [int(b) for b in args.batch_sizes.split(",")]
    for method in ("segearth-ov", "reattnclip"):
        for path in args.paths.split(","):
            for b in batches if path == "rank_reduced" else batches[:1]:
                cfg = load_config(
                    overrides={"method": method, "upsampler_path": path, "batch_size": b}
                )
                seg = Segmenter(backbone, cfg, queries, upsampler=ups)
                start = time.perf_counter()
                with torch.no_grad():
                    logits = slide_inference(seg, pixels)
                seconds = time.perf_counter() - start
                crop = pixels[None, :, :224, :224]
                with torch.no_grad():
                    t0 = time.perf_counter()
                    dense = encode_crops(backbone, cfg, crop)
                    t1 = time.perf_counter()
                    upsampled_cosines(ups, dense.patches, crop, seg.queries, path)
                    t2 = time.perf_counter()
                row = {
                    "method": method, "upsampler_path": path, "batch_size": b,
                    "model_s": seconds, "vs_segearth_own": seconds / own_s,
                    "crop_encoder_s": t1 - t0, "crop_upsampler_s": t2 - t1,
                }  # fmt: skip
                if own_logits is not None and method == "segearth-ov":
                    row["max_abs_logit_diff_vs_own"] = float((logits - own_logits).abs().max())
                    row["argmax_agreement_vs_own"] = float(
                        (logits.argmax(0) == own_logits.argmax(0)).float().mean()
                    )
                rows.append(row)
                print(
                    f"  {method:<12} {path:<12} B={b}: {seconds:6.1f} s "
                    f"({row['vs_segearth_own']:.2f}x SegEarth-OV's {own_s:.1f} s, {reference}); "
                    f"one crop: encoder {t1 - t0:.2f} s, upsampler {t2 - t1:.2f} s",
                    flush=True,
                )
    info["loadavg_end"] = machine_info(torch.device("cpu"), None, "")["loadavg_start"]
    print(f"  load at end {info['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    return 0


def time_segearth_own(
    code: str, backbone, pixels: torch.Tensor, queries: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """Seconds and mean crop logits (Q, H, W) of SegEarth-OV's own forward_slide for
    segearth-ov on ``pixels`` (3, H, W), same CLIP weights and checkpoint, in its own
    process (benchmarks/segearth_own.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        weights, inputs, out = (Path(tmp) / n for n in ("clip.pt", "in.pt", "out.pt"))
        torch.save(backbone.model.state_dict(), weights)
        torch.save({"pixels": pixels, "queries": queries}, inputs)
        script = Path(__file__).with_name("segearth_own.py")
        args = [code, weights, CKPT, inputs, out]
        subprocess.run([sys.executable, str(script), *map(str, args)], check=True)
        result = torch.load(out)
    return float(result["seconds"]), result["logits"].float()


if __name__ == "__main__":
    sys.exit(main())
