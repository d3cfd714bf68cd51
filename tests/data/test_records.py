"""Bad records: each case in strict mode (RecordError naming record + reason) and lenient mode
(skipped and counted by reason); odd but valid images are accepted and converted."""
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax import tasks
from rsunivlm_jax.data import pipeline, records
from rsunivlm_jax.data.records import RecordError
from tests.data.helpers import IMAGE_TOKEN_ID, conv, qwen_tokenizer, random_rgb, write_png

SPEC = pipeline.ExampleSpec(image_size=16, image_token_id=IMAGE_TOKEN_ID, tokens_per_image=5,
                            max_text_len=128, max_seq_len=160, max_images=2)


def _huge_png() -> bytes:
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    r = base / "root"
    write_png(r / "images/good.png", random_rgb(0))
    write_png(r / "images/good2.png", random_rgb(1))
    write_png(base / "outside.png", random_rgb(2))
    os.symlink(base / "outside.png", r / "images/link.png")
    buf = io.BytesIO()
    Image.fromarray(random_rgb(3, 64, 64)).save(buf, "PNG")
    (r / "images/corrupt.png").write_bytes(buf.getvalue()[:300])
    (r / "images/huge.png").write_bytes(_huge_png())
    write_png(r / "images/grey.png", (random_rgb(4)[..., 0]), "L")
    write_png(r / "images/rgba.png", np.dstack([random_rgb(5), np.full((40, 40), 7, np.uint8)]), "RGBA")
    write_png(r / "images/deep.png", (random_rgb(6)[..., 0].astype(np.uint16) * 257))
    return r


def good(rid="good"):
    return {"id": rid, "task": "cap", "image": "images/good.png",
            "conversations": conv("[CAP] Describe this image briefly.", "A field.")}


def _with(**kw):
    r = good("bad")
    r.update(kw)
    return r


MASK_OK = tasks.encode_mask(np.eye(24, dtype=bool), "water")
ROWS = MASK_OK.split("\n")

# (name, record (or raw line bytes), reason) -- rejected when the source is loaded
LOAD_CASES = [
    ("missing_file", _with(image="images/none.png"), "missing_image"),
    ("dotdot", _with(image="../outside.png"), "path_outside_root"),
    ("dotdot_inner", _with(image="images/../../outside.png"), "path_outside_root"),
    ("absolute", "ABSOLUTE", "path_outside_root"),
    ("symlink_escape", _with(image="images/link.png"), "path_outside_root"),
    ("too_many_placeholders", _with(conversations=conv("[CAP] x", "y", 2)), "placeholder_mismatch"),
    ("too_few_placeholders", _with(image=["images/good.png", "images/good2.png"]), "placeholder_mismatch"),
    ("text_only_with_placeholder", _with(image=None), "placeholder_mismatch"),
    ("empty_conversation", _with(conversations=[]), "empty_conversation"),
    ("missing_conversation", {"id": "bad", "image": "images/good.png"}, "empty_conversation"),
    ("missing_answer", _with(conversations=conv("[CAP] x", "y")[:1]), "missing_answer"),
    ("empty_answer", _with(conversations=conv("[CAP] x", "  ")), "missing_answer"),
    ("unknown_tag", _with(task=None, conversations=conv("[FOO] Describe.", "y")), "unknown_tag"),
    ("unknown_task", _with(task="detect"), "unknown_task"),
    ("tag_mismatch", _with(task="vg"), "tag_mismatch"),
    ("gt_box_outside", _with(task="vg", conversations=conv("[VG] Where is the car?", "[1, 2, 30, 40]"),
                             gt={"boxes_px": [[1, 2, 45, 30]], "width": 40, "height": 40}), "box_outside_image"),
    ("text_box_outside", _with(task="vg", conversations=conv("[VG] Where is the car?", "[1, 2, 130, 40]")),
     "box_outside_image"),
    ("ref_box_outside", _with(task="ref", conversations=conv("[REF] what is [1, 2, 101, 40]?", "1 car.")),
     "box_outside_image"),
    ("vg_answer_without_box", _with(task="vg", conversations=conv("[VG] Where is the car?", "left")), "bad_box"),
    ("malformed_mask_row", _with(task="seg", conversations=conv("[SEG] water.", MASK_OK.replace("others*23", "others*22", 1))),
     "malformed_mask"),
    ("malformed_mask_rows", _with(task="seg", conversations=conv("[SEG] water.", "\n".join(ROWS[:20]))), "malformed_mask"),
    ("malformed_mask_garbage", _with(task="seg", conversations=conv("[SEG] water.", "a lake")), "malformed_mask"),
    ("non_utf8_bytes", b'{"id": "bad", "conversations": "\xff\xfe"}', "not_utf8"),
    ("lone_surrogate", b'{"id": "bad", "image": "images/good.png", "conversations": [{"from": "human", '
                       b'"value": "<image>\\n[CAP] \\udc80"}, {"from": "gpt", "value": "y"}]}', "not_utf8"),
    ("bad_json", b'{"id": "bad", "conversations": [', "bad_json"),
    ("bad_turn", _with(conversations=[{"from": "robot", "value": "x"}]), "bad_turn"),
]


def _write(root: Path, name: str, items) -> Path:
    path = root / f"{name}.jsonl"
    with open(path, "wb") as f:
        for it in items:
            if it == "ABSOLUTE":
                it = _with(image=str(root / "images/good.png"))
            f.write(it if isinstance(it, bytes) else json.dumps(it).encode())
            f.write(b"\n")
    return path


@pytest.mark.parametrize("name,rec,reason", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_bad_record_at_load(root, name, rec, reason):
    path = _write(root, name, [good(), rec])
    with pytest.raises(RecordError) as e:
        records.load_records(path, root, strict=True)
    assert e.value.reason == reason
    assert reason in str(e.value) and name in str(e.value)  # names the file (and record/line)
    report = records.SkipReport()
    recs = records.load_records(path, root, strict=False, report=report)
    assert [r["id"] for r in recs] == ["good"]
    assert dict(report.counts) == {reason: 1} and report.kept == 1
    assert reason in report.summary()


def test_strict_error_names_record_id(root):
    path = _write(root, "named", [_with(id="rec-42", image="../outside.png")])
    with pytest.raises(RecordError, match=r"record 'rec-42'.*path_outside_root"):
        records.load_records(path, root, strict=True)


# Rejected when the example is built (image decoding, tokenised length)
EXAMPLE_CASES = [
    ("corrupt_bytes", _with(image="images/corrupt.png"), {}, "corrupt_image"),
    ("huge_image", _with(image="images/huge.png"), {}, "image_too_large"),
    ("over_length_reject", _with(conversations=conv("[CAP] x", "word " * 200)), {"truncation": "reject"}, "over_length"),
    ("over_length_cuts_image", _with(conversations=[
        {"from": "human", "value": "[CAP] " + "word " * 60}, {"from": "gpt", "value": "ok"},
        {"from": "human", "value": "<image>\nAnd now?"}, {"from": "gpt", "value": "A field."}]),
     {"max_text_len": 60}, "over_length"),
    ("over_length_seq", _with(task="ccd", image=["images/good.png"] * 2, conversations=conv("[CCD] x", "y", 2)),
     {"max_seq_len": 70, "tokens_per_image": 30}, "over_length"),
    ("too_many_images", _with(task="ccd", image=["images/good.png"] * 2,
                              conversations=conv("[CCD] x", "y", 2)), {"max_images": 1}, "too_many_images"),
]


@pytest.mark.parametrize("name,rec,spec_kw,reason", EXAMPLE_CASES, ids=[c[0] for c in EXAMPLE_CASES])
def test_bad_sample_at_example_time(root, name, rec, spec_kw, reason):
    import dataclasses
    spec = dataclasses.replace(SPEC, **spec_kw)
    path = _write(root, name, [good(), rec])
    recs = records.load_records(path, root, strict=True)
    assert len(recs) == 2
    tok = qwen_tokenizer()
    with pytest.raises(RecordError) as e:
        pipeline.build_example(recs[1], tok, spec)
    assert e.value.reason == reason and "'bad'" in str(e.value)
    lenient = pipeline.ToExample(tok, spec, lenient=True)
    assert lenient.map(recs[0]) is not None and lenient.map(recs[1]) is None
    assert dict(lenient.report.counts) == {reason: 1}
    strict = pipeline.ToExample(tok, spec, lenient=False)
    with pytest.raises(RecordError):
        strict.map(recs[1])


def test_over_length_tail_truncation_keeps_image(root):
    path = _write(root, "long", [_with(conversations=conv("[CAP] x", "word " * 200))])
    rec = records.load_records(path, root, strict=True)[0]
    ex = pipeline.build_example(rec, qwen_tokenizer(), SPEC)
    assert ex["attention_mask"].sum() == SPEC.max_text_len
    assert (ex["input_ids"] == IMAGE_TOKEN_ID).sum() == 1 and ex["loss_mask"][-1] == 1.0


@pytest.mark.parametrize("image", ["grey", "rgba", "deep"])
def test_odd_image_modes_are_accepted(root, image):
    path = _write(root, image, [_with(image=f"images/{image}.png")])
    for strict in (True, False):
        recs = records.load_records(path, root, strict=strict)
        ex = pipeline.build_example(recs[0], qwen_tokenizer(), SPEC)
        assert ex["pixel_values"].shape == (2, 16, 16, 3) and ex["num_images"] == 1
        assert np.isfinite(ex["pixel_values"]).all() and np.abs(ex["pixel_values"]).max() <= 1


def test_lenient_source_counts_every_reason(root):
    items = [good("g1"), good("g2")] + [c[1] for c in LOAD_CASES]
    path = _write(root, "all_bad", items)
    src = records.load_source(path, root)
    assert len(src) == 2
    expected = {}
    for _, _, reason in LOAD_CASES:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(src.report.counts) == expected
    with pytest.raises(RecordError):
        records.load_source(path, root, strict=True)


def test_lenient_pipeline_skips_bad_samples(root):
    items = [good("g1"), _with(id="c", image="images/corrupt.png"), good("g2"), _with(id="h", image="images/huge.png")]
    src = records.load_source(_write(root, "mixed_bad", items), root)
    kw = dict(tokenizer=qwen_tokenizer(), image_size=16, image_token_id=IMAGE_TOKEN_ID, tokens_per_image=5,
              max_text_len=64, max_seq_len=80, max_images=1, batch_size=2, seed=0, shard_index=0, shard_count=1)
    it = iter(pipeline.make_dataset([src], **kw))
    for _ in range(3):
        b = next(it)
        assert b["input_ids"].shape == (2, 64) and (b["num_images"] == 1).all()
    with pytest.raises(RecordError) as e:
        for _ in range(4):
            next(iter(pipeline.make_dataset([src], lenient=False, **kw)))
    assert e.value.reason in ("corrupt_image", "image_too_large")


def test_record_directory_with_manifest(root, tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps(good()) + "\n")
    (tmp_path / "imgs" / "images").mkdir(parents=True)
    shutil.copy(root / "images/good.png", tmp_path / "imgs" / "images" / "good.png")
    (tmp_path / "manifest.json").write_text(json.dumps({"image_root": "imgs", "splits": {"train": "train.jsonl"}}))
    src = records.load_source(tmp_path, split="train")
    assert len(src) == 1 and Path(src[0]["images"][0]) == (tmp_path / "imgs/images/good.png").resolve()
    # Images outside the manifest's folder: the caller declares their root.
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": {"train": "train.jsonl"}}))
    src = records.load_source(tmp_path, root=root, split="train")
    assert Path(src[0]["images"][0]) == (root / "images/good.png").resolve()
    with pytest.raises(FileNotFoundError):
        records.load_source(tmp_path, split="test")
