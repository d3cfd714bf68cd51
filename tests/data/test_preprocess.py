"""Image preprocessing against a PIL + numpy reference, and defensive decoding."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax.data import preprocess


def _reference(img: Image.Image, size: int) -> np.ndarray:
    """SigLipImageProcessor: RGB, PIL bicubic resize, x/255 (float64), (x - 0.5) / 0.5."""
    x = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC)).astype(np.float64) / 255.0
    return ((x - 0.5) / 0.5).astype(np.float32)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("hw", [(50, 70), (384, 384), (512, 512), (20, 20)])
def test_matches_reference(hw):
    arr = (np.random.default_rng(0).random(hw + (3,)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    out = preprocess.preprocess_image(img, 384)
    assert out.dtype == np.float32 and out.shape == (384, 384, 3)
    np.testing.assert_allclose(out, _reference(img, 384), rtol=0, atol=1e-6)
    assert out.min() >= -1 and out.max() <= 1


def test_two_images_are_padded_to_square_with_127():
    rng = np.random.default_rng(1)
    a = Image.fromarray((rng.random((30, 60, 3)) * 255).astype(np.uint8))   # wide
    b = Image.fromarray((rng.random((60, 60, 3)) * 255).astype(np.uint8))   # square
    out = preprocess.preprocess_images([a, b], 32, max_images=3)
    assert out.shape == (3, 32, 32, 3) and not out[2].any()
    ref = np.full((60, 60, 3), 127, np.uint8)
    ref[15:45] = np.asarray(a)
    np.testing.assert_allclose(out[0], _reference(Image.fromarray(ref), 32), atol=1e-6)
    np.testing.assert_allclose(out[1], _reference(b, 32), atol=1e-6)
    # a single image is squashed, not padded
    single = preprocess.preprocess_images([a], 32, max_images=1)
    np.testing.assert_allclose(single[0], _reference(a, 32), atol=1e-6)
    with pytest.raises(ValueError):
        preprocess.preprocess_images([a, b], 32, max_images=1)


def test_modes_are_converted_to_rgb():
    rng = np.random.default_rng(2)
    grey = (rng.random((16, 16)) * 255).astype(np.uint8)
    img = preprocess.open_image(_png_bytes(Image.fromarray(grey, "L")))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), np.repeat(grey[..., None], 3, -1))
    rgba = (rng.random((16, 16, 4)) * 255).astype(np.uint8)
    img = preprocess.open_image(_png_bytes(Image.fromarray(rgba, "RGBA")))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), rgba[..., :3])
    deep = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)   # 0..65535
    img = preprocess.open_image(_png_bytes(Image.fromarray(deep)))
    assert img.mode == "RGB"
    assert np.array_equal(np.asarray(img)[..., 0], np.arange(256, dtype=np.uint8).reshape(16, 16))
    pal = Image.fromarray(grey, "L").convert("P")
    assert preprocess.open_image(_png_bytes(pal)).mode == "RGB"


def test_corrupt_missing_and_huge_images(tmp_path):
    good = _png_bytes(Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 9))
    with pytest.raises(preprocess.ImageDecodeError) as e:
        preprocess.open_image(good[: len(good) // 2])
    assert e.value.reason == "corrupt_image"
    with pytest.raises(preprocess.ImageDecodeError) as e:
        preprocess.open_image(b"not an image at all")
    assert e.value.reason == "corrupt_image"
    with pytest.raises(preprocess.ImageDecodeError) as e:
        preprocess.open_image(str(tmp_path / "nope.png"))
    assert e.value.reason == "missing_image"
    # a PNG header claiming 100000 x 100000 pixels: refused before any pixel is decoded
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    huge = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    with pytest.raises(preprocess.ImageDecodeError) as e:
        preprocess.open_image(huge)
    assert e.value.reason == "image_too_large"
    with pytest.raises(preprocess.ImageDecodeError) as e:
        preprocess.open_image(good, max_pixels=1000)
    assert e.value.reason == "image_too_large"


def test_denormalise_inverts():
    arr = (np.random.default_rng(3).random((8, 8, 3)) * 255).astype(np.uint8)
    x = preprocess.preprocess_image(Image.fromarray(arr), 8)
    assert np.array_equal(preprocess.denormalise(x), arr)
