"""Defaults shared by every training config (ml-collections; DESIGN section 7).

Every field exists here, so any of them can be overridden on the command line
(`--config.optim.lr=1e-5`, `--config.mesh.shape="(1,4,2)"`). Optional values are typed
placeholders (None until set). Stage files only change what differs; see docs/training.md for
the reasoning behind each recipe choice the paper leaves open (SPEC 6.2).
"""
from __future__ import annotations

from ml_collections import config_dict
from ml_collections.config_dict import placeholder


def base_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.name = "rsunivlm"

    # Model: a preset of rsunivlm_jax.presets plus overrides (ModelConfig.replace arguments).
    c.model = config_dict.ConfigDict()
    c.model.preset = "rsunivlm-1b"
    c.model.num_experts = placeholder(int)      # None: the preset's; 1 = dense stage 1
    c.model.tie_word_embeddings = placeholder(bool)
    c.model.dispatch = "grouped"                # G-MoE dispatch: "grouped" | "dense_mask"
    c.model.dtype = "bfloat16"                  # compute dtype
    c.model.param_dtype = "float32"             # master parameters (and grads, Adam moments)
    c.model.remat_policy = "none"               # "none" | "full" | "dots"
    c.model.overrides_json = ""                 # any other ModelConfig.replace kwargs, as JSON

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
    c.data.max_seq_len = 4096                   # expanded length (SPEC 6.3: <= 4096 suffices)
    c.data.max_images = 2                       # change tasks use two images
    c.data.truncation = "tail"
    c.data.lenient = True
    c.data.num_workers = 0
    c.data.seed = 0
    c.data.tokenizer = placeholder(str)         # tokenizer dir; default: the bundled Qwen2 files
    c.data.compact_vocab = False                # renumber token ids densely (tiny models only)
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

    c.train = config_dict.ConfigDict()
    c.train.steps = 1000
    c.train.global_batch = 32
    c.train.micro_batches = 1                   # gradient accumulation
    c.train.log_every = 10
    c.train.max_consecutive_nonfinite = 20      # stop (keeping the last good checkpoint) after this many
    c.train.progress = True
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


def get_config(arg=None) -> config_dict.ConfigDict:
    del arg
    return base_config()
