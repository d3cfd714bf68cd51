"""PyTorch <-> rsunivlm_jax weight converter (`rsunivlm-convert`, `python -m rsunivlm_jax.convert`).

Modules: `io` (lazy tensor reads, hashes), `layouts` (which key spelling a checkpoint uses),
`hf_config` (config.json -> ModelConfig), `mapping` (the declarative key table), `convert`
(torch -> Orbax), `export` (Orbax -> torch). Errors are `ConversionError`, which lists every
problem found at once.
"""
from __future__ import annotations


class ConversionError(ValueError):
    """A conversion that cannot proceed; `problems` lists every reason (one line each)."""

    def __init__(self, problems, context: str = "conversion failed"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = f"{context} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"
        super().__init__("\n".join([head] + [f"  - {p}" for p in self.problems]))


def convert(*args, **kwargs):
    """`rsunivlm_jax.convert.convert.convert` (lazy import)."""
    from rsunivlm_jax.convert.convert import convert as _convert
    return _convert(*args, **kwargs)


def export_to_torch(*args, **kwargs):
    """`rsunivlm_jax.convert.export.export_to_torch` (lazy import)."""
    from rsunivlm_jax.convert.export import export_to_torch as _export
    return _export(*args, **kwargs)


__all__ = ["ConversionError", "convert", "export_to_torch"]
