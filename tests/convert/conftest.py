"""Shared tiny checkpoints for the converter tests (built once per session)."""
import jax
import pytest

from tests import hf_utils as H


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="session")
def gmoe(tmp_path_factory):
    """RSUniVLM layout (3 different experts, untied head, rotary inv_freq buffer) + its conversion.

    Returns (three LLaVA-OV references, tensors written, source dir, Pretrained).
    """
    refs, text, vision = H.llava_ov_experts(tie=False)
    tensors = H.llava_next_tensors(refs, experts=True, inv_freq=True)
    cfg = H.llava_next_config(text, vision, num_experts=3, stored_blocks=2)
    root = tmp_path_factory.mktemp("gmoe")
    src = H.write_checkpoint(root / "src", tensors, cfg, generation_config={"eos_token_id": [1, 0]})
    pre = H.convert(src, root / "dst")
    return refs, tensors, src, pre


@pytest.fixture(scope="session")
def dense(tmp_path_factory):
    """Original LLaVA-OneVision layout: dense MLPs, tied head (no lm_head.weight)."""
    model, text, vision = H.llava_ov(7, tie=True)
    tensors = H.llava_next_tensors([model], experts=False)
    cfg = H.llava_next_config(text, vision, num_experts=None, stored_blocks=2)
    src = H.write_checkpoint(tmp_path_factory.mktemp("dense") / "src", tensors, cfg)
    return model, tensors, src
