"""Tests of rsunivlm_jax.eval."""
