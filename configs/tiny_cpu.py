"""Tiny model on the built-in synthetic dataset, for tests, the CPU demo and smoke runs.

    rsunivlm-train --config configs/tiny_cpu.py --workdir runs/tiny1              # stage 1 (dense)
    rsunivlm-train --config configs/tiny_cpu.py:stage2 --workdir runs/tiny2 \
        --config.init.path=runs/tiny1                                              # stage 2 (G-MoE)

The `tiny` preset (64x64 images, 2+2 layers, width 64, 512 vocabulary rows) with the real Qwen2
tokenizer through a compact vocabulary (`data.compact_vocab`), float32 on one device. Masks use an
8x8 grid (not the paper's 24x24) so that [SEG] answers stay under ~200 tokens: attention over
long sequences dominates a tiny model's step time on a CPU. The
synthetic data (train + held-out split) is generated under `<workdir>/data/synthetic` unless
`data.synthetic.dir` points elsewhere (stage 2 reuses stage 1's files when given that path).
Argument: "stage1" (default; dense, 1 expert) or "stage2" (3 experts up-cycled from stage 1).
"""
from rsunivlm_jax.train.config_lib import base_config


def get_config(arg=None):
    stage = (arg or "stage1").strip()
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"tiny_cpu config argument must be 'stage1' or 'stage2', got {arg!r}")
    c = base_config()
    c.name = f"tiny-cpu-{stage}"
    c.model.preset = "tiny"
    c.model.dtype = "float32"
    c.model.num_experts = 1 if stage == "stage1" else 3
    c.mesh.shape = (1, 1, 1)
    c.data.compact_vocab = True
    c.data.max_text_len = 256             # longest synthetic sample at grid 8 is ~200 tokens
    c.data.max_seq_len = 512              # + 2 images x 64 extra positions
    c.data.synthetic.num = 600
    c.data.synthetic.eval_num = 60
    c.data.synthetic.image_size = 64
    c.data.synthetic.grid_size = 8        # 8x8 mask grid (one cell = 8x8 pixels) keeps [SEG] answers short
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.0
    c.optim.clip = 1.0
    c.train.steps = 300
    c.train.global_batch = 8
    c.train.log_every = 10
    c.ckpt.every = 100
    c.ckpt.keep = 2
    c.eval.every = 100
    c.eval.batches = 4
    if stage == "stage2":
        c.init.mode = "upcycle"
        c.model.dispatch = "auto"
    return c
