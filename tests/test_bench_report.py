"""bench/report.py renders every benchmark row from result JSON files (synthetic numbers here)."""
import json

from bench import report

MACHINE = {"cpus": 2, "platform": "linux", "jax": "0.x", "torch": "2.x", "transformers": "5.x"}


def _write(d, name, obj):
    (d / f"{name}.json").write_text(json.dumps(obj))


def _results(d):
    mm = {"peak_flops": 100e9}
    _write(d, "vision_b1", {"timing": {"jax": {"median_s": 10.0}, "torch": {"median_s": 15.0}}, "mfu_jax": 0.4,
                            "mfu_torch": 0.3, "matmul": mm, "machine": MACHINE, "measured_at": "2026-01-01 00:00:00",
                            "load_average_at_end": [3.5, 2.0, 1.0]})
    for n, seq in ((1, 780), (2, 1510)):
        _write(d, f"forward_rsunivlm-1b_{n}img", {"timing": {"jax": {"median_s": 20.0 * n}, "torch": {"median_s": 30.0 * n}},
                                                  "text_tokens": 50, "sequence": seq, "flops": 1e12 * n, "matmul": mm})
    bound = {"bytes_per_step": {}, "bound_tok_s": 5.0}
    _write(d, "decode_rsunivlm-1b", {"new_tokens": 64, "bandwidth_bytes_s": {"best": 9e9}, "results": [
        dict(bound, batch=1, jax={"decode_tok_s": 4.0}, torch={"decode_tok_s": 2.0}, speedup_jax_over_torch=2.0,
             jax_fraction_of_bound=0.8, torch_fraction_of_bound=0.4),
        dict(bound, batch=8, jax={"decode_tok_s": 16.0}, torch={"decode_tok_s": 8.0}, speedup_jax_over_torch=2.0,
             jax_fraction_of_bound=0.4, torch_fraction_of_bound=0.2)]})
    side = lambda s: {"step_time_s": s, "step_times_s": [s, s + 1], "achieved_gflops": 4500 / s, "mfu": 45 / s,  # noqa: E731
                      "peak_rss_gib": 15.0}
    _write(d, "train_compare_llava-onevision-0.5b", {
        "preset": "llava-onevision-0.5b", "decoder_positions": 1024, "jax": side(90.0), "jax_full": side(90.0),
        "jax_dots": side(75.0), "torch": side(120.0), "jax_remat_variants": ["full", "dots"],
        "speedup_jax_over_torch": 120 / 90, "matmul_peak_gflops": 100.0, "jax_remat": "full", "rounds": 1,
        "steps_per_block": 2, "torch_checkpointing": "on", "torch_attn": "sdpa", "params": 894e6,
        "model_tflop_per_step": 4.5})
    _write(d, "train_step_rsunivlm-1b", {"decoder_positions": 1024, "optimizer": "sgd", "remat": "dots",
                                         "step_time_s": 100.0, "first_step_s": 120.0, "model_tflop_per_step": 4.5,
                                         "achieved_gflops": 45.0, "matmul_peak_gflops": 120.0})
    _write(d, "data_pipeline", {"results": [{"workers": 0, "samples_per_s": 12.5}, {"workers": 2, "samples_per_s": 20.0}]})
    _write(d, "convert_full", {"source": {"files": []}, "convert_bfloat16": {"wall_s": 60.0, "peak_rss_gib": 4.0}})


def test_report_renders_every_row(tmp_path):
    _results(tmp_path)
    text = report.render(tmp_path)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert any("vision tower" in line and "1.50x" in line and "MFU 40%" in line for line in table)
    assert any("prefill rsunivlm-1b, 1 image +" in line and "1.50x" in line and "MFU 50% (torch 33%)" in line
               for line in table)
    assert any("2 images" in line and "1510 positions" in line for line in table)
    assert any("decode rsunivlm-1b, batch 1" in line and "80.0% (torch 40.0%)" in line for line in table)
    assert any("decode rsunivlm-1b, batch 8" in line for line in table)
    assert any("training step llava-onevision-0.5b, AdamW" in line and "remat full" in line and "1.33x" in line
               and "MFU 50% (torch 38%)" in line for line in table)
    assert any("training step llava-onevision-0.5b, AdamW" in line and "remat dots" in line and "1.60x" in line
               and "MFU 60% (torch 38%)" in line for line in table)
    assert "| JAX, remat full | 90.0 s | 90.0, 91.0 |" in text
    assert "| JAX, remat dots | 75.0 s | 75.0, 76.0 |" in text
    assert "| transformers | 120.0 s | 120.0, 121.0 |" in text
    assert "**38% of the measured matmul peak**" in text  # 45 / 120
    assert "| 2 | 20.0 |" in text
    assert "| convert_bfloat16 | 60.0 s | 4.00 GiB |" in text
    assert "| vision tower | `bench/results/vision_b1.json` | 2026-01-01 00:00:00 | 3.5 |" in text
    assert "profiling.md" in text
    assert "| prefill (1 image) >= 1.2x transformers | 1.50x | yes |" in text
    assert "| decode batch 1 >= 95% of the measured bandwidth bound | 80.0% (torch 40.0%) | **no** |" in text
    assert "| decode batch 8 >= 1.5x transformers | 2.00x | yes |" in text
    assert "| training step (AdamW, remat full) >= 1.15x transformers | 1.33x | yes |" in text
    assert "| training step (AdamW, remat dots) >= 1.15x transformers | 1.60x | yes |" in text
    assert "| training step (AdamW, remat dots): peak RSS <= transformers' | 15.0 GiB (transformers 15.0 GiB) | yes |" \
        in text
    # without GEMM rates in the results there is no rate goal and no host GEMM figure
    assert "GEMM rate |" not in text
    assert "GEMM rates not recorded" in text


def test_goals_against_xla_gemm_rate_rounded_down(tmp_path):
    _results(tmp_path)
    mm = {"peak_flops": 100e9, "jax_flops": 80e9, "torch_flops": 100e9}
    machine = dict(MACHINE, cpu_model="Some CPU 9000")
    # vision: 400 GFLOP in 10 s = 40 GFLOP/s = 50% of XLA's 80; 1.5x transformers
    _write(tmp_path, "vision_b1", {"timing": {"jax": {"median_s": 10.0}, "torch": {"median_s": 11.0}},
                                   "flops": 400e9, "mfu_jax": 0.4, "mfu_torch": 0.3, "matmul": mm,
                                   "machine": machine, "load_average_at_end": [2.04, 2.0, 1.0]})
    # prefill: 1.3e12 FLOP in 20 s = 65 GFLOP/s = 81.25% of 80
    _write(tmp_path, "forward_rsunivlm-1b_1img", {"timing": {"jax": {"median_s": 20.0}, "torch": {"median_s": 23.99}},
                                                  "text_tokens": 50, "sequence": 780, "flops": 1.3e12, "matmul": mm})
    side = lambda s, rss: {"step_time_s": s, "step_times_s": [s], "achieved_gflops": 4500 / s, "mfu": 45 / s,  # noqa: E731
                           "peak_rss_gib": rss}
    _write(tmp_path, "train_compare_llava-onevision-0.5b", {
        "preset": "llava-onevision-0.5b", "decoder_positions": 1024, "jax": side(90.0, 15.0),
        "jax_full": side(90.0, 15.0), "torch": side(100.0, 16.0), "jax_remat_variants": ["full"],
        "matmul_peak_gflops": 100.0, "xla_gemm_gflops": 80.0, "torch_gemm_gflops": 100.0, "jax_remat": "full",
        "rounds": 3, "steps_per_block": 1, "torch_checkpointing": "on", "torch_attn": "sdpa", "params": 894e6,
        "model_tflop_per_step": 4.5})
    _write(tmp_path, "profile_train_llava-onevision-0.5b", {
        "wall_s": 10.0, "total_op_time_s": 9.5, "settings": {"remat": "dots"},
        "by_kind": [{"key": "matmul", "time_s": 8.0}, {"key": "other", "time_s": 1.5}]})
    text = report.render(tmp_path)
    assert "| vision tower >= 1.1x transformers | 1.10x | yes |" in text
    assert "| vision tower >= 80% of XLA's GEMM rate | 50.0% | **no** |" in text
    assert "| prefill (1 image) >= 1.2x transformers | 1.19x | **no** |" in text  # 1.1995 rounds down
    assert "| prefill (1 image) >= 80% of XLA's GEMM rate | 81.2% | yes |" in text
    # 4500 / 90 = 50 GFLOP/s = 62.5% of 80 (but 50% of the 100 GFLOP/s torch GEMM)
    assert "| training step (AdamW, remat full): model FLOP/s >= 65% of XLA's GEMM rate | 62.5% | **no** |" in text
    assert "| training step (AdamW, remat full) >= 1.15x transformers | 1.11x | **no** |" in text
    assert "| training step: non-GEMM time <= 15% of the step (profile, remat dots) | 15.0% | yes |" in text
    row = next(line for line in text.splitlines() if line.startswith("| vision tower, 26 blocks"))
    assert row.endswith("| Some CPU 9000; 80 / 100 GFLOP/s; load 2.0 |")


def test_report_keeps_hand_written_sections(tmp_path):
    _results(tmp_path)
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nold table\n\n## Goals\n\nold goals\n\n## LoRA fine-tuning step\n\n"
                   "| rank | s |\n|---|---|\n| 16 | 3.0 |\n\n## Measurement conditions\n\nold\n\n"
                   "## G-MoE routing: mixed batches (CPU)\n\nrouting text\n")
    report.write(tmp_path, out)
    text = out.read_text()
    assert "old table" not in text and "old goals" not in text and "\nold\n" not in text
    assert "## LoRA fine-tuning step\n\n| rank | s |\n|---|---|\n| 16 | 3.0 |" in text
    assert text.index("## LoRA fine-tuning step") < text.index("## G-MoE routing: mixed batches (CPU)")
    assert text.count("## Goals") == 1 and text.count("## Measurement conditions") == 1
    report.write(tmp_path, out)  # idempotent
    assert out.read_text() == text


def test_report_skips_missing_results(tmp_path):
    text = report.render(tmp_path)
    assert text.startswith("# Benchmarks")
    assert "| Benchmark |" not in text


def test_report_bf16_rows_and_unreachable_decode_goal(tmp_path):
    _results(tmp_path)
    mm = {"peak_flops": 2000e9, "jax_flops": 250e9, "torch_flops": 2000e9}
    _write(tmp_path, "vision_b1_bf16", {"timing": {"jax": {"median_s": 4.0}, "torch": {"median_s": 2.0}},
                                        "mfu_jax": 0.1, "mfu_torch": 0.2, "matmul": mm})
    _write(tmp_path, "decode_rsunivlm-1b", {"new_tokens": 64, "bandwidth_bytes_s": {"best": 9e9}, "results": [
        {"batch": 1, "bound_tok_s": 10.0, "jax": {"decode_tok_s": 8.5}, "torch": {"decode_tok_s": 8.0},
         "speedup_jax_over_torch": 8.5 / 8.0, "jax_fraction_of_bound": 0.85, "torch_fraction_of_bound": 0.8},
        {"batch": 2, "bound_tok_s": 20.0, "jax": {"decode_tok_s": 8.0}, "torch": {"decode_tok_s": 8.0},
         "speedup_jax_over_torch": 1.0, "jax_fraction_of_bound": 0.4, "torch_fraction_of_bound": 0.4}]})
    text = report.render(tmp_path)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert any("vision tower" in line and "bfloat16" in line and "0.50x" in line and "| - |" in line for line in table)
    assert "250 GFLOP/s with XLA and 2000 GFLOP/s with torch" in text
    assert "| decode batch 1 >= 95% of the measured bandwidth bound | 85.0% (torch 80.0%) | **no** |" in text
    assert "| vision tower, bfloat16 | `bench/results/vision_b1_bf16.json` |" in text


def test_report_decode_fraction_just_under_the_goal_reads_under(tmp_path):
    _results(tmp_path)
    _write(tmp_path, "decode_rsunivlm-1b", {"new_tokens": 64, "bandwidth_bytes_s": {"best": 9e9}, "results": [
        {"batch": 1, "bound_tok_s": 10.0, "jax": {"decode_tok_s": 7.9975}, "torch": {"decode_tok_s": 7.9},
         "speedup_jax_over_torch": 7.9975 / 7.9, "jax_fraction_of_bound": 0.79975, "torch_fraction_of_bound": 0.79}]})
    _write(tmp_path, "decode_rsunivlm-1b", {"new_tokens": 64, "bandwidth_bytes_s": {"best": 9e9}, "results": [
        {"batch": 1, "bound_tok_s": 10.0, "jax": {"decode_tok_s": 9.4995}, "torch": {"decode_tok_s": 7.9},
         "speedup_jax_over_torch": 9.4995 / 7.9, "jax_fraction_of_bound": 0.94995, "torch_fraction_of_bound": 0.79}]})
    assert "| decode batch 1 >= 95% of the measured bandwidth bound | 94.9% (torch 79.0%) | **no** |" in \
        report.render(tmp_path)


def test_report_xla_options_section_shows_every_round(tmp_path):
    run = lambda s: {"step_s": s, "vision_s": 1.0}  # noqa: E731
    summary = lambda s, f: {"step_s": s, "vision_s": 1.0, "xla_gemm_gflops": 80.0, "torch_gemm_gflops": 100.0,  # noqa: E731
                            "step_fraction_of_xla_gemm": f, "peak_rss_gib": 4.0, "step_vs_first": 10.0 / s,
                            "vision_vs_first": 1.0}
    _write(tmp_path, "xla_options", {
        "settings": {"layers": 2, "vision_layers": 4, "rounds": 2}, "cpu_model": "Some CPU",
        "load_average_start_end": [[2.0, 2.0, 2.0], [3.0, 3.0, 3.0]],
        "variants": {"default": {"xla_flags": "", "remat": "dots"}, "x": {"xla_flags": "--a=b", "remat": "dots"},
                     "bad": {"xla_flags": "--c=d", "remat": "dots"}},
        "summary": {"default": summary(10.0, 0.5), "x": summary(8.0, 0.625), "bad": {"failed": True}},
        "runs": {"default": [run(9.0), run(11.0)], "x": [run(7.0), run(9.0)], "bad": [{"failed": 1}]}})
    text = report.render(tmp_path)
    assert ("| x | `--a=b` | dots | 8.00 s | 7.0, 9.0 | 1.25x | 1.00 s | 1.00x | 80 / 100 | 62.5% | 4.0 GiB |"
            in text)
    assert "| default | `(none)` | dots | 10.00 s | 9.0, 11.0 | 1.00x |" in text
    assert "| bad | `--c=d` | dots | failed |" in text
