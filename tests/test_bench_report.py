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
    assert "| prefill (1 image) >= 1.2x | 1.50x | yes |" in text
    assert "| decode batch 1 >= 80% of the bandwidth bound | 80.0% | yes |" in text
    assert "| training step (AdamW, remat full) >= 60% of the matmul peak | 50% | **no** |" in text
    assert "| training step (AdamW, remat dots) >= 60% of the matmul peak | 60% | yes |" in text


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
    assert "| decode batch 1 >= 1.4x | 1.06x (1.4x torch = 112% of the bound: unreachable) | **no** |" in text
    assert "| decode batch 1 >= 80% of the bandwidth bound | 85.0% | yes |" in text
    assert "| vision tower, bfloat16 | `bench/results/vision_b1_bf16.json` |" in text


def test_report_decode_fraction_just_under_the_goal_reads_under(tmp_path):
    _results(tmp_path)
    _write(tmp_path, "decode_rsunivlm-1b", {"new_tokens": 64, "bandwidth_bytes_s": {"best": 9e9}, "results": [
        {"batch": 1, "bound_tok_s": 10.0, "jax": {"decode_tok_s": 7.9975}, "torch": {"decode_tok_s": 7.9},
         "speedup_jax_over_torch": 7.9975 / 7.9, "jax_fraction_of_bound": 0.79975, "torch_fraction_of_bound": 0.79}]})
    assert "| decode batch 1 >= 80% of the bandwidth bound | 79.9% | **no** |" in report.render(tmp_path)
