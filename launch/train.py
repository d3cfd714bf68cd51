"""Thin launcher: `python launch/train.py --config configs/X.py --workdir DIR [--multihost]`.

Same flags as `rsunivlm-train` (rsunivlm_jax/train/cli.py). Used by launch/tpu_pod.sh and
launch/slurm_gpu.sh, which start it on every host.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rsunivlm_jax.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
