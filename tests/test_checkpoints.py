"""`rsunivlm_jax.checkpoints`: one `load` for converted checkpoints, training runs and their step
directories; an atomic `save`; missing parts filled from the model's own initialiser."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsunivlm_jax as rs
from rsunivlm_jax import checkpoints
from rsunivlm_jax.tree import flatten
from tests.inference.conftest import numpy_init


@pytest.fixture(scope="module")
def tiny():
    """(config, graphdef, params) of the tiny preset, random weights from numpy."""
    cfg = rs.presets.get("tiny")
    return (cfg,) + numpy_init(cfg, 1)


def _same(a: dict, b: dict) -> bool:
    fa, fb = flatten(a), flatten(b)
    return fa.keys() == fb.keys() and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)


def test_save_then_load_and_a_failed_save_leaves_nothing(tiny, tmp_path, monkeypatch):
    cfg, _, params = tiny
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / checkpoints.GENERATION_CONFIG).write_text(json.dumps({"temperature": 0.5}))
    d = checkpoints.save(tmp_path / "ckpt", cfg, params, generation_config={"repetition_penalty": 1.1},
                         tokenizer_dir=tok, meta={"note": "test"})
    ck = checkpoints.load(d)
    assert ck.config == cfg and set(ck.parts) == set(checkpoints.PARTS) and ck.step is None
    assert _same(ck.params, params)
    assert ck.generation_config == {"repetition_penalty": 1.1}  # the argument wins over the copied file
    assert ck.meta["note"] == "test" and ck.meta["format"] == checkpoints.FORMAT
    assert rs.load_pretrained is checkpoints.load
    with pytest.raises(FileExistsError, match="not an empty directory"):
        checkpoints.save(d, cfg, params)

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_params", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(tmp_path / "second", cfg, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tok"]  # no partial directory left


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """A training run with steps 2 and 5 (step 5: every parameter doubled), written by the trainer's
    Checkpointer; returns (run dir, params at step 2, params at step 5)."""
    from rsunivlm_jax.train import checkpoint as ckpt_lib
    from rsunivlm_jax.train import step as step_lib
    from tests.train import helpers as H

    cfg, _, params = tiny
    d = tmp_path_factory.mktemp("run")
    ckpt = ckpt_lib.Checkpointer(str(d / "checkpoints"), async_save=False)
    states = {}
    for step, scale in ((2, 1.0), (5, 2.0)):
        p = jax.tree.map(lambda x, s=scale: jnp.asarray(x) * s, params)
        states[step] = p
        ckpt.save(step, step_lib.init_state(p, H.optimizer(p)), meta={"model_config": cfg.to_dict()}, force=True)
    ckpt.close()
    return d, states[2], states[5]


def test_a_run_its_checkpoints_dir_and_a_step_dir_load_alike(tiny, run):
    cfg = tiny[0]
    d, p2, p5 = run
    for path, step, expected, read in ((d, None, p5, 5), (d, 2, p2, 2), (d / "checkpoints", None, p5, 5),
                                       (d / "checkpoints" / "2", None, p2, 2), (d / "checkpoints" / "5", 5, p5, 5)):
        ck = checkpoints.load(path, step=step)
        assert ck.config == cfg and ck.parts == checkpoints.PARTS and _same(ck.params, expected), path
        assert ck.step == read and ck.meta["step"] == read
    assert checkpoints.read_meta(d)["step"] == 5
    with pytest.raises(checkpoints.CheckpointError, match=r"no step 3 \(steps: \[2, 5\]\)"):
        checkpoints.load(d, step=3)
    with pytest.raises(checkpoints.CheckpointError, match="step directory of step 2, not 5"):
        checkpoints.resolve(d / "checkpoints" / "2", step=5)


def test_a_run_without_a_finished_step_is_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="without a finished checkpoint"):
        checkpoints.load(tmp_path)


def test_load_params_restores_into_the_callers_tree_and_names_missing_parts(tiny, run, tmp_path):
    cfg, _, params = tiny
    _, abstract = rs.abstract_init(cfg)
    restored, meta = checkpoints.load_params(run[0], abstract, step=2)
    assert _same(restored, run[1]) and meta["step"] == 2
    part = checkpoints.save(tmp_path / "decoder", cfg, {"decoder": params["decoder"]})
    with pytest.raises(checkpoints.CheckpointError, match=r"holds only \['decoder'\]; the model also needs"):
        checkpoints.load_params(part, abstract)


def test_assemble_fills_missing_parts_from_the_model_initialiser(tiny, tmp_path):
    cfg, _, params = tiny
    part = checkpoints.load(checkpoints.save(tmp_path / "decoder", cfg, {"decoder": params["decoder"]}))
    assert part.parts == ("decoder",)
    graphdef, full = checkpoints.assemble(cfg, part, rng=3)
    _, fresh = rs.init(cfg, 3)
    assert _same(full["decoder"], params["decoder"])
    assert _same(full["vision"], fresh["vision"]) and _same(full["connector"], fresh["connector"])
    # the untied head of the target gets the embedding table a tied decoder computes with
    emb = np.asarray(params["decoder"]["embed_tokens"]["embedding"])
    assert np.array_equal(np.asarray(full["lm_head"]["kernel"]), emb.T)
    assert jax.tree.structure(full) == jax.tree.structure(fresh)
    bad = cfg.replace(decoder={"hidden_size": 32, "intermediate_size": 64})
    with pytest.raises(checkpoints.CheckpointError, match="pretrained shape"):
        checkpoints.assemble(bad, part)
