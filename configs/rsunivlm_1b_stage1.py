"""RSUniVLM-1B stage 1: dense multi-task instruction tuning from LLaVA-OneVision-0.5B.

    rsunivlm-train --config configs/rsunivlm_1b_stage1.py --workdir runs/stage1 \
        --config.init.path=converted/llava-onevision-qwen2-0.5b-ov --config.data.train=data/rs_mix

Known from the release: initialised from LLaVA-OV-0.5B (SigLIP-so400m + mlp2x_gelu + Qwen2-0.5B, tied
head), square 384x384 images, one view per image, bf16 training, dense decoder.
Chosen here because the paper leaves them open (all assumptions, see docs/training.md):
LLaVA-OneVision `finetune_ov.sh` defaults -- AdamW, LR 1e-5 for the LLM and the projector and 2e-6
for the vision tower, no weight decay, cosine schedule with 3 % warm-up,
gradient clipping at 1.0 -- global batch 64, one epoch over the ~1.2 M-sample mix (18,750 steps),
all parts trained, batches grouped by granularity (the same pipeline as stage 2), text <= 2048
tokens and expanded sequence <= 4096 positions.
"""
from rsunivlm_jax.train.config_lib import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.name = "rsunivlm-1b-stage1"
    c.model.preset = "llava-onevision-0.5b"   # dense (1 expert), tied embeddings
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "dots"           # no remat keeps ~12 GB of fp32 activations per 1k-token sequence
    c.init.mode = "params"                    # --config.init.path=<converted LLaVA-OV-0.5B>
    c.init.source_preset = "llava-onevision-0.5b"
    c.optim.lr = 1e-5
    c.optim.vision_lr = 2e-6
    c.optim.weight_decay = 0.0
    c.optim.warmup_ratio = 0.03
    c.optim.trainable = (".*",)
    c.train.global_batch = 64
    c.train.steps = 18_750
    c.ckpt.every = 1000
    c.eval.every = 1000
    return c
