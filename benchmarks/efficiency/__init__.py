"""The parts of ``benchmarks/pipeline_efficiency.py`` (its docstring says what it measures).

settings.py      defaults per device, the block-profile targets, the command line
machine.py       what the machine is (CPU, GPU, versions, load)
inputs.py        the mosaic scenes and a seeded random upsampler checkpoint
halo.py          halo redundancy per block size (arithmetic only)
worker_tasks.py  functions that run inside the Dask workers (warm-up, model-only calls,
                 the timed block task)
measure.py       the driver side: the Bench (cluster and slots), RSS sampling, one scene
                 against the model alone, the worker vs plain-process check
report.py        the printed tables
run.py           the whole benchmark in order, and ``main``
"""
