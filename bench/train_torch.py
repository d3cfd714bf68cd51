"""The PyTorch side of the training-step comparison: transformers LLaVA-OneVision, float32 CPU.

    .venv/bin/python -m bench.train_torch --preset llava-onevision-0.5b --steps 2 --out torch.json
    .venv/bin/python -m bench.train_torch --preset tiny --steps 2          # quick check

The same step as `bench.train_step` times in JAX (`rsunivlm_jax.train.step.make_train_step`),
on `transformers.LlavaOnevisionForConditionalGeneration` built with the preset's dimensions by
`bench.forward.torch_model` (random weights):

* the same batch: `rsunivlm_jax.train.data.RandomBatches` (seed 0), its one image placeholder
  expanded to the 730 positions the model fills with image features, so the decoder sees the
  same `--seq_len` positions, with the same attention mask;
* forward with `logits_to_keep` = the positions our `output="text"` keeps (the last position of
  the image block, then every text token), so the LM head does the same work as ours; summed
  next-token cross-entropy over the same loss mask divided by its target count;
* backward; `clip_grad_norm_(1.0)`; `torch.optim.AdamW` (lr 1e-5, betas 0.9/0.999, eps 1e-8, no
  weight decay, `fused=True`: one pass per tensor, no foreach temporaries) over every parameter,
  like the JAX step's optax chain; `zero_grad()` (set to None) before the next step;
* activation checkpointing per decoder / vision layer (`--checkpointing`, default on; the
  counterpart of `remat_policy="full"`), because keeping every activation of 1,024 positions
  does not fit next to ~14 GB of parameters, gradients and moments in 24 GB;
* `--attn sdpa` (transformers' default attention; `eager` is the explicit-softmax path).

Step 0 (a warm-up that also creates the AdamW moments) is reported separately; the step time is
the median of the `--steps` steps after it. Prints and writes (`--out`) a JSON result with step
times, CPU seconds, load averages, peak RSS and the float32 GEMM peak measured in this process.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np


def _load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def expand_batch(batch: dict, cfg) -> dict:
    """Our batch (one placeholder per image) -> transformers inputs: placeholders repeated to the
    image's positions, the attention mask repeated with them, and the positions our
    `output="text"` keeps (`keep`, the expanded index of each text token's last position)."""
    ids, mask, loss_mask = (np.asarray(batch[k])[0] for k in ("input_ids", "attention_mask", "loss_mask"))
    per_image = cfg.tokens_per_image
    out_ids, out_mask, keep = [], [], []
    for tok, m in zip(ids.tolist(), mask.tolist()):
        n = per_image if tok == cfg.image_token_id else 1
        out_ids += [tok] * n
        out_mask += [m] * n
        keep.append(len(out_ids) - 1)
    n_img = int(np.asarray(batch["num_images"])[0])
    px = np.asarray(batch["pixel_values"])[0, :n_img]  # [N, S, S, 3]
    return {"input_ids": np.array([out_ids]), "attention_mask": np.array([out_mask]), "keep": np.array(keep),
            "targets": ids[1:], "weights": loss_mask[1:].astype(np.float32), "pixels": px.transpose(0, 3, 1, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llava-onevision-0.5b")
    parser.add_argument("--seq_len", type=int, default=1024, help="decoder positions (text + image tokens)")
    parser.add_argument("--num_images", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up step")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--checkpointing", default="on", choices=("on", "off"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    import torch
    import rsunivlm_jax as rs
    from bench.common import machine_info, peak_matmul_flops
    from bench.forward import torch_model
    from rsunivlm_jax.train import data as data_lib, metrics as metrics_lib

    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] torch: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    torch.set_num_threads(args.threads)
    peak = peak_matmul_flops(n=2048)
    log(f"matmul peak {peak['peak_flops'] / 1e9:.1f} GFLOP/s")

    cfg = rs.presets.get(args.preset)
    text_len = args.seq_len - args.num_images * (cfg.tokens_per_image - 1)
    src = data_lib.RandomBatches(cfg, global_batch=1, text_len=text_len, num_images=args.num_images,
                                 process_index=0, process_count=1)
    batches = [expand_batch(src.batch(i), cfg) for i in range(args.steps + 1)]
    if batches[0]["input_ids"].shape[1] != args.seq_len:
        raise SystemExit(f"expanded length {batches[0]['input_ids'].shape[1]} != --seq_len {args.seq_len}")

    t0 = time.perf_counter()
    model = torch_model(cfg)
    model.config._attn_implementation = args.attn
    for sub in (model.config.text_config, model.config.vision_config):
        sub._attn_implementation = args.attn
    model.train()
    if args.checkpointing == "on":
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"init {n_params / 1e9:.3f} B params in {time.perf_counter() - t0:.1f} s")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            fused=True)
    s = cfg.vision.image_size

    def step(b: dict) -> float:
        n = b["pixels"].shape[0]
        out = model(input_ids=torch.from_numpy(b["input_ids"]).long(),
                    attention_mask=torch.from_numpy(b["attention_mask"]).long(),
                    pixel_values=torch.from_numpy(np.ascontiguousarray(b["pixels"]))[:, None],
                    image_sizes=torch.tensor([[s, s]] * n), batch_num_images=torch.tensor([2 if n == 1 else n]),
                    logits_to_keep=torch.from_numpy(b["keep"]).long(), use_cache=False)
        logits = out.logits[0, :-1].float()
        ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(b["targets"]).long(), reduction="none")
        w = torch.from_numpy(b["weights"])
        loss = (ce * w).sum() / w.sum().clamp(min=1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    t0 = time.perf_counter()
    loss = step(batches[0])
    first = time.perf_counter() - t0
    log(f"warm-up step {first:.1f} s, loss {loss:.4f}")
    times, cpu_times, loads = [], [], []
    for i in range(1, args.steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(batches[i])
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        loads.append(_load1())
        log(f"step {i}: {times[-1]:.2f} s wall, {cpu_times[-1]:.1f} s CPU, loss {loss:.4f}, load {loads[-1]}")
    del opt, model
    after = peak_matmul_flops(n=2048)
    flops = metrics_lib.flops_per_example(cfg, text_len, args.num_images)["total"]
    step_time = statistics.median(times)
    best_peak = max(peak["peak_flops"], after["peak_flops"])
    result = {
        "framework": "torch", "preset": args.preset, "dtype": "float32", "optimizer": "adamw",
        "checkpointing": args.checkpointing, "attn": args.attn, "batch": 1, "num_images": args.num_images,
        "text_len": text_len, "decoder_positions": args.seq_len, "params": n_params,
        "first_step_s": first, "step_times_s": times, "step_time_s": step_time, "cpu_seconds_per_step": cpu_times,
        "load_average_after_each_step": loads, "model_tflop_per_step": flops / 1e12,
        "achieved_gflops": flops / step_time / 1e9, "matmul_peak_gflops": best_peak / 1e9,
        "matmul": {"before": peak, "after": after}, "torch_threads": torch.get_num_threads(),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "machine": machine_info(),
    }
    from bench.common import save_result
    save_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
