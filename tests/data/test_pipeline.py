"""Grain pipeline: static shapes, granularity grouping, determinism, resume, sharding, mixture,
TFDS source, generation prompts, CLI; a 2-worker run (slow)."""
import json

import numpy as np
import pytest

from rsunivlm_jax.data import cli, pipeline, records
from tests.data.helpers import IMAGE_TOKEN_ID, conv, qwen_tokenizer, random_rgb, small_dataset, write_jsonl, write_png

S, T, L, N, B, K = 24, 96, 200, 2, 4, 20   # image size, text len, seq len, max images, batch, tokens/image


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return records.load_source(small_dataset(tmp_path_factory.mktemp("pipe"), n=16, size=S), strict=True)


def kwargs(**kw):
    base = dict(tokenizer=qwen_tokenizer(), image_size=S, image_token_id=IMAGE_TOKEN_ID, tokens_per_image=K,
                max_text_len=T, max_seq_len=L, max_images=N, batch_size=B, seed=0, shard_index=0, shard_count=1)
    base.update(kw)
    return base


def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


EXPECTED = {"input_ids": ((B, T), np.int32), "attention_mask": ((B, T), np.int32),
            "loss_mask": ((B, T), np.float32), "pixel_values": ((B, N, S, S, 3), np.float32),
            "num_images": ((B,), np.int32), "granularity": ((B,), np.int32)}


@pytest.mark.parametrize("grouping", ["granularity", "mixed"])
def test_static_shapes_and_contract(src, grouping):
    batches = take(pipeline.make_dataset([src], grouping=grouping, **kwargs()), 12)
    seen = set()
    for b in batches:
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == EXPECTED
        am, lm, ids = b["attention_mask"], b["loss_mask"], b["input_ids"]
        assert ((lm > 0) <= (am > 0)).all() and (lm[:, 0] == 0).all()
        assert (np.diff(am, axis=1) <= 0).all()                     # right padding
        assert (ids[am == 0] == 151643).all()
        assert ((ids == IMAGE_TOKEN_ID).sum(1) == b["num_images"]).all()
        assert (lm[ids == IMAGE_TOKEN_ID] == 0).all()
        assert (am.sum(1) + b["num_images"] * (K - 1) <= L).all()
        for i, n in enumerate(b["num_images"]):
            assert not b["pixel_values"][i, n:].any() and b["pixel_values"][i, :n].any()
        if grouping == "granularity":
            assert len(set(b["granularity"].tolist())) == 1
        seen |= set(b["granularity"].tolist())
    assert seen == {0, 1, 2}
    if grouping == "mixed":
        assert any(len(set(b["granularity"].tolist())) > 1 for b in batches)


def test_granularity_matches_router(src):
    tok = qwen_tokenizer()
    for b in take(pipeline.make_dataset([src], **kwargs()), 6):
        for ids, g in zip(b["input_ids"], b["granularity"]):
            text = tok.decode(ids, skip_special_tokens=False)
            want = 2 if "[SEG]" in text else 1 if "[VG]" in text else 0
            assert g == want


def test_deterministic_and_seed_dependent(src):
    a = take(pipeline.make_dataset([src], **kwargs()), 5)
    b = take(pipeline.make_dataset([src], **kwargs()), 5)
    c = take(pipeline.make_dataset([src], **kwargs(seed=1)), 5)
    assert all(_equal(x, y) for x, y in zip(a, b))
    assert not all(_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("grouping", ["granularity", "mixed"])
def test_resume_from_saved_state(src, grouping):
    ds = pipeline.make_dataset([src], grouping=grouping, **kwargs())
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))   # state is JSON-serialisable
    expected = [next(it) for _ in range(3)]
    it2 = iter(pipeline.make_dataset([src], grouping=grouping, **kwargs()))
    it2.set_state(state)
    assert all(_equal(e, next(it2)) for e in expected)


def test_shards_differ_and_cover(src):
    a = take(pipeline.make_dataset([src], grouping="mixed", **kwargs(shard_index=0, shard_count=2,
                                                                      batch_size=1)), 8)
    b = take(pipeline.make_dataset([src], grouping="mixed", **kwargs(shard_index=1, shard_count=2,
                                                                      batch_size=1)), 8)
    ka = {x["input_ids"].tobytes() + x["pixel_values"].tobytes() for x in a}
    kb = {x["input_ids"].tobytes() + x["pixel_values"].tobytes() for x in b}
    assert len(ka) == 8 and len(kb) == 8 and not ka & kb  # one epoch: disjoint halves
    with pytest.raises(ValueError):
        pipeline.make_dataset([src], **kwargs(shard_index=2, shard_count=2))


def test_weighted_mixture(src, tmp_path):
    write_png(tmp_path / "z.png", random_rgb(9, S, S))
    other = write_jsonl(tmp_path / "z.jsonl", [{"id": f"z{i}", "image": "z.png",
                                                "conversations": conv("[CAP] Describe.", "An elephant.")}
                                               for i in range(4)])
    zebra = qwen_tokenizer().encode(" elephant")
    assert len(zebra) == 1

    def has_zebra(b):
        return bool((b["input_ids"] == zebra[0]).any())

    only_first = take(pipeline.make_dataset([src, other], weights=[1, 0], grouping="mixed", **kwargs()), 10)
    assert not any(has_zebra(b) for b in only_first)
    both = take(pipeline.make_dataset([src, other], weights=[1, 1], grouping="mixed", **kwargs()), 10)
    frac = np.mean([(b["input_ids"] == zebra[0]).any(1).mean() for b in both])
    assert 0.3 < frac < 0.7
    with pytest.raises(ValueError):
        pipeline.make_dataset([src], weights=[1, 1], **kwargs())


def test_tfds_source_matches_jsonl(src, tmp_path):
    from rsunivlm_jax.data import tfds_builder
    d = tfds_builder.build_tfds({"train": src}, tmp_path / "tfds")
    tsrc = tfds_builder.TfdsSource(d, "train")
    assert len(tsrc) == len(src) and tfds_builder.tfds_splits(d) == ["train"]
    spec = pipeline.ExampleSpec(S, IMAGE_TOKEN_ID, K, T, L, N)
    by_id = {r["id"]: r for r in src}
    for i in range(len(tsrc)):
        rec = tsrc[i]
        assert _equal(pipeline.build_example(rec, qwen_tokenizer(), spec),
                      pipeline.build_example(by_id[rec["id"]], qwen_tokenizer(), spec))
    batch = take(pipeline.make_dataset([tsrc], **kwargs()), 1)[0]
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == EXPECTED


def test_eval_examples(src):
    kw = kwargs()
    for k in ("batch_size", "seed", "shard_index", "shard_count"):
        kw.pop(k)
    exs = list(pipeline.make_eval_examples(src, **kw))
    assert len(exs) == len(src)
    for ex, rec in zip(exs, src):
        n = ex["prompt_len"]
        ids = ex["input_ids"]
        assert ids.shape == (T,) and (ex["attention_mask"][T - n:] == 1).all() and not ex["attention_mask"][:T - n].any()
        assert ids[T - 3:].tolist() == [151644, 77091, 198]                    # generation header last
        assert ids[T - n:T - n + 14].tolist()[:3] == [151644, 8948, 198]
        assert ex["answer"] == rec["conversations"][-1]["value"] and ex["id"] == rec["id"]
        assert "loss_mask" not in ex
    batch = pipeline.collate_eval(exs[:3])
    assert batch["input_ids"].shape == (3, T) and len(batch["id"]) == 3


def test_synthetic_dataset_through_pipeline(tmp_path):
    from rsunivlm_jax.data import synthetic
    synthetic.write_dataset(str(tmp_path), 6, image_size=32, seed=0, progress=False)
    s = records.load_source(tmp_path, strict=True)
    assert records.count_by(s.records) == {t: 6 for t in ["cap", "ccd", "cd", "cls", "ref", "seg", "vg", "vqa"]}
    batches = take(pipeline.make_dataset([s], **kwargs(max_text_len=400, max_seq_len=600)), 6)
    assert all(b["input_ids"].shape == (B, 400) for b in batches)


def test_cli_synth_convert_inspect(tmp_path, capsys):
    out = tmp_path / "syn"
    assert cli.main(["synth", "--out", str(out), "--num", "2", "--image-size", "32"]) == 0
    (out / "images" / "train_000000.png").write_bytes(b"broken")
    assert cli.main(["inspect", str(out), "--samples", "8", "--max-text-len", "600", "--max-seq-len", "4000"]) == 0
    text = capsys.readouterr().out
    # scene 0's image is used by all eight of its records; scene 1 is intact
    assert "corrupt_image: 8" in text and "  vg: 1" in text and "  cd: 1" in text
    assert len(list((out / "inspect").glob("*.png"))) >= 1
    src = tmp_path / "scenes"
    for cls in ("forest", "water"):
        write_png(src / cls / "a.png", random_rgb(0, 16, 16))
    assert cli.main(["convert", "--format", "scene_folders", "--src", str(src), "--out", str(tmp_path / "cls")]) == 0
    assert cli.main(["convert", "--format", "nope", "--src", str(src), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_two_worker_pipeline(src):
    """mp_prefetch with 2 spawned worker processes: contract shapes, grouping, exact resume."""
    it = iter(pipeline.make_dataset([src], num_workers=2, **kwargs()))
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    rest = [next(it) for _ in range(3)]
    for b in first + rest:
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == EXPECTED
        assert len(set(b["granularity"].tolist())) == 1
    it2 = iter(pipeline.make_dataset([src], num_workers=2, **kwargs()))
    it2.set_state(state)
    assert all(_equal(r, next(it2)) for r in rest)


def _mixture(src, seed=0, **kw):
    base = dict(task_weights={"cap": 1.0, "vg": 3.0, "seg": 2.0, "ccd": 0.0}, granularity_text_len=(64, 80, T),
                tokenizer=qwen_tokenizer(), image_size=S, image_token_id=IMAGE_TOKEN_ID, tokens_per_image=K,
                batch_size=B, seed=seed, shard_index=0, shard_count=1)
    base.update(kw)
    return pipeline.make_task_mixture([src], **base)


def test_task_mixture_batches_one_granularity_with_its_own_shape(src):
    """Each batch holds one granularity, shaped by that granularity's text length and image count;
    granularities come in proportion to their tasks' weights; a task at weight 0 never appears."""
    lens, counts = (64, 80, T), {0: 0, 1: 0, 2: 0}
    for b in take(_mixture(src), 120):
        (g,) = set(b["granularity"].tolist())
        counts[g] += 1
        assert b["input_ids"].shape == (B, lens[g]) and b["loss_mask"].shape == (B, lens[g])
        assert b["pixel_values"].shape == (B, 1, S, S, 3) and (b["num_images"] == 1).all()  # no ccd (2 images)
    # weights cap 1 : vg 3 : seg 2 -> expected 20 : 60 : 40 batches of 120
    assert 8 <= counts[0] <= 32 and 45 <= counts[1] <= 75 and 28 <= counts[2] <= 52, counts
    # two-image tasks get two image slots in their granularity's batches
    only_ccd = take(_mixture(src, task_weights={"ccd": 1.0}), 3)
    assert all(b["pixel_values"].shape == (B, 2, S, S, 3) and (b["num_images"] == 2).all() for b in only_ccd)


def test_task_mixture_is_deterministic_and_resumes_exactly(src):
    a, b = take(_mixture(src), 8), take(_mixture(src), 8)
    assert all(_equal(x, y) for x, y in zip(a, b))
    assert not all(_equal(x, y) for x, y in zip(a, take(_mixture(src, seed=1), 8)))
    it = iter(_mixture(src))
    for _ in range(5):
        next(it)
    state, rest = it.get_state(), [next(it) for _ in range(4)]
    it2 = iter(_mixture(src))
    it2.set_state(state)
    assert all(_equal(r, next(it2)) for r in rest)


def test_task_mixture_rejects_unknown_tasks_and_wrong_lengths(src):
    with pytest.raises(ValueError, match="unknown task.*'nope'"):
        _mixture(src, task_weights={"nope": 1.0})
    with pytest.raises(ValueError, match="3 lengths"):
        _mixture(src, granularity_text_len=(64, 80))
    with pytest.raises(ValueError, match="positive weight"):
        _mixture(src, task_weights={"cls": 1.0})  # no cls records in the source
