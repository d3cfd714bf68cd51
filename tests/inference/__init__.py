"""Tests of rsunivlm_jax.inference and the evaluation CLI."""
