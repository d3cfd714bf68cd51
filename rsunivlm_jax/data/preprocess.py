"""Image decoding and preprocessing, identical to the reference processor (docs/architecture.md, section 3).

Counterparts: `SigLipImageProcessor` (`llava/model/multimodal_encoder/siglip_encoder.py`) and
`process_images` / `expand2square` (`llava/mm_utils.py`, `llava/train/train.py`):

    RGB -> (two-image samples: expand2square on (127, 127, 127)) -> PIL bicubic resize to S x S
    -> x / 255 -> (x - 0.5) / 0.5 -> float32 NHWC.

Decoding is defensive: size is checked from the header before pixels are read (huge images are
refused), truncated files raise, and greyscale / palette / RGBA / 16-bit / float images are
converted to 8-bit RGB explicitly.
"""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageFile

PAD_COLOR = (127, 127, 127)   # int(0.5 * 255): the image mean, as in the reference training code
DEFAULT_MAX_PIXELS = 12_000 * 12_000
MEAN = STD = 0.5

ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ValueError):
    """An image could not be used. `reason` is a short key for skip counting."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def open_image(src: str | os.PathLike | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> Image.Image:
    """Decodes a file path or encoded bytes to an 8-bit RGB PIL image.

    Raises `ImageDecodeError` with reason ``missing_image``, ``image_too_large`` or
    ``corrupt_image``.
    """
    label = name or (f"<{len(src)} bytes>" if isinstance(src, (bytes, bytearray)) else str(src))
    if not isinstance(src, (bytes, bytearray)) and not os.path.isfile(src):
        raise ImageDecodeError("missing_image", f"image file not found: {label}")
    try:
        fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else open(src, "rb")
        with fp:
            with Image.open(fp) as img:
                w, h = img.size
                if w <= 0 or h <= 0 or w * h > max_pixels:
                    raise ImageDecodeError("image_too_large",
                                           f"{label}: {w}x{h} pixels exceeds the limit of {max_pixels}")
                img.load()
                return to_rgb(img)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as e:
        if isinstance(e, Image.DecompressionBombError):
            raise ImageDecodeError("image_too_large", f"{label}: {e}") from e
        raise ImageDecodeError("corrupt_image", f"{label}: cannot decode image ({e})") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB. 16-bit / 32-bit integer images are scaled by 1/257
    (65535 -> 255) when their values exceed 255; float images are clipped to [0, 255]; alpha is
    dropped (the colour channels are kept, as `convert("RGB")` does)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.clip(np.round(np.asarray(img)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("RGB")


def expand2square(img: Image.Image, background=PAD_COLOR) -> Image.Image:
    """Pads to a square, image centred (reference `expand2square`)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def preprocess_image(img: Image.Image, image_size: int, *, pad_to_square: bool = False) -> np.ndarray:
    """PIL image -> float32 (S, S, 3) in [-1, 1]: bicubic resize (squash), /255, (x-0.5)/0.5."""
    img = to_rgb(img)
    if pad_to_square:
        img = expand2square(img)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BICUBIC)
    # transformers' `rescale` multiplies in float64 and casts; `normalize` then works in float32.
    x = (np.asarray(img, dtype=np.float64) * (1.0 / 255.0)).astype(np.float32)
    return (x - np.float32(MEAN)) / np.float32(STD)


def preprocess_images(images: Sequence[Image.Image], image_size: int, max_images: int) -> np.ndarray:
    """Images of one sample -> float32 (max_images, S, S, 3), zeros for absent images.

    Samples with more than one image take the training `"pad"` path (expand2square first).
    """
    if len(images) > max_images:
        raise ValueError(f"{len(images)} images exceed max_images={max_images}")
    out = np.zeros((max_images, image_size, image_size, 3), dtype=np.float32)
    pad = len(images) > 1
    for i, img in enumerate(images):
        out[i] = preprocess_image(img, image_size, pad_to_square=pad)
    return out


def denormalise(pixels: np.ndarray) -> np.ndarray:
    """Inverse of the normalisation, for rendering: float [-1, 1] -> uint8 [0, 255]."""
    return np.clip(np.round((np.asarray(pixels) * STD + MEAN) * 255.0), 0, 255).astype(np.uint8)
