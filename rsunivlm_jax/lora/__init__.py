"""LoRA adapters for the G-MoE model (peft's LoRA), trained by the trainer, exported in peft's format.

Modules: `config` (`LoraConfig`: rank, alpha, dropout, targets; which modules they select),
`adapters` (the `flax.nnx.LoRA` adapters attached to the model, their parameter tree, merging),
`step` (train / eval steps with the frozen base as an argument), `train` (what the trainer does
when `config.lora.rank > 0`), `peft_format` (`adapter_config.json` + `adapter_model.safetensors`,
export and import) and `cli` (`rsunivlm-lora export | merge`). See docs/finetune.md.

    from rsunivlm_jax.lora import adapters, LoraConfig
    lora = LoraConfig(rank=16, alpha=32, targets=("attention", "experts"))
    ad = adapters.init(config, lora, rng=0)
    logits = rs.forward(adapters.graphdef(config, lora), adapters.combine(params, ad), ids, pixels, g)
"""
from rsunivlm_jax.lora.config import LoraConfig

__all__ = ["LoraConfig"]
