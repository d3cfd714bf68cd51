"""Shared fixtures: a tiny random model saved as a checkpoint (Qwen2 vocabulary and tokenizer), test
images (two small ones, a corrupt file, a PNG whose header claims 100 megapixels) and a free port."""
import socket
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax.checkpoints import save as save_checkpoint
from tests.inference.conftest import numpy_init, real_vocab_tiny_config


@pytest.fixture(scope="session")
def app_checkpoint(tmp_path_factory):
    cfg = real_vocab_tiny_config()
    _, params = numpy_init(cfg, seed=3)
    return save_checkpoint(tmp_path_factory.mktemp("app") / "tiny", cfg, params)


def _png_header_only(path, width, height):
    """A PNG with a valid IHDR for width x height and no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return str(path)


@pytest.fixture(scope="session")
def app_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("app_images")
    rng = np.random.default_rng(0)
    out = {}
    for name in ("before", "after"):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(d / f"{name}.png")
        out[name] = str(d / f"{name}.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 10)
    out["corrupt"] = str(d / "corrupt.png")
    out["huge"] = _png_header_only(d / "huge.png", 10_000, 10_000)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
