"""Thin launcher: `python launch/train.py --config configs/X.py --workdir DIR [--multihost]`.

Same flags as `rsunivlm-train` (`rsunivlm_jax.train.cli`), which it runs; the package must be
installed in the environment (`pip install -e .`). Used by launch/tpu_pod.sh and
launch/slurm_gpu.sh, which start it on every host.
"""
import sys

from rsunivlm_jax.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
