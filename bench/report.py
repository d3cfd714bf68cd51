"""Render docs/benchmarks.md from bench/results/*.json (written by `python -m bench`)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "benchmarks.md"

# Result files in the order the page presents them (name -> what it is).
FILES = {
    "vision_b1": "vision tower",
    "forward_rsunivlm-1b_1img": "prefill, 1 image",
    "forward_rsunivlm-1b_2img": "prefill, 2 images",
    "decode_rsunivlm-1b": "decode",
    "vision_b1_bf16": "vision tower, bfloat16",
    "forward_rsunivlm-1b_1img_bf16": "prefill, 1 image, bfloat16",
    "decode_rsunivlm-1b_bf16": "decode, bfloat16",
    "train_compare_llava-onevision-0.5b": "training step vs PyTorch",
    "train_step_rsunivlm-1b": "training step rsunivlm-1b",
    "profile_train_llava-onevision-0.5b": "training step profile",
    "xla_options": "XLA:CPU options",
    "data_pipeline": "data pipeline",
    "convert_full": "checkpoint conversion",
}


def _load(name: str, results: Path | None = None) -> dict | None:
    path = (results or RESULTS) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ratio_rows(rows: list[str]) -> list[str]:
    head = ["| Benchmark | Ours (JAX) | transformers | Speed-up | Bound and utilisation | Goal | "
            "Host: CPU, float32 GEMM XLA / torch, load |",
            "|---|---|---|---|---|---|---|"]
    return head + rows if rows else []


def _floor(x: float, digits: int = 2) -> float:
    """`x` rounded down to `digits` decimals (a goal is never shown as met by rounding)."""
    return math.floor(x * 10 ** digits + 1e-9) / 10 ** digits


def _x(x: float) -> str:
    return f"{_floor(x):.2f}x"


def xla_gemm(r: dict) -> float | None:
    """XLA's best float32 GEMM rate (FLOP/s) measured in the run that wrote `r`."""
    if r.get("xla_gemm_gflops"):
        return r["xla_gemm_gflops"] * 1e9
    m = r.get("matmul") or {}
    return m.get("jax_flops")


def torch_gemm(r: dict) -> float | None:
    if r.get("torch_gemm_gflops"):
        return r["torch_gemm_gflops"] * 1e9
    return (r.get("matmul") or {}).get("torch_flops")


def _host(r: dict) -> str:
    """The conditions of one result: CPU model, both libraries' GEMM rates measured in the same run,
    the load average (1 min) at its end."""
    cpu = (r.get("machine") or {}).get("cpu_model") or r.get("cpu_model") or "CPU model not recorded"
    x, t = xla_gemm(r), torch_gemm(r)
    gemm = f"{x / 1e9:.0f} / {t / 1e9:.0f} GFLOP/s" if x and t else "GEMM rates not recorded"
    return f"{cpu}; {gemm}; load {_load_of(r)}"


DTYPES = {"": "float32", "_bf16": "bfloat16"}


def _vision(rows, load, sfx=""):
    r = load(f"vision_b1{sfx}")
    if r:
        j, t = r["timing"]["jax"]["median_s"], r["timing"]["torch"]["median_s"]
        rows.append(f"| vision tower, 26 blocks, 1 image 384x384, {DTYPES[sfx]} | {j:.2f} s | {t:.2f} s | "
                    f"{t / j:.2f}x | MFU {r['mfu_jax']:.0%} (torch {r['mfu_torch']:.0%}) of "
                    f"{r['matmul']['peak_flops'] / 1e9:.0f} GFLOP/s | "
                    f"{'>= 1.1x and >= 80% of XLA GEMM' if not sfx else '-'} | {_host(r)} |")


def _prefill(rows, load, sfx=""):
    for n in (1, 2):
        r = load(f"forward_rsunivlm-1b_{n}img{sfx}")
        if r:
            j, t = r["timing"]["jax"]["median_s"], r["timing"]["torch"]["median_s"]
            bound = f"matmul peak {r['matmul']['peak_flops'] / 1e9:.0f} GFLOP/s"
            if r.get("flops"):
                bound = (f"MFU {r['flops'] / j / r['matmul']['peak_flops']:.0%} (torch "
                         f"{r['flops'] / t / r['matmul']['peak_flops']:.0%}) of {r['matmul']['peak_flops'] / 1e9:.0f}"
                         f" GFLOP/s")
            rows.append(f"| prefill rsunivlm-1b, {n} image{'s' if n > 1 else ''} + {r['text_tokens']} text tokens "
                        f"({r['sequence']} positions), {DTYPES[sfx]} | {j:.2f} s | {t:.2f} s | {t / j:.2f}x | "
                        f"{bound} | {'>= 1.2x and >= 80% of XLA GEMM' if not sfx else '-'} | {_host(r)} |")


def _decode(rows, load, sfx=""):
    r = load(f"decode_rsunivlm-1b{sfx}")
    if r:
        for row in r["results"]:
            goal = "-" if sfx else (">= 95% of bound" if row["batch"] == 1 else ">= 1.5x" if row["batch"] == 8 else "-")
            rows.append(f"| decode rsunivlm-1b, batch {row['batch']}, {r['new_tokens']} new tokens, {DTYPES[sfx]} | "
                        f"{row['jax']['decode_tok_s']:.2f} tok/s | {row['torch']['decode_tok_s']:.2f} tok/s | "
                        f"{row['speedup_jax_over_torch']:.2f}x | {_floor_pct(row['jax_fraction_of_bound'])} (torch "
                        f"{_floor_pct(row.get('torch_fraction_of_bound', float('nan')))}) of the "
                        f"{row['bound_tok_s']:.1f} tok/s bandwidth bound ({r['bandwidth_bytes_s']['best'] / 1e9:.1f}"
                        f" GB/s read) | {goal} | {_host(r)} |")


def _bf16_peak(lines, load):
    """The bfloat16 GEMM rates behind the bfloat16 rows (XLA:CPU computes bfloat16 dots in float32)."""
    peaks = [r["matmul"] for r in map(load, ("vision_b1_bf16", "forward_rsunivlm-1b_1img_bf16")) if r]
    if peaks:
        m = peaks[0]
        lines += ["", f"bfloat16 rows: 2048^2 GEMM at {m['jax_flops'] / 1e9:.0f} GFLOP/s with XLA and "
                  f"{m['torch_flops'] / 1e9:.0f} GFLOP/s with torch (oneDNN on the CPU's AMX / AVX512-BF16 units). "
                  "XLA:CPU in jax 0.10 has no bfloat16 GEMM: it converts both operands to float32, multiplies in "
                  "float32 and converts back (visible in the optimised HLO, with every oneDNN / XNNPACK XLA_FLAGS "
                  "setting tried), "
                  "so bfloat16 is slower than float32 for us and up to several times faster for torch."]


REMAT = {"full": "every layer recomputed in the backward pass (`remat_policy=\"full\"`, like transformers' "
                 "activation checkpointing)",
         "dots": "matmul outputs kept, element-wise work recomputed (`remat_policy=\"dots\"`)",
         "none": "no rematerialisation"}


def _jax_sides(r: dict) -> list[tuple[str, dict]]:
    variants = r.get("jax_remat_variants") or [r["jax_remat"]]
    return [(v, r.get(f"jax_{v}", r["jax"])) for v in variants]


def _train_compare_row(rows, load):
    r = load("train_compare_llava-onevision-0.5b")
    if r:
        t = r["torch"]
        for remat, j in _jax_sides(r):
            speedup = t["step_time_s"] / j["step_time_s"]
            rows.append(f"| training step {r['preset']}, AdamW, 1 image, {r['decoder_positions']} positions; JAX "
                        f"remat {remat}, transformers checkpointing {r['torch_checkpointing']} | "
                        f"{j['step_time_s']:.1f} s | {t['step_time_s']:.1f} s | {speedup:.2f}x | MFU {j['mfu']:.0%} "
                        f"(torch {t['mfu']:.0%}) of {r['matmul_peak_gflops']:.0f} GFLOP/s"
                        + (f"; {j['achieved_gflops'] * 1e9 / xla_gemm(r):.0%} of XLA GEMM" if xla_gemm(r) else "")
                        + f" | >= 1.15x and >= 65% of XLA GEMM | {_host(r)} |")


def _train_compare(lines, load):
    r = load("train_compare_llava-onevision-0.5b")
    if not r:
        return
    t = r["torch"]
    sides = _jax_sides(r)
    remat = "; ".join(f"{v}: {REMAT[v]}" for v, _ in sides)
    lines += ["", f"## Training step vs PyTorch ({r['preset']}, float32, batch 1, one image, "
              f"{r['decoder_positions']} positions, AdamW)", "",
              "One step = forward, backward, global-norm clipping at 1.0 and AdamW over every parameter "
              f"({(r.get('params') or 0) / 1e9:.3f} B). Full AdamW on rsunivlm-1b (1.66 B parameters: parameters, "
              "gradients and two moments = 26.5 GB in float32) does not fit this machine's 24 GB in either framework; "
              "the dense stage-1 model it was upcycled from (same vision tower, connector and decoder widths, one MLP "
              "instead of three experts; 14.3 GB of state) does, and does the same FLOPs per token. Each framework ran "
              f"in its own process, {r['rounds']} round(s) of blocks in the order "
              + ", ".join([f"JAX (remat {sides[0][0]})", "transformers"] + [f"JAX (remat {v})" for v, _ in sides[1:]])
              + ", "
              f"{r['steps_per_block']} timed steps per block after an excluded first step (JAX: compile + first run). "
              f"JAX remat policies: {remat}. transformers: `LlavaOnevisionForConditionalGeneration`, activation "
              "checkpointing "
              f"{r['torch_checkpointing']}, `{r['torch_attn']}` attention, fused AdamW, logits only at the text "
              "positions (as ours).", "",
              "| | Step time (median) | Steps (s) | Model GFLOP/s | MFU | Peak RSS |", "|---|---|---|---|---|---|"]
    for name, x in [(f"JAX, remat {v}", j) for v, j in sides] + [("transformers", t)]:
        lines.append(f"| {name} | {x['step_time_s']:.1f} s | {', '.join(f'{s:.1f}' for s in x['step_times_s'])} | "
                     f"{x['achieved_gflops']:.0f} | {x['mfu']:.0%} | {x['peak_rss_gib']:.1f} GiB |")
    lines += ["", f"Model FLOPs {r['model_tflop_per_step']:.2f} TFLOP per step (remat recomputation not counted); "
              f"matmul peak {r['matmul_peak_gflops']:.0f} GFLOP/s (best float32 GEMM seen in the run). "
              "Speed-up over transformers: " + ", ".join(f"{_x(t['step_time_s'] / j['step_time_s'])} (remat {v})"
                                                         for v, j in sides)
              + (f". XLA's float32 GEMM rate in the run: {xla_gemm(r) / 1e9:.0f} GFLOP/s, torch's "
                 f"{torch_gemm(r) / 1e9:.0f}" if xla_gemm(r) and torch_gemm(r) else "")
              + ". Goals: >= 65% of XLA's GEMM rate, >= 1.15x transformers, peak RSS no higher than "
                "transformers'. Host: " + _host(r) + "."]


def _train(lines, load):
    r = load("train_step_rsunivlm-1b")
    if r:
        mfu = r["achieved_gflops"] / r["matmul_peak_gflops"]
        lines += ["", "## Training step, JAX only (rsunivlm-1b, float32, batch 1, one image, "
                  f"{r['decoder_positions']} positions, optimiser {r['optimizer']}, remat {r['remat']})", "",
                  f"Step time {r['step_time_s']:.1f} s (compile + first step {r['first_step_s']:.0f} s); model FLOPs "
                  f"{r['model_tflop_per_step']:.2f} TFLOP per step; achieved {r['achieved_gflops']:.0f} GFLOP/s = "
                  f"**{mfu:.0%} of the measured matmul peak** ({r['matmul_peak_gflops']:.0f} GFLOP/s"
                  + (f"; {r['achieved_gflops'] * 1e9 / _train_step_xla_gemm(r):.0%} of XLA's "
                     f"{_train_step_xla_gemm(r) / 1e9:.0f}" if _train_step_xla_gemm(r) else "")
                  + "). Goal: >= 65% of XLA's GEMM rate. "
                  "SGD because AdamW's moments do not fit next to the 1.66 B parameters (see above)."]


def _xla_options(lines, load):
    r = load("xla_options")
    if not r:
        return
    st = r["settings"]
    lines += ["", "## XLA:CPU options and remat policies (training step cut to "
              f"{st['layers']} blocks, vision tower {st['vision_layers']} blocks)", "",
              f"`python -m bench.xla_options`: one process per variant and round, {st['rounds']} rounds alternating "
              "the variants; medians. The step is llava-onevision-0.5b's AdamW step (1,024 positions, one image) "
              f"with {st['layers']} decoder and {st['layers']} vision blocks; the tower forward has rsunivlm-1b's "
              f"widths and {st['vision_layers']} blocks. Host: {r.get('cpu_model', '')}, load "
              f"{r['load_average_start_end'][0][0]:.1f} -> {r['load_average_start_end'][1][0]:.1f}.", "",
              "| Variant | XLA_FLAGS | remat | Step (median) | Step per round | vs first | Vision | vs first "
              "| XLA / torch GEMM (GFLOP/s) | Step FLOP/s / XLA GEMM | Peak RSS |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, x in r["summary"].items():
        meta = r["variants"][v]
        if x.get("failed"):
            lines.append(f"| {v} | `{meta['xla_flags']}` | {meta['remat']} | failed | | | | | | | |")
            continue
        per_round = ", ".join(f"{y['step_s']:.1f}" for y in r["runs"][v] if "step_s" in y)
        lines.append(f"| {v} | `{meta['xla_flags'] or '(none)'}` | {meta['remat']} | {x['step_s']:.2f} s | {per_round} | "
                     f"{_x(x['step_vs_first'])} | {x['vision_s']:.2f} s | {_x(x['vision_vs_first'])} | "
                     f"{x['xla_gemm_gflops']:.0f} / {x['torch_gemm_gflops']:.0f} | "
                     f"{_floor_pct(x['step_fraction_of_xla_gemm'])} | {x['peak_rss_gib']:.1f} GiB |")
    lines += ["", "A difference smaller than the spread of a variant's rounds is noise; "
              "[profiling.md](profiling.md) says which variants were kept."]


def _data(lines, load):
    r = load("data_pipeline")
    if r:
        lines += ["", "## Data pipeline (384x384, batch 8)", "", "| Workers | samples/s |", "|---|---|"]
        lines += [f"| {x.get('workers')} | {x.get('samples_per_s', float('nan')):.1f} |" for x in r["results"]]


def _convert(lines, load):
    r = load("convert_full")
    if r:
        lines += ["", "## Conversion of a full-size rsunivlm-1b checkpoint (bf16 safetensors source)", "",
                  "| Step | Time | Peak RSS |", "|---|---|---|"]
        for k, v in r.items():
            if isinstance(v, dict) and "wall_s" in v:
                lines.append(f"| {k} | {v['wall_s']:.1f} s | {v['peak_rss_gib']:.2f} GiB |")


def _load_of(r: dict) -> str:
    """The load average (1 min) recorded with a result, wherever that script put it."""
    for key in ("load_average_at_end", "load_average_start_end", "load_average_after_each_step", "load_average"):
        v = r.get(key)
        if v:
            while isinstance(v, list) and v and isinstance(v[-1], list):
                v = v[-1]
            return f"{v[0] if isinstance(v, list) else v:.1f}"
    for sub in ("jax", "torch"):
        if isinstance(r.get(sub), dict) and r[sub].get("load_average_after_each_step"):
            return f"{max(r[sub]['load_average_after_each_step']):.1f}"
    return "not recorded"


def _floor_pct(x: float) -> str:
    """A fraction as a percentage rounded down to 0.1 (79.97% reads 79.9%, not a met-looking 80%)."""
    return f"{math.floor(x * 1000) / 10:.1f}%" if math.isfinite(x) else "n/a"


def _train_step_xla_gemm(r: dict) -> float | None:
    """XLA's best float32 GEMM rate in a `bench.train_step` result (before and after its steps)."""
    seen = list((r.get("matmul_peak_by_size_gflops") or {}).values())
    seen += list((r.get("matmul_peak_after_steps_gflops") or {}).values())
    seen += [(r.get("matmul_peak_detail") or {}).get("jax_flops", 0.0) / 1e9]
    return max(seen) * 1e9 if any(seen) else None


def _non_gemm_share(p: dict) -> float:
    """Non-GEMM op time of a `bench.profile` result as a share of the profiled call's wall time."""
    matmul = sum(k["time_s"] for k in p["by_kind"] if k["key"] == "matmul")
    return (p["total_op_time_s"] - matmul) / p["wall_s"]


def goal_rows(load) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for each performance goal, from the current results. Every number is
    rounded down; rates are against XLA's own float32 GEMM rate measured in the same run (so a
    faster or slower host does not meet or miss a goal by itself)."""
    rows = []
    r = load("vision_b1")
    if r:
        x = r["timing"]["torch"]["median_s"] / r["timing"]["jax"]["median_s"]
        rows.append(("vision tower >= 1.1x transformers", _x(x), x >= 1.1))
        if xla_gemm(r):
            f = r["flops"] / r["timing"]["jax"]["median_s"] / xla_gemm(r)
            rows.append(("vision tower >= 80% of XLA's GEMM rate", _floor_pct(f), f >= 0.8))
    for n in (1, 2):
        r = load(f"forward_rsunivlm-1b_{n}img")
        if r:
            what = f"prefill ({n} image{'s' if n > 1 else ''})"
            x = r["timing"]["torch"]["median_s"] / r["timing"]["jax"]["median_s"]
            rows.append((f"{what} >= 1.2x transformers", _x(x), x >= 1.2))
            if xla_gemm(r) and r.get("flops"):
                f = r["flops"] / r["timing"]["jax"]["median_s"] / xla_gemm(r)
                rows.append((f"{what} >= 80% of XLA's GEMM rate", _floor_pct(f), f >= 0.8))
    r = load("decode_rsunivlm-1b")
    if r:
        for row in r["results"]:
            if row["batch"] == 1:
                rows.append(("decode batch 1 >= 95% of the measured bandwidth bound",
                             f"{_floor_pct(row['jax_fraction_of_bound'])} (torch "
                             f"{_floor_pct(row.get('torch_fraction_of_bound', float('nan')))})",
                             row["jax_fraction_of_bound"] >= 0.95))
            if row["batch"] == 8:
                rows.append(("decode batch 8 >= 1.5x transformers", _x(row["speedup_jax_over_torch"]),
                             row["speedup_jax_over_torch"] >= 1.5))
    r = load("train_compare_llava-onevision-0.5b")
    if r:
        t = r["torch"]
        for remat, j in _jax_sides(r):
            what = f"training step (AdamW, remat {remat})"
            if xla_gemm(r):
                f = j["achieved_gflops"] * 1e9 / xla_gemm(r)
                rows.append((f"{what}: model FLOP/s >= 65% of XLA's GEMM rate", _floor_pct(f), f >= 0.65))
            x = t["step_time_s"] / j["step_time_s"]
            rows.append((f"{what} >= 1.15x transformers", _x(x), x >= 1.15))
            rows.append((f"{what}: peak RSS <= transformers'", f"{j['peak_rss_gib']:.1f} GiB (transformers "
                         f"{t['peak_rss_gib']:.1f} GiB)", j["peak_rss_gib"] <= t["peak_rss_gib"]))
    p = load("profile_train_llava-onevision-0.5b")
    if p:
        f = _non_gemm_share(p)
        rows.append((f"training step: non-GEMM time <= 15% of the step (profile, remat "
                     f"{p['settings']['remat']})", f"{math.ceil(f * 1000 - 1e-9) / 10:.1f}%", f <= 0.15))
    r = load("train_step_rsunivlm-1b")
    if r and _train_step_xla_gemm(r):
        f = r["achieved_gflops"] * 1e9 / _train_step_xla_gemm(r)
        rows.append(("training step rsunivlm-1b (SGD): model FLOP/s >= 65% of XLA's GEMM rate", _floor_pct(f),
                     f >= 0.65))
    return rows


def _goals(lines, load):
    """Each goal, met or not, from the current results."""
    rows = goal_rows(load)
    if rows:
        lines += ["", "## Goals", "",
                  "Rates are against XLA's own best float32 GEMM rate and ratios against transformers, both "
                  "measured in the same run as the result (alternating), so a change of host does not meet or miss "
                  "a goal by itself. Numbers are rounded down (shares that must stay below a line, up).", "",
                  "| Goal | Measured | Met |", "|---|---|---|"]
        lines += [f"| {g} | {v} | {'yes' if ok else '**no**'} |" for g, v, ok in rows]
        lines += ["", "Where a goal is missed, [profiling.md](profiling.md) says where the time goes."]


def _conditions(lines, load, cpus):
    rows = []
    for name, what in FILES.items():
        r = load(name)
        if r:
            rows.append(f"| {what} | `bench/results/{name}.json` | {r.get('measured_at', 'not recorded')} | "
                        f"{_load_of(r)} |")
    if rows:
        lines += ["", "## Measurement conditions", "",
                  f"Load average (1 min) when each result was written. A benchmark's own threads account for "
                  f"about {cpus} on this {cpus}-CPU machine; clearly more means other jobs shared the cores and the "
                  "timings are pessimistic and the ratios shift (under load 5-8 earlier runs favoured JAX by 1.4-3x).", "",
                  "| Benchmark | Result file | Measured | Load |", "|---|---|---|---|"] + rows


def render(results: Path | None = None) -> str:
    load = lambda name: _load(name, results)  # noqa: E731
    rows: list[str] = []
    _vision(rows, load)
    _prefill(rows, load)
    _decode(rows, load)
    _train_compare_row(rows, load)
    _vision(rows, load, "_bf16")
    _prefill(rows, load, "_bf16")
    _decode(rows, load, "_bf16")
    machine = next((r["machine"] for r in map(load, FILES) if r and r.get("machine")), {})
    lines = ["# Benchmarks", "",
             "Produced by `.venv/bin/python -m bench` (render only: `--report-only`); every ratio comes from one "
             "run timing both implementations alternately (median of repetitions, warm-up excluded), "
             "float32 on CPU unless a row says bfloat16. See the per-benchmark JSON in `bench/results/` for "
             "individual runs and load averages, and [profiling.md](profiling.md) for where the time goes in "
             "prefill, decode and a training step.",
             "", f"Machine: {machine.get('cpus')} CPUs, {machine.get('platform')}, jax {machine.get('jax')}, "
             f"torch {machine.get('torch')}, transformers {machine.get('transformers')}.", ""]
    lines += _ratio_rows(rows)
    _bf16_peak(lines, load)
    _goals(lines, load)
    _train_compare(lines, load)
    _train(lines, load)
    _xla_options(lines, load)
    _data(lines, load)
    _convert(lines, load)
    _conditions(lines, load, machine.get("cpus"))
    notes = ROOT / "docs" / "benchmarks_notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines) + "\n"


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, text) of each `## ` section of a page (the text before the first one is dropped)."""
    parts = re.split(r"(?m)^(?=## )", text)
    return [(p.splitlines()[0][3:].strip(), p.rstrip("\n")) for p in parts if p.startswith("## ")]


def _key(heading: str) -> str:
    return heading.split(" (")[0].strip()


def merge_kept_sections(new: str, old: str) -> str:
    """`new` plus, verbatim and in their order, the sections of `old` that the generator does not
    write (hand-written results such as the routing and LoRA sections)."""
    generated = {_key(h) for h, _ in _sections(new)}
    kept = [body for h, body in _sections(old) if _key(h) not in generated]
    return new.rstrip("\n") + "".join("\n\n" + k for k in kept) + "\n" if kept else new


def write(results: Path | None = None, out: Path | None = None) -> Path:
    out = out or OUT
    text = render(results)
    if out.exists():
        text = merge_kept_sections(text, out.read_text())
    out.write_text(text)
    return out


if __name__ == "__main__":
    print(write())
