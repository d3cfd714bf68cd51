"""Generic NNX building blocks (no model-specific wiring)."""
