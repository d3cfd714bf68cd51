"""Constrained decoding: the automata accept exactly well-formed answers, and every constrained
generation (also of an untrained model) parses under the strict parsers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsunivlm_jax import tasks
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference.generate import decode_answers, generate

V = 151936
EOS = (151645, 151643)
_allowed = jax.jit(C.allowed_tokens)
_advance = jax.jit(C.advance)


def _accepts(con, tok, texts, budget=4000, eos=True):
    """Feeds each row's canonical token sequence (+ eos); every token must be allowed."""
    seqs = [tok.encode(t) + ([EOS[0]] if eos else []) for t in texts]
    state = con.init_state()
    for i in range(max(len(s) for s in seqs)):
        mask = np.asarray(_allowed(con, state, budget - i))
        step = []
        for b, s in enumerate(seqs):
            t = s[i] if i < len(s) else EOS[0]
            if i < len(s):
                assert mask[b, t], (texts[b], i, tok.decode(s[:i + 1]))
            step.append(t)
        state = _advance(con, state, jnp.asarray(step, jnp.int32))
    return state


def _random_walks(con, tok, budget, seed):
    """Uniformly random allowed tokens until eos; returns (texts, lengths)."""
    rng = np.random.default_rng(seed)
    state = con.init_state()
    out = [[] for _ in range(con.batch_size)]
    done = np.zeros(con.batch_size, bool)
    for i in range(budget):
        mask = np.asarray(_allowed(con, state, budget - i))
        step = []
        for b in range(con.batch_size):
            if not done[b]:
                choices = np.flatnonzero(mask[b])
                assert choices.size, "a state within budget must allow a token"
                t = int(rng.choice(choices))
                out[b].append(t)
                done[b] = t in EOS
            else:
                t = EOS[0]
            step.append(t)
        state = _advance(con, state, jnp.asarray(step, jnp.int32))
        if done.all():
            break
    assert done.all(), "every walk must end within the budget"
    return [tok.decode(o[:-1]) for o in out], [len(o) for o in out]


# ---- [VG] -----------------------------------------------------------------------------------

def test_box_grammar_accepts_formatted_boxes(qwen_tokenizer):
    rng = np.random.default_rng(0)
    texts = []
    for n in (1, 1, 2, 3):
        boxes = []
        for _ in range(n):
            x1, y1 = rng.uniform(0, 300, 2)
            boxes.append([x1, y1, x1 + rng.uniform(0, 200), y1 + rng.uniform(0, 100)])
        texts.append(tasks.format_boxes(boxes, 500, 400))
    texts.append("[0, 0, 100, 100]")
    con = C.box_constraint(qwen_tokenizer, V, len(texts), eos_ids=EOS)
    state = _accepts(con, qwen_tokenizer, texts)
    assert (np.asarray(state["p"]) == 3).all()  # every row reached the end state
    assert C.min_length(con).tolist() == [13] * len(texts)


def test_box_random_walks_parse_strictly(qwen_tokenizer):
    con = C.box_constraint(qwen_tokenizer, V, 24, eos_ids=EOS)
    for budget in (13, 30):
        texts, lengths = _random_walks(con, qwen_tokenizer, budget, seed=budget)
        assert max(lengths) <= budget
        for t in texts:
            boxes = C.parse_boxes_strict(t)
            assert boxes == tasks.parse_boxes(t)
            assert all(b[2] >= b[0] and b[3] >= b[1] and max(b) <= 100 for b in boxes)


@pytest.mark.parametrize("text", ["", "[1, 2, 3]", "[01, 2, 3, 4]", "[1, 2, 101, 4]", "[5, 2, 3, 4]",
                                  "[1, 2, 3, 4].", "[1, 2, 3, 4]  [1, 2, 3, 4]", "[1,2,3,4]", "box [1, 2, 3, 4]"])
def test_strict_box_parser_rejects(text):
    with pytest.raises(ValueError):
        C.parse_boxes_strict(text)


# ---- [SEG] ----------------------------------------------------------------------------------

def _runs_alternate(text):
    for row in text.split("\n"):
        labels = [r.rpartition("*")[0] for r in row.split(", ")]
        if any(a == b for a, b in zip(labels, labels[1:])):
            return False
    return True


@pytest.mark.parametrize("grid", [8, pytest.param(24, marks=pytest.mark.slow)])
def test_mask_grammar_accepts_encoded_masks(qwen_tokenizer, grid):
    rng = np.random.default_rng(grid)
    labels = ["water", "sports ground", "low vegetation", "building"]
    grids = [rng.random((grid, grid)) < p for p in (0.0, 0.2, 0.5, 1.0)]
    texts = [tasks.encode_mask(g, l) for g, l in zip(grids, labels)]
    con = C.mask_constraint(qwen_tokenizer, V, labels, grid_size=grid, eos_ids=EOS)
    state = _accepts(con, qwen_tokenizer, texts)
    assert (np.asarray(state["p"]) == 2).all()
    # shortest: one 'others*<grid>' run per row (3 + digits tokens with its newline / the eos)
    assert C.min_length(con).tolist() == [grid * (3 + len(str(grid)))] * 4


@pytest.mark.parametrize("grid,budget", [(8, 40), (24, 130)])
def test_mask_random_walks_parse_strictly(qwen_tokenizer, grid, budget):
    labels = ["water", "road", "sports ground", "water"]
    con = C.mask_constraint(qwen_tokenizer, V, labels, grid_size=grid, eos_ids=EOS)
    assert int(C.min_length(con).max()) <= budget
    texts, lengths = _random_walks(con, qwen_tokenizer, budget, seed=grid)
    assert max(lengths) <= budget
    for t, label in zip(texts, labels):
        tasks.decode_mask_strict(t, grid)
        assert set(tasks.mask_labels(t)) <= {label}
        assert _runs_alternate(t)


def test_mask_needs_the_configured_number_of_rows(qwen_tokenizer):
    con = C.mask_constraint(qwen_tokenizer, V, ["water"], grid_size=4, eos_ids=EOS)
    mask = np.asarray(_allowed(con, con.init_state(), 100))[0]
    assert {qwen_tokenizer.decode([t]) for t in np.flatnonzero(mask)} == {"others", "water"}
    state = _accepts(con, qwen_tokenizer, ["others*4\nothers*4\nothers*"], eos=False)
    state = _advance(con, state, jnp.asarray(qwen_tokenizer.encode("4"), jnp.int32))
    mask = np.asarray(_allowed(con, state, 100))[0]
    assert not mask[list(EOS)].any()  # 3 of 4 rows: no eos yet
    assert {qwen_tokenizer.decode([t]) for t in np.flatnonzero(mask)} == {"\n"}


@pytest.mark.parametrize("label", ["others", "Others", "a*b", "x, y", ""])
def test_mask_labels_are_checked(qwen_tokenizer, label):
    with pytest.raises(ValueError, match="mask label"):
        C.mask_constraint(qwen_tokenizer, V, [label])


@pytest.mark.parametrize("prompt,label", [
    ("<image>\n[SEG] water.", "water"), ("[SEG] sports ground", "sports ground"),
    ("<image> <image>\n[SEG] Please segment the building area that have changed in the second image.", "building"),
    ("[SEG] Segment the water in this image.", "water"),
    ("[SEG] Segment all the vehicles in this image. Please respond with segmentation mask.", "vehicles"),
    ("[SEG] Give me the mask of the sports ground.", "sports ground"),
])
def test_seg_label_from_prompt(prompt, label):
    assert C.seg_label_from_prompt(prompt) == label


def test_for_prompts(qwen_tokenizer):
    assert C.for_prompts(qwen_tokenizer, V, ["[CAP] Describe.", "[VQA] Is there a road?"]) is None
    con = C.for_prompts(qwen_tokenizer, V, ["[VG] the ship", "[CAP] Describe."])
    assert isinstance(con, C.BoxConstraint) and con.rows["enabled"].tolist() == [True, False]
    con = C.for_prompts(qwen_tokenizer, V, ["[SEG] water.", "[SEG] road."], grid_size=8)
    assert isinstance(con, C.MaskConstraint) and con.rows["label_ok"].tolist() == [[True, False, True],
                                                                                   [True, True, False]]
    with pytest.raises(ValueError, match="mix"):
        C.for_prompts(qwen_tokenizer, V, ["[SEG] water.", "[VG] the ship"])


# ---- with a model ---------------------------------------------------------------------------

def _prompts(tok, messages, image_size, seed):
    encs = [tok.encode_conversation([{"from": "human", "value": "<image>\n" + m}], add_generation_prompt=True)
            .input_ids for m in messages]
    t = max(len(e) for e in encs)
    ids = np.full((len(encs), t), tok.pad_id, np.int32)
    mask = np.zeros_like(ids)
    for b, e in enumerate(encs):
        ids[b, t - len(e):], mask[b, t - len(e):] = e, 1
    px = np.random.default_rng(seed).uniform(-1, 1, (len(encs), 1, image_size, image_size, 3)).astype(np.float32)
    return ids, mask, px


def _constrained_generations(real_vocab_tiny, tok, n, grid, boxes=True):
    cfg, graphdef, params = real_vocab_tiny
    size = cfg.vision.image_size
    if boxes:
        vg = [f"[VG] the {c} building" for c in ("red", "blue", "white", "large")] * (n // 4)
        ids, mask, px = _prompts(tok, vg, size, 0)
        con = C.for_prompts(tok, cfg.decoder.vocab_size, vg, eos_ids=cfg.eos_token_ids)
        out = generate(graphdef, params, ids, mask, px, np.ones(len(vg)), max_new_tokens=30, constraint=con,
                       do_sample=True, rng=0, config=cfg)
        answers = decode_answers(tok, out, cfg.eos_token_ids)
        assert len(answers) == n
        for a in answers:
            assert C.parse_boxes_strict(a)
        assert len(set(answers)) > n // 4

    labels = ["water", "road", "sports ground", "building"]
    seg = [f"[SEG] {labels[i % 4]}." for i in range(n)]
    ids, mask, px = _prompts(tok, seg, size, 1)
    con = C.for_prompts(tok, cfg.decoder.vocab_size, seg, grid_size=grid, eos_ids=cfg.eos_token_ids)
    budget = int(C.min_length(con).max()) + 16
    out = generate(graphdef, params, ids, mask, px, np.full(n, 2), max_new_tokens=budget, constraint=con,
                   do_sample=True, rng=1, config=cfg)
    answers = decode_answers(tok, out, cfg.eos_token_ids)
    assert len(answers) == n
    for i, a in enumerate(answers):
        assert tasks.decode_mask_strict(a, grid).shape == (grid, grid)
        assert set(tasks.mask_labels(a)) <= {labels[i % 4]}
    assert len(set(answers)) > n // 4


def test_untrained_model_constrained_masks_parse(real_vocab_tiny, qwen_tokenizer):
    # (constrained [VG] generation with this model runs in tests/inference/test_cli.py)
    _constrained_generations(real_vocab_tiny, qwen_tokenizer, 8, 8, boxes=False)


@pytest.mark.slow
def test_untrained_model_100_vg_and_100_seg_answers_parse(real_vocab_tiny, qwen_tokenizer):
    _constrained_generations(real_vocab_tiny, qwen_tokenizer, 100, 24)


@pytest.mark.slow
def test_untrained_model_greedy_full_grid_masks_parse(real_vocab_tiny, qwen_tokenizer):
    cfg, graphdef, params = real_vocab_tiny
    seg = ["[SEG] water.", "[SEG] road.", "[SEG] building.", "[SEG] sports ground."]
    ids, mask, px = _prompts(qwen_tokenizer, seg, cfg.vision.image_size, 2)
    con = C.for_prompts(qwen_tokenizer, cfg.decoder.vocab_size, seg, grid_size=24, eos_ids=cfg.eos_token_ids)
    out = generate(graphdef, params, ids, mask, px, np.full(4, 2), max_new_tokens=130, constraint=con, config=cfg)
    for a in decode_answers(qwen_tokenizer, out, cfg.eos_token_ids):
        assert tasks.decode_mask_strict(a, 24).shape == (24, 24)
