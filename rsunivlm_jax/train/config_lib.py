"""Experiment configs as ml-collections data: the training defaults, the main job's settings, and
the trainer configs the main job derives from them; plus the loader of config files by path.

* `base_config()`: every field a training config has (`rsunivlm_jax.train.trainer`), so any of
  them can be overridden on the command line (`--config.optim.lr=1e-5`,
  `--config.model.overrides="{'decoder': {'rms_norm_eps': 1e-5}}"`). Optional values are typed
  placeholders (None until set). The files in `configs/` start from it and change what differs
  (docs/training.md explains the recipe choices).
* `demo_config(variant)`: the main job's settings (`rsunivlm_jax.demo`, docs/demo.md), variants
  "full", "quick" and "ci"; `demo_stage_config(cfg, stage, ...)`: the trainer config of one of its
  training stages.
* `load_config_file("configs/x.py:arg")`: a config file's `get_config(arg)`, loaded by path (the
  big_vision / absl `config_flags` convention; `configs/` is not a package).
"""
from __future__ import annotations

import importlib.util
import os

from ml_collections import config_dict
from ml_collections.config_dict import placeholder

DEMO_VARIANTS = ("full", "quick", "ci")
DEMO_STAGES = ("stage1", "gmoe", "dense")


def base_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.name = "rsunivlm"

    # Model: a preset of rsunivlm_jax.presets plus overrides (ModelConfig.replace arguments).
    c.model = config_dict.ConfigDict()
    c.model.preset = "rsunivlm-1b"
    c.model.num_experts = placeholder(int)      # None: the preset's; 1 = dense stage 1
    c.model.tie_word_embeddings = placeholder(bool)
    c.model.dispatch = "auto"                   # G-MoE strategy for mixed batches: auto | dense_mask | ragged | gather
    c.model.dtype = "bfloat16"                  # compute dtype
    c.model.param_dtype = "float32"             # master parameters (and grads, Adam moments)
    c.model.remat_policy = "none"               # "none" | "full" | "dots" | "dots_all"
    c.model.overrides = config_dict.ConfigDict()  # any other ModelConfig.replace kwargs (nested)

    # Initialisation (ignored when the workdir already has a checkpoint: the run resumes).
    c.init = config_dict.ConfigDict()
    c.init.mode = "random"                      # "random" | "params" | "upcycle"
    c.init.path = placeholder(str)              # converted checkpoint dir or a stage-1 workdir
    c.init.source_preset = placeholder(str)     # model of `path` when it has no meta (converted dirs)
    c.init.seed = 0

    # Device mesh (data, fsdp, tensor); one -1 takes the remaining devices.
    c.mesh = config_dict.ConfigDict()
    c.mesh.shape = (1, -1, 1)
    c.mesh.axes = ("data", "fsdp", "tensor")
    c.sharding = config_dict.ConfigDict()
    c.sharding.preset = "fsdp"                  # "fsdp" | "fsdp_tensor" (rsunivlm_jax.sharding.RULES)

    # Data (rsunivlm_jax.data.pipeline.make_dataset).
    c.data = config_dict.ConfigDict()
    c.data.train = ""                           # comma-separated record files / dirs / TFDS dirs
    c.data.train_split = placeholder(str)
    c.data.eval = ""                            # held-out sources for the periodic eval loss
    c.data.eval_split = placeholder(str)
    c.data.grouping = "granularity"             # "granularity" (homogeneous batches) | "mixed"
    c.data.max_text_len = 2048
    c.data.max_seq_len = 4096                   # expanded length (text + image positions)
    c.data.max_images = 2                       # change tasks use two images
    c.data.truncation = "tail"
    c.data.lenient = True
    c.data.num_workers = 0
    c.data.seed = 0
    c.data.tokenizer = placeholder(str)         # tokenizer dir; default: the bundled Qwen2 files
    c.data.compact_vocab = False                # renumber token ids densely (tiny models only)
    c.data.task_weights = config_dict.ConfigDict()  # {task: weight}: mix by task (make_task_mixture)
    c.data.granularity_text_len = ()            # with task_weights: text slots per granularity
    c.data.synthetic = config_dict.ConfigDict()
    c.data.synthetic.num = 0                    # > 0 and no data.train: generate this many scenes
    c.data.synthetic.eval_num = 0
    c.data.synthetic.image_size = placeholder(int)
    c.data.synthetic.grid_size = 24
    c.data.synthetic.seed = 0
    c.data.synthetic.tasks = ("cap", "vqa", "cls", "vg", "ref", "seg", "ccd", "cd")
    c.data.synthetic.dir = ""

    # Optimiser (rsunivlm_jax.train.optim).
    c.optim = config_dict.ConfigDict()
    c.optim.name = "adamw"
    c.optim.lr = 1e-5
    c.optim.vision_lr = placeholder(float)      # None: optim.lr
    c.optim.connector_lr = placeholder(float)
    c.optim.decoder_lr = placeholder(float)
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.clip = 1.0                          # global-norm clipping; <= 0 disables
    c.optim.warmup_ratio = 0.03
    c.optim.warmup_steps = placeholder(int)     # overrides warmup_ratio
    c.optim.min_lr_ratio = 0.0
    c.optim.trainable = (".*",)                 # regexes over parameter paths
    c.optim.no_decay = (r".*/bias", r".*norm[^/]*/.*", r".*embed_tokens/.*", r".*position_embedding/.*",
                        r"connector/image_newline")
    c.optim.expert_update = "selected"          # "selected": unrouted experts keep weights and moments

    # LoRA (rsunivlm_jax.lora, docs/finetune.md): rank > 0 trains adapters on a frozen base instead.
    c.lora = config_dict.ConfigDict()
    c.lora.rank = 0                             # 0: full fine-tuning
    c.lora.alpha = 32.0                         # update scale alpha / rank (alpha / sqrt(rank) with use_rslora)
    c.lora.dropout = 0.0                        # on the adapters' input (expert adapters take none)
    c.lora.targets = ("attention", "experts", "connector")  # groups, module names or path regexes
    c.lora.use_rslora = False
    c.lora.base_dtype = placeholder(str)        # dtype the frozen base is held in; None: model.param_dtype

    c.train = config_dict.ConfigDict()
    c.train.steps = 1000
    c.train.global_batch = 32
    c.train.micro_batches = 1                   # gradient accumulation
    c.train.log_every = 10
    c.train.max_consecutive_nonfinite = 20      # stop (keeping the last good checkpoint) after this many
    c.train.progress = True
    c.train.loss_weighting = "token"            # "token" | "sample" | "sqrt" (rsunivlm_jax.train.loss)
    c.train.transfer_guard = "disallow"         # jax.transfer_guard around the step call: "allow" | "log" | "disallow"

    c.ckpt = config_dict.ConfigDict()
    c.ckpt.dir = ""                             # default <workdir>/checkpoints; may be gs://... (Orbax)
    c.ckpt.every = 500
    c.ckpt.keep = 3
    c.ckpt.async_save = True

    c.eval = config_dict.ConfigDict()
    c.eval.every = 500
    c.eval.batches = 8

    c.metrics = config_dict.ConfigDict()
    c.metrics.tensorboard = True
    c.metrics.peak_flops_per_device = placeholder(float)  # None: from the device kind (bf16 peak)
    return c


def load_config_file(spec: str) -> config_dict.ConfigDict:
    """``"path/to/file.py[:arg]"`` -> that file's ``get_config(arg)`` (the file is loaded by path)."""
    path, _, arg = str(spec).partition(".py:")
    path = path if path.endswith(".py") else path + ".py"
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config()")
    return module.get_config(arg) if arg else module.get_config()


# ---- the main job ------------------------------------------------------------------------------

def demo_config(variant: str | None = None) -> config_dict.ConfigDict:
    """Settings of the main job; choices and their reasons in docs/demo.md.

    * data: the synthetic dataset at 64 px with an 8x8 mask grid (a [SEG] answer is 40-220 tokens
      instead of ~600 at the paper's 24x24);
    * tokenizer: a byte-level BPE trained on the synthetic text with the Qwen2 pre-tokenizer
      (`rsunivlm_jax.data.bpe`), so the embedding has a few hundred rows instead of 151,936;
    * model: the `tiny` preset with a wider decoder; stage 1 dense, stage 2 three experts
      up-cycled from stage 1;
    * budget: the dense baseline trains as many stage-2 steps as the G-MoE model, on the same
      batches (same total budget).
    """
    variant = (variant or "full").strip()
    if variant not in DEMO_VARIANTS:
        raise ValueError(f"demo config argument must be one of {DEMO_VARIANTS}, got {variant!r}")
    c = config_dict.ConfigDict()
    c.variant = variant
    c.seed = 0

    # Synthetic data (rsunivlm_jax.data.synthetic.write_dataset): scenes per split; every scene
    # gives one record per task, so the held-out split has `num_eval` records of each task.
    c.data = config_dict.ConfigDict()
    c.data.num_train = 1000
    c.data.num_eval = 200               # one record per task and scene: 200 held-out records per task
    c.data.image_size = 64
    c.data.grid_size = 8
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.num_workers = 0               # scene-generation worker processes (0: in-process)
    # Training mixtures: relative sampling weight of each task's records. Captions and region
    # captions learn fastest, boxes and change masks slowest; stage 2 (G-MoE and, on the same
    # batches, the dense baseline) leans further towards the region- and pixel-level tasks.
    c.data.task_weights = config_dict.ConfigDict(dict(
        cls=1.0, vqa=2.0, cap=1.0, ccd=1.0, vg=1.5, ref=1.0, seg=1.0, cd=2.0))
    c.data.stage2_task_weights = config_dict.ConfigDict(dict(
        cls=1.0, vqa=1.0, cap=0.5, ccd=0.5, vg=1.5, ref=0.5, seg=1.0, cd=2.5))

    # Tokenizer trained on the synthetic training text (rsunivlm_jax.data.bpe).
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

    # Training (rsunivlm_jax.train.trainer; one CPU device). Stage 1: 2,000 steps (with 1,000 the
    # grounding boxes and yes/no answers did not depend on the image in every seed; docs/demo.md).
    # Stage 2 steps: the G-MoE model and, on the same batches, the dense baseline. Learning rate: at
    # 3e-3 the image pathway often stayed unused (classification at chance in 2 of 10 runs, below 0.6
    # in 3 more); at 1e-3 all three runs read the image (cls >= 0.95; docs/demo.md). Text slots: ~95 %
    # of 8x8 mask conversations fit in max_text_len (the rest lose their last rows); image- and
    # region-level batches get short_text_len (their conversations need < 70). Loss weighting:
    # "token" (the reference: every target token weighs the same), "sample" (every example weighs
    # the same) or "sqrt" (rsunivlm_jax.train.loss). eval_every: the held-out loss (a few batches)
    # for the loss curves.
    c.train = config_dict.ConfigDict(dict(
        global_batch=16, stage1_steps=2000, stage2_steps=300, lr=1e-3, stage2_lr=5e-4, warmup_steps=20, clip=1.0,
        weight_decay=0.0, max_text_len=160, short_text_len=72, loss_weighting="sample", log_every=10,
        ckpt_every=200, eval_every=200, eval_batches=4))

    # Evaluation (rsunivlm_jax.eval) on the held-out split.
    c.eval = config_dict.ConfigDict()
    c.eval.per_task = 200                # records per task (<= data.num_eval)
    c.eval.batch_size = 100
    c.eval.constrained = True            # grammar-constrained [VG] boxes and [SEG] masks
    c.eval.caption_mode = "java_free"    # "auto" uses the official Java PTB tokenizer + METEOR when found
    c.eval.max_prompt_len = 128
    # One token budget for every task: the longest 8x8 mask answer is ~220 tokens, decoding stops
    # when every row has ended, and a shared budget lets tasks share compiled generate programs.
    # 0: the per-task defaults of `rsunivlm_jax.inference.generate.default_max_new_tokens`.
    c.eval.max_new_tokens = 256
    c.eval.num_examples = 4              # example pictures per task and model
    # Control run: the G-MoE model with each held-out record's image(s) swapped for another record's
    # of the same task. The gap to the real images is what is read from the image.
    c.eval.shuffled_control = True

    if variant == "quick":
        c.data.num_train, c.data.num_eval = 400, 24
        c.train.stage1_steps, c.train.stage2_steps = 150, 60
        c.train.ckpt_every = c.train.eval_every = 50
        c.eval.per_task = c.eval.batch_size = 24
    elif variant == "ci":                # the shortened pipeline of the tests (seconds of training)
        c.data.num_train, c.data.num_eval = 48, 6
        c.model.decoder.hidden_size, c.model.decoder.intermediate_size = 64, 128
        c.train.global_batch = 4
        c.train.stage1_steps, c.train.stage2_steps = 24, 12
        c.train.warmup_steps = c.train.log_every = 4
        c.train.ckpt_every = 8
        c.train.eval_every = c.train.eval_batches = 0
        c.eval.max_new_tokens = 64
        c.eval.per_task = c.eval.batch_size = 4
        c.eval.num_examples = 1
    return c


def demo_model_overrides(cfg, tokenizer_vocab: int) -> dict:
    """`ModelConfig.replace` arguments of the main job's model, its vocabulary sized to the tokenizer.

    Rows: the tokenizer's ids, then the image placeholder (`image_token_id` = tokenizer size),
    rounded up to a multiple of 8; generation never emits rows >= `tokenizer_vocab_size`.
    """
    rows = -(-(int(tokenizer_vocab) + 1) // 8) * 8
    return {"image_token_id": int(tokenizer_vocab), "pad_token_id": 0, "tokenizer_vocab_size": int(tokenizer_vocab),
            "decoder": {**cfg.model.decoder.to_dict(), "vocab_size": rows},
            "vision": {**cfg.model.vision.to_dict(), "image_size": int(cfg.data.image_size)}}


def demo_stage_config(cfg, stage: str, *, data_dir: str, tokenizer_dir: str, stage1_dir: str,
                      tokenizer_vocab: int) -> config_dict.ConfigDict:
    """The trainer config of a main-job training stage: "stage1" (dense), "gmoe" (up-cycled from
    stage 1) or "dense" (stage 1 continued on the same batches as "gmoe")."""
    import rsunivlm_jax as rs
    from rsunivlm_jax import tasks

    if stage not in DEMO_STAGES:
        raise ValueError(f"stage must be one of {DEMO_STAGES}, got {stage!r}")
    t, first = cfg.train, stage == "stage1"
    overrides = demo_model_overrides(cfg, tokenizer_vocab)
    tokens_per_image = rs.presets.get(cfg.model.preset).replace(**overrides).tokens_per_image
    c = base_config()
    c.name = f"demo-{stage}"
    c.model.preset = cfg.model.preset
    c.model.num_experts = int(cfg.model.num_experts) if stage == "gmoe" else 1
    c.model.dtype = "float32"
    c.model.overrides = config_dict.ConfigDict(overrides)
    c.mesh.shape = (1, 1, 1)
    c.data.train = os.path.join(data_dir, f"{cfg.data.train_split}.jsonl")
    c.data.eval = os.path.join(data_dir, f"{cfg.data.eval_split}.jsonl") if int(t.eval_batches) > 0 else ""
    c.data.tokenizer = str(tokenizer_dir)
    c.data.max_text_len = int(t.max_text_len)
    c.data.max_seq_len = int(t.max_text_len) + 2 * tokens_per_image
    c.data.max_images = 2
    c.data.truncation = "tail"           # the few mask conversations over max_text_len lose their last rows
    c.data.seed = int(cfg.seed) if first else int(cfg.seed) + 1  # gmoe and dense: the same batches
    c.data.task_weights = (cfg.data.task_weights if first else cfg.data.stage2_task_weights).to_dict()
    # One static shape per granularity: long text slots where the answers are masks.
    c.data.granularity_text_len = tuple(
        int(t.max_text_len) if any(tasks.TASK_GRANULARITY[m] == g for m in tasks.MASK_TASKS) else int(t.short_text_len)
        for g in range(3))
    c.optim.lr = float(t.lr) if first else float(t.stage2_lr)
    c.optim.warmup_steps = int(t.warmup_steps)
    c.optim.clip = float(t.clip)
    c.optim.weight_decay = float(t.weight_decay)
    c.train.steps = int(t.stage1_steps) if first else int(t.stage2_steps)
    c.train.global_batch = int(t.global_batch)
    c.train.log_every = int(t.log_every)
    c.train.loss_weighting = str(t.loss_weighting)
    c.ckpt.every = int(t.ckpt_every)
    c.ckpt.keep = 2
    c.eval.every = int(t.eval_every)
    c.eval.batches = int(t.eval_batches)
    c.init.seed = int(cfg.seed)
    c.init.mode = "random" if first else ("upcycle" if stage == "gmoe" else "params")
    if not first:
        c.init.path = str(stage1_dir)
    return c
