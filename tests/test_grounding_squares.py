"""End to end on the easiest mask set: the main job's model, trained by the library's trainer on
`[SEG] red.` over cell-aligned red and blue squares (`tools/grounding_squares.py --task seg`), must
answer row-RLE masks read from the image. This is the whole image -> connector -> decoder -> mask
text path learning from pixels; with the images shuffled the same model must fail."""
from tools import grounding_squares


def test_the_main_job_model_learns_masks_from_the_image(tmp_path):
    out = grounding_squares.run(tmp_path, task="seg", steps=600, num_train=3000, num_eval=100)
    real, shuffled = out["real"], out["shuffled"]
    assert real["miou"] >= 0.9 and real["giou"] >= 0.9, out
    assert shuffled["giou"] <= 0.2, out
    assert real["giou"] - shuffled["giou"] >= 0.6, out
