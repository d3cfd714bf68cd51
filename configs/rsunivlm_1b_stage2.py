"""RSUniVLM-1B stage 2: granularity-oriented fine-tuning of the G-MoE model, up-cycled from stage 1.

    rsunivlm-train --config configs/rsunivlm_1b_stage2.py --workdir runs/stage2 \
        --config.init.path=runs/stage1 --config.data.train=data/rs_mix

Known from the release: all parts trainable (`mm_tunable_parts` lists vision tower, projector and LLM), one
learning rate for every part (`mm_projector_lr = mm_vision_tower_lr = null`), bf16, the released
layout (3 experts per layer, untied `lm_head`).
Chosen here (assumptions, docs/training.md): the experts are up-cycled by copying each stage-1 MLP
into experts 0, 1, 2 (and the tied head into `lm_head`), so training starts from the stage-1
function; batches are homogeneous in granularity (one expert per batch, what the released forward
supports; the step updates that expert's slice only); LR 1e-5, AdamW, no weight decay, cosine with 3 % warm-up, clipping 1.0, global batch 64,
one epoch (18,750 steps); an expert that no example of a batch was routed to is left untouched
(weights and Adam moments), like PyTorch's AdamW skipping parameters without gradients.
"""
from rsunivlm_jax.train.config_lib import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.name = "rsunivlm-1b-stage2"
    c.model.preset = "rsunivlm-1b"            # 3 experts, untied head
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "dots"           # no remat keeps ~12 GB of fp32 activations per 1k-token sequence
    c.model.dispatch = "auto"
    c.init.mode = "upcycle"                   # --config.init.path=<stage-1 workdir>
    c.init.source_preset = "llava-onevision-0.5b"
    c.optim.lr = 1e-5
    c.optim.weight_decay = 0.0
    c.optim.warmup_ratio = 0.03
    c.optim.trainable = (".*",)
    c.optim.expert_update = "selected"
    c.data.grouping = "granularity"
    c.train.global_batch = 64
    c.train.steps = 18_750
    c.ckpt.every = 1000
    c.eval.every = 1000
    return c
