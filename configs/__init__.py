"""Configuration as data, shipped inside the package: method.yaml (every hyperparameter),
datasets/ (benchmark presets), ablations/, jobs/ (example job specs), models/ (a tiny test
architecture). Read through importlib.resources (``reattn_batch.workers.config.CONFIG_DIR``)."""
