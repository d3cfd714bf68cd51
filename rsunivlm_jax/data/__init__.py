"""Data layer: tokenizer and chat template, image preprocessing, record sources, native-dataset
converters, TFDS builders, Grain pipelines, synthetic dataset and the `rsunivlm-data` CLI.

Submodules are imported on demand (``from rsunivlm_jax.data import pipeline``) to keep imports light.
"""
