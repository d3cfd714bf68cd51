"""The trained byte-level BPE (rsunivlm_jax.data.bpe): Qwen2 pre-tokenisation, ChatML specials at
0 / 1 / 2, exact round trips, and the tokens constrained decoding needs."""
import tokenizers

from rsunivlm_jax.data import bpe
from rsunivlm_jax.data.tokenizer import Tokenizer, tokenizer_files_dir


def test_tokenizer_keeps_qwen2_pretokenisation(tmp_path):
    texts = ["[12, 40, 100, 52] is the red building at the top left.", "others*3, water*5\nwater*8",
             "Is there a ship?", "yes", "a harbor with two ships on the water."] * 20
    path = bpe.train_tokenizer(bpe.corpus_texts([{"conversations": [{"value": t}]} for t in texts]), tmp_path,
                               vocab_size=400)
    assert path == tmp_path / "tokenizer.json" and not list(tmp_path.glob("*.tmp"))
    tok = Tokenizer.from_dir(tmp_path, image_token_id=400)
    assert (tok.pad_id, tok.eos_id, tok.im_start_id) == (0, 1, 2)
    real = tokenizers.Tokenizer.from_file(str(tokenizer_files_dir() / "tokenizer.json"))
    sample = "[REF] what is [13, 16, 28, 33]? others*12, road*4\n 1 building at 2024."
    assert tok.tok.pre_tokenizer.pre_tokenize_str(sample) == real.pre_tokenizer.pre_tokenize_str(sample)
    assert tok.decode(tok.encode(sample)) == sample
    assert all(len(tok.encode(d)) == 1 for d in "0123456789")
    bpe.check_tokenizer(tok, ["water", "road"], grid_size=8)
