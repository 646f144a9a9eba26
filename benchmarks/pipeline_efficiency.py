"""Efficiency of the scene job (`reattn_batch.run.spine.run_scene`) against the model alone.

Five figures, each printed with its settings (and written with ``--json OUT``):

1. Scene vs model-only time (target ratio >= 0.9). The script opens ONE cluster the
   way the job does (``reattn_batch.run.cluster.connect``: the embedded LocalCluster's layout,
   ``--workers/--threads-per-worker``, or ``--scheduler ADDR``), warms it up (every
   worker loads the model and runs one batch, and a small scene goes through the whole
   job), and hands that connection to ``run_scene`` for every scene. So the scene time,
   from the call of ``run_scene`` to its return, holds planning, store creation, the
   text-embedding task, every block task (read, resample, model, post-process, write)
   and the final metadata, but neither cluster start-up nor model loading, which a long
   job pays once. The job's own clock (its reported MP/s, first window submitted to last
   block) is printed beside it. Then the model alone: ``CropSegmenter.crop_logits`` (the
   worker's cached segmenter: same process, device, dtype and torch threads) on as many
   crops as the job ran (the store's ``crops_run``, halo duplicates included) in fixed
   batches of the job's batch size, spread over the same worker slots (one task per
   worker thread; one per GPU worker); half of those calls run just before the scene and
   half just after, so a load that drifts weighs on both sides. The model-only crops are
   seeded random normals: crop content does not change the speed (random, real and
   all-zero crops timed alike, within noise, on the CPU).
   ratio = model-only time / scene time. Also printed: the ratio had the model-only path
   run the job's padded calls (each block pads its own last batch), and the ratio of the
   workers' CPU seconds (steadier than wall time when other processes share the cores).
2. Worker peak RSS per scene size (target: flat). distributed's ``MemorySampler`` samples
   the workers' process memory (RSS, summed over the cluster, as each worker reports it
   with its heartbeat; remote workers too) during each run, and a thread samples this
   driver process's RSS (psutil); scenes run smallest first on the same warm workers, so
   a peak that grows with the scene cannot hide behind an earlier run's high-water
   mark. On CUDA the workers' peak allocated GPU memory is printed too.
3. Halo redundancy: ``BlockGrid.halo_redundancy()`` (extra crop runs) at blocks
   1024/2048/4096 for 64 and 400 MP scene geometries; arithmetic only.
4. Where a block task's time goes: the real ``run_block`` on one interior block of the
   largest mosaic, run on a worker with the functions it calls (read, resample,
   normalise, model, accumulation, labels, store writes) each run under a
   ``torch.profiler.record_function`` span, profiled on every thread; exclusive wall time
   per function and thread (its spans less the spans nested in them), and what is left
   on the task thread.
5. The Dask worker against a plain process: the same model calls in a worker and in a
   fresh Python process without Dask's worker environment (Dask sets
   MALLOC_TRIM_THRESHOLD_=65536 and OMP_NUM_THREADS=1 before a worker starts), same
   torch threads, timed worker / plain / worker.

OpenMP: on the CPU the workers get OMP_WAIT_POLICY=PASSIVE unless the environment sets
it (``--omp-wait-policy default`` leaves libgomp's spinning on). On cores shared with
other processes, spinning makes a two-thread model call several times dearer, and (as
libgomp documents for GOMP_SPINCOUNT) it throttles spinning only once it manages more
threads than there are CPUs, which the block task's reader thread happens to bring
about and the model-only path does not: with spinning on, the ratio measures that
accident, not the pipeline.

Scenes are GeoTIFF mosaics (512 px tiles, deflate) of N megapixels tiled from
``oem_koeln_50.tif`` with every other tile mirrored (rows and columns), so the content
is not a plain repeat. CLIP weights are random (seeded) and jbu_one without
``--upsampler-weights`` is a seeded random init: speed figures only, not accuracy.
The machine this runs on may be shared and noisy: each figure is from one run, and
the ratios (taken close together in time) are what to read.

    python benchmarks/pipeline_efficiency.py                  # CPU: tiny model, 1 and 4 MP
    python benchmarks/pipeline_efficiency.py --json out.json  # CUDA: ViT-B/16, 4 and 64 MP
    python benchmarks/pipeline_efficiency.py --sizes 1 --method segearth-ov --no-profile
"""

from __future__ import annotations

import sys

from efficiency.run import main  # benchmarks/ is this script's folder, hence on sys.path

if __name__ == "__main__":
    sys.exit(main())
