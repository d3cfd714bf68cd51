"""Up-cycling: the stage-2 G-MoE model right after initialisation from a stage-1 checkpoint gives
the stage-1 logits for every granularity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsunivlm_jax as rs
from tests.config_files import load as load_config
from rsunivlm_jax import sharding as shd
from rsunivlm_jax.train import checkpoint as ckpt_lib, step as step_lib, trainer as trainer_lib
from rsunivlm_jax.train.upcycle import check_compatible, upcycle

from tests.train import helpers as H


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


def _save_stage1(workdir, cfg, params):
    mesh = rs.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    opt = H.optimizer(params)
    ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), keep=1, every=1)
    ckpt.save(7, step_lib.init_state(params, opt),
              meta=ckpt_lib.make_meta(experiment={}, model_config=cfg.to_dict(), mesh=mesh, rules=shd.get_rules("fsdp"), step=7))
    ckpt.close()


def test_upcycled_stage2_reproduces_stage1_logits_for_every_granularity(tmp_path):
    # Stage 1: dense (one expert) with a tied head, like LLaVA-OneVision-0.5B.
    stage1 = H.tiny(num_experts=1).replace(decoder={"tie_word_embeddings": True})
    _, params1 = rs.init(stage1, 3)
    _save_stage1(tmp_path / "stage1", stage1, params1)

    # Stage 2 through the trainer's own initialisation path (init.mode="upcycle").
    config = load_config("tiny_cpu.py:stage2")
    config.init.path = str(tmp_path / "stage1")
    tr = trainer_lib.Trainer(config, str(tmp_path / "stage2"))
    assert tr.model.gmoe.num_experts == 3 and not tr.model.decoder.tie_word_embeddings
    params2 = tr.initial_params()
    graph2, _ = rs.abstract_init(tr.model)
    graph1, _ = rs.abstract_init(stage1)

    mlp = params2["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert mlp.shape[1] == 3
    np.testing.assert_array_equal(np.asarray(params2["lm_head"]["kernel"]),
                                  np.asarray(params1["decoder"]["embed_tokens"]["embedding"]).T)
    batch = H.batches(stage1, global_batch=2, num_images=2).batch(0)
    ids, px, am = (jnp.asarray(batch[k]) for k in ("input_ids", "pixel_values", "attention_mask"))
    want = np.asarray(rs.forward(graph1, params1, ids, px, jnp.zeros((2,), jnp.int32), am))
    for g in range(3):
        got = np.asarray(rs.forward(graph2, params2, ids, px, jnp.full((2,), g, jnp.int32), am))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"granularity {g}")


def test_upcycle_rejects_different_architectures():
    dense = H.tiny(num_experts=1)
    with pytest.raises(ValueError, match="decoder"):
        check_compatible(dense, H.tiny(num_experts=3).replace(decoder={"hidden_size": 128}))
    with pytest.raises(ValueError, match="tie"):
        check_compatible(H.tiny(num_experts=1), H.tiny(num_experts=3).replace(decoder={"tie_word_embeddings": True}))
    _, p = rs.abstract_init(dense)
    out = jax.eval_shape(lambda q: upcycle(q, dense, H.tiny(num_experts=3)), p)
    assert out["decoder"]["layers"]["mlp"]["down_proj"]["kernel"].shape == (2, 3, 128, 64)
