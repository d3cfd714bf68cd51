"""docs/finetune.md end to end on a tiny converted checkpoint, through the command lines:
convert -> LoRA fine-tune -> merge -> evaluate -> export (peft adapters, and merged weights to torch).
The exported adapters, loaded by peft into the original transformers model, give our merged
model's logits."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import hf_utils as H

torch = H.torch
transformers = H.transformers
import peft  # noqa: E402

import rsunivlm_jax as rs  # noqa: E402
from rsunivlm_jax import checkpoints  # noqa: E402
from rsunivlm_jax.convert.__main__ import main as convert_main  # noqa: E402
from rsunivlm_jax.data import bpe, synthetic  # noqa: E402
from rsunivlm_jax.data.tokenizer import Tokenizer  # noqa: E402
from rsunivlm_jax.eval.cli import main as eval_main  # noqa: E402
from rsunivlm_jax.lora.cli import main as lora_main  # noqa: E402
from rsunivlm_jax.train.cli import main as train_main  # noqa: E402
from tests.config_files import REPO  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _llava_for(tokenizer_size: int):
    """A tiny transformers LlavaOnevision whose vocabulary holds the tokenizer plus `<image>`."""
    rows = int(math.ceil((tokenizer_size + 1) / 8) * 8)
    text = H.qwen2_hf_config(vocab=rows)
    vision = H.siglip_hf_config(layers=2)
    cfg = transformers.LlavaOnevisionConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_index=tokenizer_size,
        video_token_index=rows - 1, vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[32, 32]], projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=True)
    torch.manual_seed(0)
    return transformers.LlavaOnevisionForConditionalGeneration(cfg).eval()


def test_convert_finetune_evaluate_export(tmp_path):
    data = tmp_path / "data"
    synthetic.write_dataset(str(data), 32, image_size=64, split="train", grid_size=8, tasks=("cls",), progress=False)
    synthetic.write_dataset(str(data), 8, image_size=64, split="val", grid_size=8, tasks=("cls",), progress=False)
    records = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    src = tmp_path / "hf"
    bpe.train_tokenizer(bpe.corpus_texts(records), src, vocab_size=400)
    tok_size = Tokenizer.from_dir(src).vocab_size
    model = _llava_for(tok_size)
    model.save_pretrained(str(src))

    conv, run, merged = tmp_path / "converted", tmp_path / "run", tmp_path / "merged"
    assert convert_main(["--src", str(src), "--dst", str(conv), "--quiet", "--no-hash"]) == 0
    assert train_main(["--config", str(REPO / "configs" / "lora_finetune.py:tiny"), "--workdir", str(run),
                       f"--config.init.path={conv}", f"--config.data.train={data / 'train.jsonl'}",
                       f"--config.data.eval={data / 'val.jsonl'}", f"--config.data.tokenizer={conv}"]) == 0
    assert lora_main(["merge", "--run", str(run), "--dst", str(merged)]) == 0
    assert eval_main(["--checkpoint", str(merged), "--task", "cls", "--data", str(data / "val.jsonl"), "--out",
                      str(tmp_path / "eval"), "--limit", "4", "--examples", "0", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["results"]["cls"]["n"] == 4
    assert lora_main(["export", "--run", str(run), "--dst", str(tmp_path / "adapter")]) == 0
    assert convert_main(["--to-torch", "--src", str(merged), "--dst", str(tmp_path / "torch"), "--quiet"]) == 0
    assert lora_main(["merge", "--run", str(run), "--dst", str(merged)]) == 2  # refuses to overwrite

    # peft reads the exported adapters into the original model: the same function as our merged model.
    ours = checkpoints.load(merged)
    assert ours.meta["lora_merged"]["step"] == 8 and ours.meta["source"]["layout"] == "hf_saved_5x"
    pm = peft.PeftModel.from_pretrained(model, str(tmp_path / "adapter")).eval()
    rng = np.random.default_rng(0)
    text = rng.integers(3, tok_size, 12).tolist()
    per_image = (32 // 8) ** 2 + 1
    ids = np.array([text[:3] + [tok_size] + text[3:]], np.int32)
    hf_ids = np.array([text[:3] + [tok_size] * per_image + text[3:]])
    pixels = rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    ref = H.llava_ref_logits(pm, hf_ids, pixels)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(rs.forward(ours.graphdef, ours.params, jnp.asarray(ids), jnp.asarray(pixels)[None],
                                    jnp.zeros(1, jnp.int32)))
    with pm.disable_adapter():
        base_ref = H.llava_ref_logits(pm, hf_ids, pixels)
    assert np.abs(ref - base_ref).max() > 1e-3  # the fine-tuning changed the model
    assert np.abs(got - ref).max() <= 1e-4

    # The merged torch export holds peft's merged weights.
    from safetensors.numpy import load_file
    exported = load_file(str(tmp_path / "torch" / "model.safetensors"))
    merged_hf = pm.merge_and_unload().state_dict()
    for ours_key, hf_key in (("model.layers.1.self_attn.v_proj.weight", "model.language_model.layers.1.self_attn.v_proj.weight"),
                             ("model.layers.0.mlp.down_proj.weight", "model.language_model.layers.0.mlp.down_proj.weight"),
                             ("model.mm_projector.2.weight", "model.multi_modal_projector.linear_2.weight")):
        np.testing.assert_allclose(exported[ours_key], H.to_np(merged_hf[hf_key]), atol=1e-6, err_msg=ours_key)
