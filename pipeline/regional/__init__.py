"""Regional jobs: many scenes from one spec file (`reattn-batch job run SPEC.yaml`).

spec.py     the spec file, validated (RegionalJob)
index.py    index.json / index.geojson: status and footprint of every scene
runner.py   run_job: skip, resume or map each scene; the lock and the summary
catalogue.py  scenes from a STAC API search or a static catalog, listed within bounds
"""
