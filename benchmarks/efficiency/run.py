"""The whole benchmark in order (inputs, cluster, scenes, block profile, plain check,
report) and ``main``, the command line's entry point."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import rasterio

from efficiency.halo import halo_table
from efficiency.inputs import build_mosaic, mosaic_side, random_upsampler_checkpoint
from efficiency.machine import machine_info
from efficiency.measure import Bench, measure_scene, plain_check
from efficiency.report import print_halo, print_memory, print_profile, print_scenes
from efficiency.settings import (
    DEFAULTS,
    HALO_BLOCKS,
    HALO_SIZES,
    MOSAIC_TILE,
    PLAIN_CALLS,
    WARMUP_SIDE,
    load_average,
    mp_text,
    parse_args,
    parse_sizes,
)
from efficiency.worker_tasks import profile_block, read_worker_env, set_torch_threads, warm_worker
from reattn_batch.blocks.task import BlockTask
from reattn_batch.run.cluster import connect
from reattn_batch.run.plan import plan
from reattn_batch.run.request import SceneRequest
from reattn_batch.run.spine import run_scene
from reattn_batch.settings import ClusterSettings, SceneSettings
from reattn_batch.workers.batching import CPU_BATCH
from reattn_batch.workers.classes import parse_classes
from reattn_batch.workers.config import load_config
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.model_spec import ModelSpec
from reattn_batch.workers.segmenter import autocast_dtype, resolve_device


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_all = time.perf_counter()
    device = resolve_device(args.device)
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    sizes = parse_sizes(args.sizes or defaults["sizes"])
    block_size = args.block_size or defaults["block_size"]
    clip_model = args.clip_model or defaults["clip_model"]
    upsampler = args.upsampler or defaults["upsampler"]
    source = Path(args.source)
    if not source.is_file():
        raise UserError(f"--source {source}: no such file (the shared Koeln tile)")
    overrides: dict[str, Any] = {"clip_model": clip_model, "dtype": args.dtype}
    if args.method:
        overrides["method"] = args.method
    # The call arithmetic below needs a number: 'auto' is 1 on the CPU (workers.batching);
    # on CUDA it depends on the loaded model, so this benchmark fixes 8 unless told.
    overrides["batch_size"] = args.batch_size or (CPU_BATCH if device.type == "cpu" else 8)
    cfg = load_config(overrides=overrides)
    classes = parse_classes(args.classes)
    dtype = autocast_dtype(cfg.dtype, device)
    dtype_name = "fp32" if dtype is None else str(dtype).removeprefix("torch.")

    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="pipeline-efficiency-")
            workdir = Path(stack.enter_context(tmp))

        ups_weights = args.upsampler_weights
        ups_desc = upsampler
        if upsampler != "bilinear":
            if ups_weights is None:
                ckpt = random_upsampler_checkpoint(upsampler, workdir / f"{upsampler}.ckpt")
                ups_weights = str(ckpt)
                ups_desc += " (seeded random init)"
            else:
                ups_desc += f" ({ups_weights})"
        spec = ModelSpec(
            clip_weights="random",
            upsampler=upsampler,
            upsampler_weights=ups_weights,
            cfg=cfg,
            device=args.device,
        )
        with rasterio.open(source) as src:
            native_gsd = abs(src.transform.a)
        f = native_gsd / args.gsd if args.gsd else 1.0

        info = machine_info(device)
        gpu = f", GPU {info['gpu']} (CUDA {info['cuda']})" if info["gpu"] else ", no GPU used"
        grid_desc = f"{args.gsd:g} m (f = {f:.3g})" if args.gsd else "native (no resampling)"
        print("Scene-job efficiency: run_scene against Segmenter.crop_logits")
        print(
            f"  machine     {info['cpu']}, {info['cpu_usable']} usable of {info['cpu_count']} "
            f"CPUs, {info['memory_gib']} GiB{gpu}; load average {info['load_average_1m']}"
        )
        print(
            f"  software    torch {info['torch']}, distributed {info['dask']}, "
            f"GDAL {info['gdal']}, reattn-batch {info['reattn_batch']}"
        )
        print(f"  model       {clip_model}, method {cfg.method}, upsampler {ups_desc}")
        print(f"  weights     random (seed {cfg.random_seed}): speed figures only, not accuracy")
        print(
            f"  inference   device {device}, {dtype_name}, crops {cfg.crop} at stride "
            f"{cfg.stride}, batch {cfg.batch_size} (fixed shape); {len(classes.queries)} queries"
        )
        print(
            f"  scenes      {', '.join(mp_text(s) for s in sizes)} mosaics of {source.name} "
            f"({native_gsd:g} m), tiles {MOSAIC_TILE} deflate; block {block_size}; "
            f"model grid {grid_desc}"
        )
        print(flush=True)

        halo = halo_table(HALO_SIZES, HALO_BLOCKS, f, cfg.crop, cfg.stride, cfg.batch_size)
        print_halo(halo, cfg.batch_size)
        print(flush=True)

        warm_side = min(WARMUP_SIDE, mosaic_side(sizes[0]))
        warm = build_mosaic(source, workdir / "warmup.tif", warm_side)
        mosaics = {}
        for mp in sizes:
            m = build_mosaic(source, workdir / f"mosaic_{mp:g}mp.tif", mosaic_side(mp))
            mosaics[mp] = m
            print(
                f"mosaic {mp_text(mp)}: {m['side']}x{m['side']} px, {m['file_mb']:.0f} MB, "
                f"built in {m['build_s']:.1f} s",
                flush=True,
            )

        def request(path: str, out: Path) -> SceneRequest:
            return SceneRequest(
                scene=path,
                model=spec,
                classes=classes,
                out=out,
                settings=SceneSettings(gsd=args.gsd, block_size=block_size),
                cluster=ClusterSettings(
                    scheduler=args.scheduler,
                    workers=args.workers,
                    threads_per_worker=args.threads_per_worker,
                ),
                overwrite=True,
            )

        # --- the cluster, as the job opens it ---------------------------------------------
        policy = args.omp_wait_policy or ("passive" if device.type == "cpu" else "default")
        if policy == "passive" and not args.scheduler:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the workers
        t0 = time.perf_counter()
        client, cinfo = stack.enter_context(connect(request(warm["path"], workdir).cluster))
        pass_connection = "connection" in inspect.signature(run_scene).parameters
        bench = Bench(client, cinfo, spec, pass_connection)
        if not pass_connection and cinfo.torch_threads:
            # run_scene will connect by address, which leaves torch threads to the workers
            # (Dask makes them 1): set what the embedded cluster would give each task
            client.run(set_torch_threads, cinfo.torch_threads)
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warmed = client.gather(
            [bench.submit(warm_worker, spec, classes.queries, worker=w) for w in bench.workers]
        )
        bench.queries = warmed[0]["queries"]
        bench.run_scene(request(warm["path"], workdir / "warmup.zarr"))
        warm_s = time.perf_counter() - t0
        here = socket.gethostname()
        bench.local_pids = [
            w["pid"] for w in warmed if w["host"] == here and psutil.pid_exists(w["pid"])
        ]
        layout = "existing scheduler" if args.scheduler else "LocalCluster (the job's layout)"
        nthreads = sorted({w["nthreads"] for w in bench.workers.values()})
        worker_env = next(iter(client.run(read_worker_env).values()))
        env_desc = " ".join(f"{k}={v}" for k, v in worker_env.items() if v is not None)
        print(
            f"cluster: {layout}: {len(bench.workers)} worker(s) x {nthreads} thread(s), "
            f"resources {bench.resources or 'none'}, torch threads per model task "
            f"{cinfo.torch_threads or sorted({w['torch_threads'] for w in warmed})}, model on "
            f"{warmed[0]['device']}; started in {start_s:.1f} s, warmed up (model load + "
            f"{warm_side}x{warm_side} job) in {warm_s:.1f} s"
            + ("" if pass_connection else "; run_scene connects by address")
            + f"; worker env {env_desc or '-'}",
            flush=True,
        )
        print(flush=True)

        # --- scenes --------------------------------------------------------------------------
        scenes = []
        for mp in sizes:
            out = workdir / f"mosaic_{mp:g}mp.zarr"
            row = measure_scene(
                bench, request(mosaics[mp]["path"], out), mosaics[mp], mp, args.sample_interval
            )
            scenes.append(row)
            print(
                f"{mp_text(mp)}: scene {row['scene_s']:.1f} s ({row['scene_mp_per_s']:.3f} MP/s), "
                f"{row['blocks']} blocks, {row['crops_run']} crops in "
                f"{row['job_calls_padded']} calls; model only {row['model_only_s']:.1f} s "
                f"({row['model_calls']} calls) -> ratio {row['ratio']:.2f}; "
                f"load average {row['load_average_1m']}",
                flush=True,
            )

        # --- one block task, timed inside ------------------------------------------------------
        profile = None
        if not args.no_profile:
            mp = sizes[-1]
            layout = plan(request(mosaics[mp]["path"], workdir))
            scene_info, grid = layout.scene, layout.grid
            job = BlockTask(
                scene=scene_info,
                model=spec,
                classes=classes,
                grid=grid,
                store=str((workdir / f"mosaic_{mp:g}mp.zarr").absolute()),
                save_confidence=False,
                torch_threads=cinfo.torch_threads,
            )
            rows, cols = grid.counts
            index = (rows // 2) * cols + cols // 2
            future = bench.submit(profile_block, job, index, bench.queries, worker=bench.slots[0])
            profile = future.result()
            profile["size_mp"] = mp

        plain = None
        if not args.no_plain_check:
            threads = cinfo.torch_threads or warmed[0]["torch_threads"]
            plain = plain_check(bench, PLAIN_CALLS[device.type], threads, workdir, worker_env)

    # --- report ----------------------------------------------------------------------------
    print()
    print_scenes(scenes)
    print()
    growth = print_memory(scenes)
    if profile is not None:
        print()
        print_profile(profile)
    if plain is not None:
        print()
        w0, w1 = plain["worker_s"]
        n = plain["calls"]
        print(
            f"Dask worker vs plain process ({n} calls of {cfg.batch_size}, "
            f"{plain['threads']} torch threads, OMP_WAIT_POLICY "
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; plain = a fresh process without "
            f"{', '.join(plain['plain_env_removed'])})"
        )
        trim = plain["plain_malloc_trim_s"]
        trim_desc = (
            ""
            if trim is None
            else f", plain with MALLOC_TRIM_THRESHOLD_={plain['malloc_trim_threshold']} "
            f"{1000 * trim / n:.0f} ms/call"
        )
        print(
            f"  worker {1000 * w0 / n:.0f} ms/call, plain {1000 * plain['plain_s'] / n:.0f} "
            f"ms/call{trim_desc}, worker again {1000 * w1 / n:.0f} ms/call -> worker / plain "
            f"{plain['worker_over_plain']:.2f}"
        )
    wall = time.perf_counter() - t_all
    print(
        f"\nbenchmark {wall:.0f} s (load average now {load_average():.2f}); weights random, "
        f"{dtype_name}, {clip_model}, {upsampler}, block {block_size}"
    )
    return {
        "machine": info,
        "settings": {
            "sizes_mp": sizes,
            "block_size": block_size,
            "clip_model": clip_model,
            "method": cfg.method,
            "upsampler": upsampler,
            "upsampler_weights": args.upsampler_weights or "random init",
            "weights": "random",
            "dtype": dtype_name,
            "device": str(device),
            "batch_size": cfg.batch_size,
            "crop": cfg.crop,
            "stride": cfg.stride,
            "gsd": args.gsd,
            "native_gsd": native_gsd,
            "queries": classes.queries,
            "cluster": layout,
            "workers": len(bench.workers),
            "slots": len(bench.slots),
            "torch_threads": cinfo.torch_threads,
            "run_scene_connection": pass_connection,
            "omp_wait_policy": policy,
            "worker_env": worker_env,
            "sample_interval_s": args.sample_interval,
            "config": cfg.as_dict(),
        },
        "cluster_start_s": start_s,
        "warmup_s": warm_s,
        "halo": halo,
        "scenes": scenes,
        "worker_peak_growth": growth,
        "block_profile": profile,
        "worker_vs_plain": plain,
        "seconds": wall,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import logging

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        report = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0
