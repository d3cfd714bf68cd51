"""Training: optimiser, loss, pure train/eval steps, expert upcycling, Orbax checkpoints, metrics,
the trainer loop and the `rsunivlm-train` command line (see docs/training.md).

Submodules are imported on demand (``from rsunivlm_jax.train import step``) to keep imports light.
"""
