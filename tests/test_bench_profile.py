"""bench/profile.py: HLO parsing, matmul FLOPs per op, part names, and an end-to-end tiny profile."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import profile

ROOT = Path(__file__).resolve().parents[1]

HLO = """HloModule jit_f, is_scheduled=true

%fused_computation (param_0: f32[64,32], param_1: f32[32,48]) -> f32[64,48] {
  %param_0 = f32[64,32]{1,0} parameter(0)
  %param_1 = f32[32,48]{1,0} parameter(1)
  ROOT %dot.8 = f32[64,48]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(f)/decoder/mlp/dot_general"}
}

%fused_computation.2 (param_0.2: f32[64,32], param_1.2: f32[32,48]) -> f32[64,48] {
  %param_0.2 = f32[64,32]{1,0} parameter(0)
  %param_1.2 = f32[32,48]{1,0} parameter(1)
  ROOT %dot.10 = f32[64,48]{1,0} dot(%param_0.2, %param_1.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(f)/decoder/attn/dot_general"}
}

%body (p: (s32[], f32[4,16,8])) -> (s32[], f32[4,16,8]) {
  %p = (s32[], f32[4,16,8]{2,1,0}) parameter(0)
  %gte = f32[4,16,8]{2,1,0} get-tuple-element(%p), index=1
  %dot.9 = f32[4,16,16]{2,1,0} dot(%gte, %gte), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={2}, metadata={op_name="jit(f)/transpose(jvp(vision))/attn/dot_general"}
  ROOT %t = (s32[], f32[4,16,8]{2,1,0}) tuple(%gte, %gte)
}

ENTRY %main.3 (Arg_0.1: f32[64,32], Arg_1.2: f32[32,48]) -> f32[64,48] {
  %Arg_0.1 = f32[64,32]{1,0} parameter(0)
  %Arg_1.2 = f32[32,48]{1,0} parameter(1)
  %while.1 = (s32[], f32[4,16,8]{2,1,0}) while(%tuple.1), condition=%cond, body=%body
  %ynn_fusion.5 = f32[64,48]{1,0} fusion(%Arg_0.1, %Arg_1.2), kind=kCustom, calls=%fused_computation.2
  ROOT %ynn_fusion = f32[64,48]{1,0} fusion(%Arg_0.1, %Arg_1.2), kind=kCustom, calls=%fused_computation, metadata={op_name="jit(f)/decoder/mlp/dot_general"}, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
}
"""


def test_parse_hlo_and_matmul_flops():
    table = profile.parse_hlo(HLO)
    comp = profile.computation_flops(table)
    assert table["ynn_fusion"].opcode == "fusion" and table["ynn_fusion"].calls == ["fused_computation"]
    assert profile.instr_flops(table["ynn_fusion"], table, comp) == 2 * 64 * 48 * 32
    assert profile.instr_flops(table["dot.9"], table, comp) == 2 * 4 * 16 * 16 * 8
    assert table["while.1"].opcode == "while" and "body" in table["while.1"].calls
    assert table["dot.9"].computation == "body"


def test_category_from_name_stack():
    assert profile.category("jit(step)/jvp(embed)/vision/attn/dot_general") == ("vision", "attn", "fwd")
    assert profile.category("jit(step)/transpose(jvp(decoder))/mlp/mul") == ("decoder", "mlp", "bwd")
    assert profile.category("jit(step)/lm_head/dot_general") == ("lm_head", "-", "fwd")
    assert profile.category("jit(step)/add") == ("other", "-", "fwd")


def test_summarise_counts_events_per_run_and_skips_containers():
    events = [("ynn_fusion", 0.5), ("ynn_fusion", 0.5), ("dot.9", 0.25), ("while.1", 10.0), ("ynn_fusion.5", 0.5)]
    s = profile.summarise(events, HLO, runs=2)
    ops = {r["op"]: r for r in s["top_ops"]}
    assert "while.1" not in ops
    assert ops["ynn_fusion"]["time_s"] == pytest.approx(0.5) and ops["ynn_fusion"]["events"] == 1
    assert ops["ynn_fusion"]["gflop"] == pytest.approx(2 * 64 * 48 * 32 / 1e9)
    assert ops["dot.9"]["part"] == "vision" and ops["dot.9"]["dir"] == "bwd"
    # An op XLA created without a name stack takes the one of the dot it wraps.
    assert (ops["ynn_fusion.5"]["part"], ops["ynn_fusion.5"]["sub"]) == ("decoder", "attn")
    assert ops["ynn_fusion.5"]["kind"] == "matmul"
    assert s["total_op_time_s"] == pytest.approx(0.875)


@pytest.mark.slow
def test_profile_tiny_train_step_end_to_end(tmp_path):
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, "-m", "bench.profile", "train", "--preset", "tiny", "--seq_len", "96",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(out.read_text())
    parts = {r["key"] for r in s["by_part_coarse"]}
    assert {"vision", "decoder", "lm_head", "loss"} <= parts
    from rsunivlm_jax import presets
    from rsunivlm_jax.train.metrics import flops_per_example
    cfg = presets.get("tiny")
    model = flops_per_example(cfg, 96 - (cfg.tokens_per_image - 1), 1)["total"] / 1e9
    # Every model matmul was executed and counted (plus remat and full-square attention extras).
    assert model * 0.9 <= s["matmul_gflop_total"] <= model * 3
    assert 0 < s["total_op_time_s"] and s["wall_s"] > 0


def test_concurrent_ops_share_their_overlap():
    # a: 0-2 s alone then overlapped by b (1-3 s): the 1 s overlap is split between them.
    out = dict(profile.attributed_durations([("a", 0.0, 2.0), ("b", 1.0, 2.0), ("c", 5.0, 1.0)]))
    assert out["a"] == pytest.approx(1.5) and out["b"] == pytest.approx(1.5) and out["c"] == pytest.approx(1.0)
    assert sum(out.values()) == pytest.approx(4.0)  # busy wall time: 0-3 s and 5-6 s


def test_profile_tiny_decode_end_to_end(tmp_path):
    """The decode profile counts the while loop's per-step GEMVs once per generated token."""
    out = tmp_path / "d.json"
    n = 6
    proc = subprocess.run([sys.executable, "-m", "bench.profile", "decode", "--preset", "tiny", "--text", "8",
                           "--new_tokens", str(n), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(out.read_text())
    from rsunivlm_jax import presets
    d = presets.get("tiny").decoder
    # Each decode step multiplies one row by every attention / MLP kernel and the LM head; the
    # prefill does the kernels for each of its 8 positions and the LM head once.
    layers = 2 * d.num_hidden_layers * (d.hidden_size * (d.num_attention_heads + 2 * d.num_key_value_heads)
                                        * d.head_dim + d.num_attention_heads * d.head_dim * d.hidden_size
                                        + 3 * d.hidden_size * d.intermediate_size)
    head = 2 * d.hidden_size * d.vocab_size
    expected = n * (layers + head) + 8 * layers + head  # attention scores come on top (small)
    assert expected <= s["matmul_gflop_total"] * 1e9 <= 1.5 * expected
    assert s["settings"]["new_tokens"] == n and s["wall_s"] > 0
