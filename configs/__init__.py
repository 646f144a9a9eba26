"""Configuration as data, shipped inside the package: method.yaml (every hyperparameter),
datasets/ (benchmark presets), ablations/, jobs/ (example job specs), models/ (a tiny test
architecture). Read through importlib.resources: :data:`CONFIG_DIR`."""

from importlib.resources import files
from pathlib import Path

#: This folder, wherever the package is installed (the wheel ships it).
CONFIG_DIR = Path(str(files(__name__)))
