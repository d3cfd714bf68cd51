"""Settings of the main job (`python -m rsunivlm_jax.demo`, docs/demo.md), as ml-collections configs.

    from configs import demo
    cfg = demo.get_config()          # "full": the README demo, about 11 minutes on a 2-core CPU
    cfg = demo.get_config("quick")   # a few minutes: smaller data, fewer steps (--quick)
    cfg = demo.get_config("ci")      # the shortened pipeline of tests/test_demo.py (well under a minute of training)

Override any field from the command line: ``python -m rsunivlm_jax.demo --set train.stage1_steps=200``.

The demo's training stages are built on the training library (`rsunivlm_jax.train.trainer`, the
`configs/tiny_cpu.py` recipe) with the fields below filled in; `rsunivlm_jax.demo.trainer_config`
shows the mapping. Choices and their reasons:

* Data: the built-in synthetic dataset (docs/synthetic.md) at 64 px with an 8x8 mask grid, so a
  [SEG] answer is ~40-200 tokens instead of ~600 at the paper's 24x24.
* Tokenizer: a byte-level BPE trained on the synthetic training text with the Qwen2
  pre-tokenizer (digits split one by one, as in the real model), so the embedding table has a
  few hundred rows instead of 151,936.
* Model: the `tiny` preset (SigLIP-style tower 2 x 64 wide on 8 px patches, Qwen2-style decoder)
  with a wider decoder; stage 1 dense, stage 2 three experts up-cycled from stage 1.
* Budget: the dense baseline trains for exactly as many stage-2 steps, on the same batches, as
  the G-MoE model (same total budget: stage 1 + stage 2).
"""
from __future__ import annotations

from ml_collections import config_dict

VARIANTS = ("full", "quick", "ci")


def base_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.variant = "full"
    c.seed = 0

    # Synthetic data (rsunivlm_jax.data.synthetic.write_dataset): scenes per split; every scene
    # gives one record per task, so the held-out split has `num_eval` records of each task.
    c.data = config_dict.ConfigDict()
    c.data.num_train = 1000
    c.data.num_eval = 60
    c.data.image_size = 64
    c.data.grid_size = 8
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.num_workers = 0               # scene-generation worker processes (0: in-process)
    # Training mixtures: relative sampling weight of each task's records (the data set has one record
    # per task and scene). Captions and region captions learn fastest, boxes and change masks
    # slowest; stage 2 (G-MoE and, on the same batches, the dense baseline) leans further towards
    # the region- and pixel-level tasks.
    c.data.task_weights = config_dict.ConfigDict(dict(
        cls=1.0, vqa=2.0, cap=1.0, ccd=1.0, vg=1.5, ref=1.0, seg=1.0, cd=2.0))
    c.data.stage2_task_weights = config_dict.ConfigDict(dict(
        cls=1.0, vqa=1.0, cap=0.5, ccd=0.5, vg=1.5, ref=0.5, seg=1.0, cd=2.5))

    # Tokenizer trained on the synthetic training corpus (rsunivlm_jax.demo.train_tokenizer).
    c.tokenizer = config_dict.ConfigDict()
    c.tokenizer.vocab_size = 1024        # an upper bound: the templated corpus saturates below it
    c.tokenizer.min_frequency = 2

    # Model: `presets.get(preset)` with these overrides (vocabulary fields come from the tokenizer).
    c.model = config_dict.ConfigDict()
    c.model.preset = "tiny"
    c.model.decoder = config_dict.ConfigDict(dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    c.model.vision = config_dict.ConfigDict(dict(
        patch_size=8, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
        num_layers_used=2))
    c.model.num_experts = 3              # stage 2 (G-MoE); stage 1 and the dense baseline have 1

    # Training (rsunivlm_jax.train.trainer; one CPU device).
    c.train = config_dict.ConfigDict()
    c.train.global_batch = 16
    c.train.stage1_steps = 1000
    c.train.stage2_steps = 300           # G-MoE stage 2 and, with the same batches, the dense baseline
    # At 3e-3 the image pathway often stayed unused (classification at chance in 2 of 10 runs, below
    # 0.6 in 3 more); at 1e-3 all three runs read the image (cls >= 0.95; docs/demo.md).
    c.train.lr = 1e-3
    c.train.stage2_lr = 5e-4
    c.train.warmup_steps = 20
    c.train.clip = 1.0
    c.train.weight_decay = 0.0
    # Text slots of pixel-level batches: ~95 % of 8x8 mask conversations fit (the rest lose their
    # last rows). Image- and region-level batches get short_text_len (their conversations need < 70).
    c.train.max_text_len = 160
    c.train.short_text_len = 72
    # "token" (the reference: every target token weighs the same), "sample" (every example weighs
    # the same) or "sqrt"; see rsunivlm_jax.demo.weight_loss_mask and docs/demo.md.
    c.train.loss_weighting = "sample"
    c.train.log_every = 10
    c.train.ckpt_every = 200
    c.train.eval_every = 200             # held-out loss (a few batches) for the loss curves
    c.train.eval_batches = 4

    # Evaluation (rsunivlm_jax.eval.cli.evaluate) on the held-out split.
    c.eval = config_dict.ConfigDict()
    c.eval.per_task = 60                 # records per task (<= data.num_eval)
    c.eval.batch_size = 60
    c.eval.constrained = True            # grammar-constrained [VG] boxes and [SEG] masks
    c.eval.caption_mode = "java_free"    # "auto" uses the official Java PTB tokenizer + METEOR when found
    c.eval.max_prompt_len = 128
    # One token budget for every task: the longest 8x8 mask answer is ~220 tokens, decoding stops
    # when every row has ended, and a shared budget lets tasks share compiled generate programs.
    # 0: the per-task defaults of `rsunivlm_jax.inference.generate.default_max_new_tokens`.
    c.eval.max_new_tokens = 256
    c.eval.num_examples = 4              # example pictures per task and model
    # Control run: the G-MoE model with each held-out record's image(s) swapped for another record's
    # (rsunivlm_jax.demo.shuffled_images). The gap to the real images is what is read from the image.
    c.eval.shuffled_control = True
    return c


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    variant = (arg or "full").strip()
    if variant not in VARIANTS:
        raise ValueError(f"demo config argument must be one of {VARIANTS}, got {arg!r}")
    c = base_config()
    c.variant = variant
    if variant == "quick":
        c.data.num_train = 400
        c.data.num_eval = 24
        c.train.stage1_steps = 150
        c.train.stage2_steps = 60
        c.train.ckpt_every = 50
        c.train.eval_every = 50
        c.eval.per_task = 24
        c.eval.batch_size = 24
    elif variant == "ci":
        c.data.num_train = 48
        c.data.num_eval = 6
        c.model.decoder.hidden_size = 64
        c.model.decoder.intermediate_size = 128
        c.train.global_batch = 4
        c.train.stage1_steps = 24
        c.train.stage2_steps = 12
        c.train.warmup_steps = 4
        c.train.log_every = 4
        c.train.ckpt_every = 8
        c.train.eval_every = 0
        c.train.eval_batches = 0
        c.eval.max_new_tokens = 64
        c.eval.per_task = 4
        c.eval.batch_size = 4
        c.eval.num_examples = 1
    return c
