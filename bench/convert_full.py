"""Benchmark: convert a full-size random `rsunivlm-1b` checkpoint (not a test).

Writes a random RSUniVLM-layout checkpoint (the release's key names, bfloat16 like the release,
1.657 B parameters, V = 151936, untied lm_head, 3 experts) in a few safetensors shards with an
index, plus config.json, generation_config.json and the real Qwen2 tokenizer files. Then runs
`python -m rsunivlm_jax.convert` in a child process for each requested --dtype and reports wall
time and the child's peak RSS (`os.wait4`), then restores the result with `load_pretrained`
(also in a child) and checks a few tensors against the source.

    .venv/bin/python bench/convert_full.py --work /tmp/convert_bench [--dtype bfloat16 float32] [--export]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RSUNIVLM_CONFIG = {
    "architectures": ["LlavaQwenGMoEForCausalLM"], "model_type": "llava_qwen_gmoe", "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768, "vocab_size": 151936,
    "tie_word_embeddings": False, "hidden_act": "silu", "use_sliding_window": False, "bos_token_id": 151643,
    "eos_token_id": 151645, "image_token_index": 151646, "mm_vision_tower": "google/siglip-so400m-patch14-384",
    "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu",
    "mm_hidden_size": 1152, "mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": "square",
    "mm_resampler_type": None, "torch_dtype": "bfloat16",
}
GENERATION_CONFIG = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                     "pad_token_id": 151643, "repetition_penalty": 1.1, "temperature": 0.7, "top_k": 20, "top_p": 0.8}


def write_source(src: Path, shard_gb: float, seed: int = 0) -> dict:
    """Random bf16 tensors for every key of the RSUniVLM layout, one shard in memory at a time."""
    import ml_dtypes
    import rsunivlm_jax as rs
    from rsunivlm_jax.convert import io
    from rsunivlm_jax.convert.export import torch_tensors

    cfg = rs.presets.get("rsunivlm-1b")
    _, abstract = rs.abstract_init(cfg)
    rng = np.random.default_rng(seed)
    bf16 = np.dtype(ml_dtypes.bfloat16)

    class Random:  # stands in for a params leaf: indexing yields a random slice of the right shape
        def __init__(self, shape):
            self.shape = shape

        def __getitem__(self, index):
            shape = self.shape[len(index):] if isinstance(index, tuple) else self.shape[1:]
            return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(bf16)

    fake = {k: (fake_tree(v, Random)) for k, v in abstract.items()}
    _, tensors = torch_tensors(fake, ("vision", "connector", "decoder", "lm_head"), 3, bf16)
    src.mkdir(parents=True)
    t0 = time.time()
    files = io.save_safetensors(src, tensors, int(shard_gb * (1 << 30)))
    (src / "config.json").write_text(json.dumps(RSUNIVLM_CONFIG, indent=2))
    (src / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    from rsunivlm_jax.data.tokenizer import tokenizer_files_dir
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(tokenizer_files_dir() / name, src / name)
    (src / "added_tokens.json").write_text(json.dumps({"<|endoftext|>": 151643, "<|im_start|>": 151644,
                                                       "<|im_end|>": 151645, "<image>": 151646}))
    n_params = sum(int(np.prod(t.nbytes)) for t in tensors) // 2
    return {"files": files, "tensors": len(tensors), "params": n_params,
            "bytes": sum((src / f).stat().st_size for f in files), "write_s": round(time.time() - t0, 1)}


def fake_tree(tree, leaf):
    if isinstance(tree, dict):
        return {k: fake_tree(v, leaf) for k, v in tree.items()}
    return leaf(tuple(tree.shape))


def run_child(argv: list[str]) -> dict:
    """Runs a command; returns wall time, peak RSS of that child (GiB) and its exit status."""
    t0 = time.time()
    proc = subprocess.Popen(argv, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(time.time() - t0, 1), "peak_rss_gib": round(usage.ru_maxrss / (1 << 20), 2),
            "exit": proc.returncode, "cmd": " ".join(argv)}


CHECK = r"""
import sys, time, json, numpy as np
t0 = time.time()
from rsunivlm_jax.checkpoints import load as load_pretrained
from rsunivlm_jax.convert.io import TensorReader
pre = load_pretrained(sys.argv[1])
load_s = time.time() - t0
reader = TensorReader.open(sys.argv[2])
checks = {
  "decoder/layers/mlp/gate_proj/kernel[5,2]": (pre.params["decoder"]["layers"]["mlp"]["gate_proj"]["kernel"][5, 2],
                                                reader.read("model.layers.5.mlp.2.gate_proj.weight").T),
  "lm_head/kernel": (pre.params["lm_head"]["kernel"], reader.read("lm_head.weight").T),
  "vision patch kernel": (pre.params["vision"]["embeddings"]["patch_embedding"]["kernel"],
                          reader.read("model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight")
                          .transpose(2, 3, 1, 0)),
}
ok = all(np.array_equal(np.asarray(a).astype(np.float32), b.astype(np.float32)) for a, b in checks.values())
print(json.dumps({"load_s": round(load_s, 1), "values_match": ok, "parts": list(pre.parts),
                  "tokenizer": type(pre.tokenizer).__name__}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/rsunivlm_convert_bench")
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--shard-gb", type=float, default=1.0)
    ap.add_argument("--export", action="store_true", help="also time --to-torch of the first conversion")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    report = {"source": write_source(work / "src", args.shard_gb)}
    print(json.dumps(report["source"]), flush=True)
    py = sys.executable
    for dtype in args.dtype:
        dst = work / f"ours_{dtype}"
        r = run_child([py, "-m", "rsunivlm_jax.convert", "--src", str(work / "src"), "--dst", str(dst),
                       "--dtype", dtype, "--quiet"])
        r["out_bytes"] = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) if dst.exists() else 0
        check = subprocess.run([py, "-c", CHECK, str(dst), str(work / "src")], cwd=ROOT, capture_output=True,
                               text=True)
        r["check"] = json.loads(check.stdout.strip().splitlines()[-1]) if check.returncode == 0 else check.stderr[-2000:]
        report[f"convert_{dtype}"] = r
        print(json.dumps(r), flush=True)
    if args.export:
        dtype = args.dtype[0]
        r = run_child([py, "-m", "rsunivlm_jax.convert", "--to-torch", "--src", str(work / f"ours_{dtype}"),
                       "--dst", str(work / "torch_again"), "--dtype", "bfloat16", "--quiet"])
        report["export_bfloat16"] = r
        print(json.dumps(r), flush=True)
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
