"""Training-free G-MoE router: task tag in the prompt -> expert index.

Reproduces the rule in the reference demo (`app.py` L149-151 of xuliu-cyber/RSUniVLM):
substring tests on the user message, first match wins.
"""

IMAGE_LEVEL, REGION_LEVEL, PIXEL_LEVEL = 0, 1, 2
NUM_GRANULARITIES = 3


def route(prompt: str) -> int:
    """Returns the expert index for `prompt`: [SEG] -> 2, else [VG]/[REF] -> 1, else 0."""
    if "[SEG]" in prompt:
        return PIXEL_LEVEL
    if "[VG]" in prompt or "[REF]" in prompt:
        return REGION_LEVEL
    return IMAGE_LEVEL
