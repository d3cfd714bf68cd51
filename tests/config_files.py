"""The config files of `configs/`, loaded by path as `rsunivlm-train --config` loads them."""
from pathlib import Path

from rsunivlm_jax.train.config_lib import load_config_file

REPO = Path(__file__).resolve().parents[1]


def load(name: str):
    """``load("tiny_cpu.py:stage2")`` -> ``get_config("stage2")`` of configs/tiny_cpu.py."""
    return load_config_file(str(REPO / "configs" / name))
