"""bench.scale: a 64-fake-device ahead-of-time compile of the tiny model's sharded stage-2 step whose
memory_analysis matches the shard sizes; sharding.validate of every preset on 256 devices; the HLO
collective parser, the roofline and the CLI's bad input."""
import json
import os
import subprocess
import sys

import pytest
from jax.sharding import AbstractMesh

import rsunivlm_jax as rs
from bench import scale
from rsunivlm_jax import sharding as shd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny64():
    """One compile in a child process with 64 CPU devices (this process has 8)."""
    case = scale.Case("tiny_cpu:stage2", 64, "fsdp_tensor", 4, 1)
    cmd = [sys.executable, "-m", "bench.scale", "--child", "--backend", "cpu", "--devices", "64",
           "--cases", json.dumps([case.__dict__]), "--overrides", "{}"]
    out = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, XLA_FLAGS=""), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_64_device_compile_memory_matches_shard_sizes(tiny64):
    r = tiny64
    assert "error" not in r, r.get("error")
    assert r["mesh"] == {"data": 1, "fsdp": 16, "tensor": 4} and r["global_batch"] == 16
    mem, c = r["memory"], r["computed"]
    # Arguments are exactly the per-device shards of parameters, AdamW moments, batch and counters.
    assert mem["argument_size_in_bytes"] == c["params"] + c["opt_state"] + c["batch"] + c["counters"]
    # The donated state comes back in place: parameters, moments and counters are aliased.
    assert mem["alias_size_in_bytes"] == c["params"] + c["opt_state"] + c["counters"]
    assert 0 < mem["output_size_in_bytes"] - mem["alias_size_in_bytes"] < 4096  # + the metrics
    assert mem["temp_size_in_bytes"] > c["gradients"] > 0
    # Parameters are sharded 64 ways where the rules allow: far below a replica (float32).
    total = 4 * rs.param_count(rs.presets.get("tiny"))
    assert c["params"] < total / 8
    assert c["opt_state"] == pytest.approx(2 * c["params"], rel=0.01)  # mu and nu per trainable param
    coll = r["collectives"]
    assert coll["all-gather"]["count"] > 0 and coll["all-gather"]["wire_bytes"] > 0  # FSDP gathers weights
    assert coll["all-reduce"]["count"] + coll["reduce-scatter"]["count"] > 0  # gradients are reduced
    roof = scale.roofline(r, scale.TARGETS["tpu-v5e"])
    assert roof["fits"] and roof["step_s"] > 0 and 0 < roof["mfu"] <= 1


@pytest.mark.parametrize("rules", scale.RULES)
@pytest.mark.parametrize("preset", rs.presets.names())
def test_every_preset_validates_on_256_devices(preset, rules):
    cfg = rs.presets.get(preset)
    _, state = rs.functional.abstract_model(cfg)
    shape = scale.mesh_shape_for(cfg, 256, rules, tensor=4)
    assert shape[0] * shape[1] * shape[2] == 256
    shd.validate(state, AbstractMesh(shape, shd.MESH_AXES), shd.get_rules(rules))


def test_pure_256_way_fsdp_is_refused_for_the_1b_model():
    # Qwen2-0.5B's width 896 = 2^7 x 7: at most 128-way FSDP; the tool puts the rest on `data`.
    _, state = rs.functional.abstract_model(rs.presets.get("rsunivlm-1b"))
    with pytest.raises(ValueError, match=r"decoder/embed_tokens/embedding: dim 1 \(size 896"):
        shd.validate(state, AbstractMesh((1, 256, 1), shd.MESH_AXES), shd.get_rules("fsdp"))
    assert scale.mesh_shape_for(rs.presets.get("rsunivlm-1b"), 256, "fsdp") == (2, 128, 1)
    assert scale.mesh_shape_for(rs.presets.get("rsunivlm-1b"), 64, "fsdp", max_fsdp=8) == (8, 8, 1)  # per node
    assert scale.mesh_shape_for(rs.presets.get("rsunivlm-1b"), 64, "fsdp_tensor", tensor=4) == (1, 16, 4)


HLO = """HloModule m

%body (p: (s32[], f32[64])) -> (s32[], f32[64]) {
  %p = (s32[], f32[64]) parameter(0)
  %x = f32[64]{0} get-tuple-element(%p), index=1
  %ag = f32[256]{0} all-gather(%x), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}
  %rs = f32[16]{0} reduce-scatter(%x), channel_id=2, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}, to_apply=%add
  ROOT %t = (s32[], f32[64]) tuple(%i, %x)
}

%cond (p: (s32[], f32[64])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[64]) -> f32[64] {
  %a = f32[64]{0} parameter(0)
  %w = (s32[], f32[64]) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"24"}}
  %ar = bf16[8,8]{1,0} all-reduce(%y), channel_id=3, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}, to_apply=%add
  %cp-start = (f32[64], f32[64], u32[], u32[]) collective-permute-start(%a), source_target_pairs={{0,1},{1,0}}
  %cp-done = f32[64]{0} collective-permute-done(%cp-start)
  ROOT %r = f32[64]{0} copy(%a)
}
"""


def test_collectives_count_loop_trips_groups_and_bytes():
    items = {it["kind"]: it for it in scale.parse_collectives(HLO, 8, node_size=4)}
    ag, rsc, ar, cp = items["all-gather"], items["reduce-scatter"], items["all-reduce"], items["collective-permute"]
    assert (ag["count"], ag["group"], ag["result_bytes"]) == (24, 4, 1024)
    assert ag["wire_bytes"] == 1024 * 3 / 4 and ag["intra_node"]  # iota groups {0..3}, {4..7}
    assert (rsc["count"], rsc["group"], rsc["wire_bytes"]) == (24, 4, 64 * 3)
    assert (ar["count"], ar["group"], ar["result_bytes"]) == (1, 2, 128)
    assert ar["wire_bytes"] == 2 * 128 / 2 and not ar["intra_node"]  # mesh groups {0,4}, ...: across nodes
    assert (cp["count"], cp["result_bytes"], cp["intra_node"]) == (1, 256, True)  # the -done op, once
    summary = scale.summarize_collectives(scale.parse_collectives(HLO, 8, node_size=4))
    assert summary["all-gather"]["wire_bytes"] == 24 * 768 and summary["all-to-all"]["count"] == 0


def test_replica_group_forms():
    assert scale.replica_groups("replica_groups=[2,4]<=[4,2]T(1,0)", 8) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert scale.replica_groups("replica_groups=mesh['a'=2,'b'=2,'c'=2] {'a','c'}", 8) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert scale.replica_groups("replica_groups={}, x", 4) == [[0, 1, 2, 3]]


def test_largest_batch_from_a_line_through_two_compiles():
    gib = scale.GIB
    rows = [{"case": {"per_shard_batch": b}, "global_batch": 64 * b, "memory": {"peak_bytes": (2 + 3 * b) * gib}}
            for b in (1, 2)]
    fit = scale.max_batch_that_fits(rows, 16 * gib)  # 2 + 3 b <= 16 -> b = 4
    assert fit["per_shard_batch"] == 4 and fit["global_batch"] == 256 and fit["extrapolated"]
    assert scale.max_batch_that_fits(rows, 4 * gib)["global_batch"] == 0
    # a compiled batch that does not fit: the largest compiled one that does, no line
    rows.append({"case": {"per_shard_batch": 4}, "global_batch": 256, "memory": {"peak_bytes": 40 * gib}})
    fit = scale.max_batch_that_fits(rows, 16 * gib)
    assert fit["global_batch"] == 128 and not fit["extrapolated"]


def test_roofline_picks_the_binding_term():
    r = {"case": {"devices": 8}, "model_flops": 8 * 197e12, "model": {"dtype": "bfloat16"}, "mesh": {"tensor": 1},
         "params_active": 0, "computed": {"params": 0, "opt_state": 0, "gradients": 0},
         "memory": {"temp_size_in_bytes": 819e9 / 4, "peak_bytes": 17 * scale.GIB},
         "collectives": {"all-gather": {"wire_bytes": 400e9, "wire_bytes_cross_node": 0}},
         "collectives_cross_node_known": True}
    roof = scale.roofline(r, scale.TARGETS["tpu-v5e"])  # 197 TFLOP/s, 819 GB/s, 200 GB/s, 16 GiB
    assert roof["t_compute_s"] == pytest.approx(1.0) and roof["t_hbm_s"] == pytest.approx(0.5)
    assert roof["t_collectives_s"] == pytest.approx(2.0)
    assert roof["bound"] == "collectives" and roof["mfu"] == pytest.approx(0.5) and not roof["fits"]
    assert scale.roofline(r, scale.TARGETS["tpu-v4"])["fits"]  # 32 GiB
    r["params_active"] = 1e9  # + 3 reads of 1e9 bf16 weights
    assert scale.roofline(r, scale.TARGETS["tpu-v5e"])["t_hbm_s"] == pytest.approx(0.5 + 6e9 / 819e9)


@pytest.mark.parametrize("argv,msg", [
    (["--devices", "8,x"], "comma-separated list of integers"),
    (["--stages", "stage9"], "stage 'stage9'"),
    (["--override", "data.max_text_len"], "expected KEY=JSON"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        scale.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
