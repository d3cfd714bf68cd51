"""LoRA fine-tuning of a converted RSUniVLM checkpoint on your own records (docs/finetune.md).

    rsunivlm-train --config configs/lora_finetune.py --workdir runs/lora \
        --config.init.path=ckpt/rsunivlm-1b --config.data.tokenizer=ckpt/rsunivlm-1b \
        --config.data.train=data/mine/train.jsonl --config.data.eval=data/mine/val.jsonl

The model is the checkpoint's (`model.preset="init"`: the architecture read from `init.path`;
`data.tokenizer` names the tokenizer files, which a converted checkpoint holds). Its weights stay
frozen and are held once, in bfloat16 (`lora.base_dtype`); rank-16 adapters (alpha 32, dropout
0.05, a common starting point) on the decoder's attention projections, on every G-MoE expert's
gate/up/down (one adapter per expert, routed with its expert) and on the connector are trained with AdamW (lr 2e-4, cosine with 3 % warm-up, no weight
decay, clipping 1.0), batch 16 in granularity-homogeneous batches. Checkpoints hold the adapters
and their optimiser state only. `--config.lora.targets` adds the vision tower ("vision") or picks
modules by name or path regex (`rsunivlm_jax.lora.config`).

Argument "tiny": the same recipe at the scale of a tiny converted model (float32, one device, a
few steps): what the tests run end to end.
"""
from rsunivlm_jax.train.config_lib import base_config


def get_config(arg=None):
    variant = (arg or "full").strip()
    if variant not in ("full", "tiny"):
        raise ValueError(f"lora_finetune config argument must be 'full' or 'tiny', got {arg!r}")
    c = base_config()
    c.name = f"lora-finetune-{variant}"
    c.model.preset = "init"                   # the architecture of the checkpoint at init.path
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "dots"             # ~12 GB of float32 activations per 1k-token sequence without
    c.init.mode = "params"                    # --config.init.path=<converted checkpoint>
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.dropout = 0.05
    c.lora.targets = ("attention", "experts", "connector")
    c.lora.base_dtype = "bfloat16"
    c.optim.lr = 2e-4
    c.optim.weight_decay = 0.0
    c.optim.warmup_ratio = 0.03
    c.optim.clip = 1.0
    c.optim.expert_update = "selected"
    c.data.grouping = "granularity"
    c.train.global_batch = 16
    c.train.steps = 2000
    c.ckpt.every = 250
    c.eval.every = 250
    c.eval.batches = 8
    if variant == "tiny":
        c.model.dtype = "float32"
        c.model.remat_policy = "none"
        c.mesh.shape = (1, 1, 1)
        c.lora.rank = 4
        c.lora.alpha = 8.0
        c.lora.dropout = 0.0
        c.lora.base_dtype = "float32"
        c.optim.lr = 1e-2
        c.optim.warmup_steps = 2
        c.data.max_text_len = 128
        c.data.max_seq_len = 256
        c.train.global_batch = 4
        c.train.steps = 8
        c.train.log_every = 2
        c.train.progress = False
        c.ckpt.every = 4
        c.ckpt.keep = 2
        c.eval.every = 4
        c.eval.batches = 2
        c.metrics.tensorboard = False
    return c
