"""Where the time goes: a jax.profiler trace of prefill or of a training step, per HLO op and per
model part, with the matmul FLOPs of every op (so each op's GFLOP/s is known).

    .venv/bin/python -m bench.profile prefill                  # rsunivlm-1b, 1 image + 50 text tokens
    .venv/bin/python -m bench.profile train                    # rsunivlm-1b, SGD, remat dots, 1,024 positions
    .venv/bin/python -m bench.profile train --preset tiny --seq_len 128      # quick check
    .venv/bin/python -m bench.profile summary bench/results/profile_prefill_rsunivlm-1b.json

How: XLA:CPU emits one trace event per executed HLO thunk when it is compiled with
`--xla_cpu_enable_xprof_traceme=true` (set below, before jax is imported). One call of the jitted
function runs inside `jax.profiler.trace`; the `*.trace.json.gz` that the profiler writes is
plain Chrome-trace JSON, read here with the standard library (no xprof / tensorboard plug-in
needed). Each event names its HLO instruction; the compiled module's HLO text (`as_text()`)
gives that instruction's opcode, its `op_name` (the JAX name stack) and, for dot fusions, the
contraction shapes, from which the op's matmul FLOPs follow (2 x output elements x contracted
size). Container ops (while / call / conditional) are dropped: their bodies have their own events.

Model parts come from `jax.named_scope`s that this script adds around the model's methods at
trace time (vision, connector, embed, decoder, lm_head, loss; inside them attn / mlp / norm),
without changing what is computed. A name stack containing `transpose(` is the backward pass.
Op times are summed over every event (scan bodies run once per layer). Ops that run at the same
time on different threads share their overlap (each of k concurrent ops is charged 1/k of it), so
the op times add up to the time the executable was busy, close to the wall time, and an op's
GFLOP/s is its throughput share (two concurrent GEMMs on the two cores each get half the time).
"""
from __future__ import annotations

import os

if "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import functools  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

CONTAINERS = {"while", "call", "conditional", "async-start", "async-done"}
PARTS = ("vision", "connector", "embed", "decoder", "lm_head", "loss")
SUBPARTS = ("attn", "mlp", "norm")


# ---- HLO text --------------------------------------------------------------------------------

@dataclass
class Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    computation: str
    op_name: str = ""
    calls: list[str] = field(default_factory=list)


def _split_balanced(s: str, start: int) -> int:
    """Index just past the bracket group opening at s[start]."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = []
    for i in range(start, len(s)):
        c = s[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    return len(s)


_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")


def parse_hlo(text: str) -> dict[str, Instr]:
    """Instruction name -> Instr for every instruction of an HLO module's text."""
    out: dict[str, Instr] = {}
    comp = ""
    for line in text.splitlines():
        if not line.strip() or line.startswith(("HloModule", "FileNames", "FunctionNames", "FileLocations",
                                                "StackFrames")):
            continue
        m = _INSTR.match(line)
        if m is None:
            h = _HEADER.match(line)
            if h:
                comp = h.group(2)
            continue
        rest = line[m.end():]
        if rest.startswith("("):  # tuple shape
            end = _split_balanced(rest, 0)
            shape, rest = rest[:end], rest[end:].lstrip()
        else:
            shape, _, rest = rest.partition(" ")
        op_m = re.match(r"([\w\-]+)\(", rest)
        if op_m is None:
            continue
        opcode = op_m.group(1)
        end = _split_balanced(rest, op_m.end() - 1)
        operands = re.findall(r"%([\w.\-]+)", rest[op_m.end():end - 1])
        attrs = rest[end:]
        name_m = re.search(r'op_name="([^"]*)"', attrs)
        calls = re.findall(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)", attrs)
        calls += re.findall(r"calls=\{([^}]*)\}", attrs)
        calls = [c.strip().lstrip("%") for cs in calls for c in cs.split(",")]
        out[m.group(2)] = Instr(m.group(2), shape, opcode, operands, attrs, comp,
                                name_m.group(1) if name_m else "", calls)
    return out


def _dims(shape: str) -> list[int]:
    m = re.search(r"\[([\d,]*)\]", shape)
    return [int(x) for x in m.group(1).split(",") if x] if m else []


def dot_flops(instr: Instr, table: dict[str, Instr]) -> float:
    """2 x output elements x contracted size of a dot (0 for anything else)."""
    if instr.opcode != "dot" or not instr.operands:
        return 0.0
    lhs = table.get(instr.operands[0])
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.attrs)
    if lhs is None or m is None:
        return 0.0
    ldims = _dims(lhs.shape)
    k = math.prod(ldims[int(i)] for i in m.group(1).split(",") if i)
    return 2.0 * math.prod(_dims(instr.shape)) * k


def computation_flops(table: dict[str, Instr]) -> dict[str, float]:
    """Matmul FLOPs of each computation (fusion bodies: their dots; nested calls included)."""
    by_comp: dict[str, list[Instr]] = collections.defaultdict(list)
    for ins in table.values():
        by_comp[ins.computation].append(ins)

    @functools.lru_cache(maxsize=None)
    def total(comp: str) -> float:
        flops = 0.0
        for ins in by_comp.get(comp, ()):
            flops += dot_flops(ins, table)
            if ins.opcode == "fusion" or ins.opcode == "custom-call":
                flops += sum(total(c) for c in ins.calls)
        return flops

    return {c: total(c) for c in by_comp}


def effective_op_name(instr: Instr, table: dict[str, Instr], by_comp: dict[str, list[Instr]]) -> str:
    """The instruction's JAX name stack; for ops XLA created without one (e.g. a YNNPACK fusion
    wrapping a batched dot), that of a dot inside it, else of its first named operand."""
    if instr.op_name:
        return instr.op_name
    inner = [i for c in instr.calls for i in by_comp.get(c, ()) if i.op_name]
    inner.sort(key=lambda i: i.opcode != "dot")
    if inner:
        return inner[0].op_name
    return next((table[o].op_name for o in instr.operands if o in table and table[o].op_name), "")


def instr_flops(instr: Instr, table: dict[str, Instr], comp_flops: dict[str, float]) -> float:
    if instr.opcode == "dot":
        return dot_flops(instr, table)
    if instr.opcode in ("fusion", "custom-call"):
        return sum(comp_flops.get(c, 0.0) for c in instr.calls)
    return 0.0


# ---- categories --------------------------------------------------------------------------------

def category(op_name: str) -> tuple[str, str, str]:
    """(part, sub-part, "fwd" | "bwd") from a JAX name stack with this script's named scopes."""
    tokens = re.split(r"[/()]", op_name)
    part = next((t for t in reversed(tokens) if t in PARTS), "other")
    # The innermost part wins (embed contains vision and connector).
    sub = next((t for t in reversed(tokens) if t in SUBPARTS), "-")
    direction = "bwd" if "transpose(" in op_name else "fwd"
    if part == "other" and not op_name:
        part = "unnamed"
    return part, sub, direction


def add_named_scopes() -> None:
    """Wraps the model's methods in `jax.named_scope` (trace-time names only; same computation)."""
    import jax
    from rsunivlm_jax.layers import attention, mlp, norms
    from rsunivlm_jax.models import connector, qwen2, rsunivlm, siglip
    from rsunivlm_jax.train import loss

    def scoped(fn, name):
        if getattr(fn, "_bench_scope", None) == name:
            return fn

        @functools.wraps(fn)
        def wrapper(*a, **k):
            with jax.named_scope(name):
                return fn(*a, **k)
        wrapper._bench_scope = name
        return wrapper

    for cls, meth, name in [(siglip.VisionTower, "__call__", "vision"), (connector.Connector, "__call__", "connector"),
                            (rsunivlm.RSUniVLM, "embed_inputs", "embed"), (qwen2.Decoder, "__call__", "decoder"),
                            (rsunivlm.RSUniVLM, "logits", "lm_head"), (attention.Attention, "__call__", "attn"),
                            (mlp.GMoEMLP, "__call__", "mlp"), (mlp.GeluMLP, "__call__", "mlp"),
                            (norms.RMSNorm, "__call__", "norm"), (norms.LayerNorm, "__call__", "norm")]:
        setattr(cls, meth, scoped(getattr(cls, meth), name))
    loss.cross_entropy_stats = scoped(loss.cross_entropy_stats, "loss")


# ---- trace -------------------------------------------------------------------------------------

def attributed_durations(events: list[tuple[str, float, float]]) -> list[tuple[str, float]]:
    """(op, start s, duration s) events -> (op, attributed s): while k ops run at once (on
    different threads), each is charged 1/k of that time, so the charges add up to the busy wall
    time and two GEMMs sharing the two cores each get half (not all) of their overlap."""
    points = sorted({t for _, start, dur in events for t in (start, start + dur)})
    index = {t: i for i, t in enumerate(points)}
    delta = [0] * (len(points) + 1)
    for _, start, dur in events:  # number of ops active in each elementary segment
        delta[index[start]] += 1
        delta[index[start + dur]] -= 1
    active, running = [], 0
    for d in delta[:-1]:
        running += d
        active.append(running)
    seg_share = [((points[i + 1] - points[i]) / active[i]) if active[i] else 0.0 for i in range(len(points) - 1)]
    prefix = [0.0]
    for x in seg_share:
        prefix.append(prefix[-1] + x)
    return [(op, prefix[index[start + dur]] - prefix[index[start]]) for op, start, dur in events]


def trace_events(log_dir: str, module: str) -> list[tuple[str, float]]:
    """(hlo_op, duration in seconds) of every HLO-op event of `module` in the trace under log_dir,
    with concurrent ops sharing their overlap (`attributed_durations`)."""
    paths = sorted(glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.trace.json.gz")))
    if not paths:
        raise FileNotFoundError(f"no *.trace.json.gz under {log_dir}/plugins/profile")
    with gzip.open(paths[-1], "rb") as f:
        events = json.load(f)["traceEvents"]
    out = []
    for e in events:
        args = e.get("args") or {}
        if e.get("ph") == "X" and "hlo_op" in args and args.get("hlo_module") == module:
            out.append((args["hlo_op"], float(e["ts"]) * 1e-6, float(e.get("dur", 0.0)) * 1e-6))
    return attributed_durations(out)


def summarise(events: list[tuple[str, float]], hlo_text: str, runs: int = 1, top: int = 150) -> dict:
    """Per-op, per-part and per-opcode time (per run) with matmul FLOPs and GFLOP/s."""
    table = parse_hlo(hlo_text)
    comp_flops = computation_flops(table)
    by_comp: dict[str, list[Instr]] = collections.defaultdict(list)
    for ins in table.values():
        by_comp[ins.computation].append(ins)
    per_op = collections.defaultdict(lambda: [0.0, 0])
    for op, dur in events:
        per_op[op][0] += dur
        per_op[op][1] += 1
    rows = []
    for op, (dur, count) in per_op.items():
        ins = table.get(op)
        if ins is not None and ins.opcode in CONTAINERS:
            continue
        flops = instr_flops(ins, table, comp_flops) * count if ins else 0.0
        op_name = effective_op_name(ins, table, by_comp) if ins else ""
        part, sub, direction = category(op_name)
        kind = ("matmul" if flops > 0 else
                "copy/transpose" if ins and (ins.opcode in ("copy", "transpose") or op.startswith(("copy", "transpose")))
                else "other")
        rows.append({"op": op, "opcode": ins.opcode if ins else "?", "time_s": dur / runs, "events": count // runs,
                     "gflop": flops / runs / 1e9, "part": part, "sub": sub, "dir": direction, "kind": kind,
                     "op_name": op_name[-160:], "shape": (ins.shape if ins else "")[:80]})
    total = sum(r["time_s"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["time_s"] / total
        r["gflops"] = r["gflop"] / r["time_s"] if r["time_s"] > 0 and r["gflop"] else None
    rows.sort(key=lambda r: -r["time_s"])

    def group(keyf):
        g = collections.defaultdict(lambda: {"time_s": 0.0, "gflop": 0.0})
        for r in rows:
            k = keyf(r)
            g[k]["time_s"] += r["time_s"]
            g[k]["gflop"] += r["gflop"]
        out = []
        for k, v in sorted(g.items(), key=lambda kv: -kv[1]["time_s"]):
            out.append({"key": k, "time_s": v["time_s"], "share": v["time_s"] / total, "gflop": v["gflop"],
                        "gflops": v["gflop"] / v["time_s"] if v["time_s"] > 0 and v["gflop"] else None})
        return out

    return {"total_op_time_s": total, "ops": len(rows), "top_ops": rows[:top],
            "per_op_s": {op: [round(d / runs, 6), c // runs] for op, (d, c) in per_op.items()},
            "by_part": group(lambda r: f"{r['part']}/{r['sub']}/{r['dir']}"),
            "by_part_coarse": group(lambda r: r["part"]),
            "by_kind": group(lambda r: r["kind"]),
            "by_fusion_type": group(lambda r: re.sub(r"\.\d+$", "", r["op"])),
            "by_kind_and_part": group(lambda r: f"{r['kind']}:{r['part']}/{r['sub']}")}


def format_summary(s: dict, top: int = 15) -> str:
    def fmt(rows, n=None):
        lines = []
        for r in rows[:n]:
            gf = f"{r['gflops'] / 1e0:7.1f}" if r.get("gflops") else "      -"
            lines.append(f"  {r['time_s']:8.2f} s {r['share']:6.1%}  {r['gflop']:9.1f} GFLOP  {gf} GFLOP/s  "
                         f"{r.get('key') or r['op'] + ' [' + r['opcode'] + '] ' + r['part'] + '/' + r['sub'] + '/' + r['dir']}")
        return "\n".join(lines)
    out = [f"summed op time {s['total_op_time_s']:.2f} s per run, {s['ops']} distinct ops"
           + (f"; wall {s['wall_s']:.2f} s" if "wall_s" in s else "")]
    out += ["by kind:", fmt(s["by_kind"]), "by op type (name without its number):", fmt(s.get("by_fusion_type", []), 12),
            "by part (coarse):", fmt(s["by_part_coarse"]),
            "by part/sub-part/direction:", fmt(s["by_part"]), "by kind and part:", fmt(s["by_kind_and_part"], 20),
            f"top {top} ops:", fmt(s["top_ops"], top)]
    return "\n".join(out)


def profile_call(fn, args: tuple, *, runs: int = 1, warmup: int = 1, rebuild=None) -> dict:
    """Compiles `fn` (a jitted function) for `args`, warms up, traces `runs` calls, summarises.

    `rebuild(result, args) -> args` gives the next call's arguments (for donated state)."""
    import jax
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    module = re.match(r"HloModule ([\w.\-]+)", text).group(1)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    for _ in range(warmup):
        out = compiled(*args)
        jax.block_until_ready(out)
        args = rebuild(out, args) if rebuild else args
    log_dir = tempfile.mkdtemp(prefix="rsu_profile_")
    walls = []
    with jax.profiler.trace(log_dir):
        for _ in range(runs):
            t0 = time.perf_counter()
            out = compiled(*args)
            jax.block_until_ready(out)
            walls.append(time.perf_counter() - t0)
            args = rebuild(out, args) if rebuild else args
    events = trace_events(log_dir, module)
    shutil.rmtree(log_dir, ignore_errors=True)
    summary = summarise(events, text, runs=runs)
    summary.update(wall_s=sum(walls) / len(walls), walls_s=walls, compile_s=compile_s, module=module,
                   xla_cost_analysis={k: float(v) for k, v in (cost or {}).items() if "{" not in k})
    summary["matmul_gflop_total"] = sum(v["gflop"] for v in summary["by_kind"])
    summary["_hlo_text"] = text
    return summary


# ---- what to profile ---------------------------------------------------------------------------

def prefill(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import rsunivlm_jax as rs

    add_named_scopes()
    cfg = rs.presets.get(args.preset)
    graphdef, params = rs.init(cfg, 0)
    rng = np.random.default_rng(0)
    ids = [cfg.image_token_id] * args.images + rng.integers(1000, min(100000, cfg.decoder.vocab_size - 2),
                                                             args.text).tolist()
    s = cfg.vision.image_size
    px = jnp.asarray(rng.uniform(-1, 1, (1, args.images, s, s, 3)).astype(np.float32))
    fn = jax.jit(lambda p, i, x, g: rs.forward(graphdef, p, i, x, g, output=args.output))
    return profile_call(fn, (params, jnp.asarray([ids], jnp.int32), px, jnp.zeros(1, jnp.int32)), runs=args.runs)


def train(args) -> dict:
    import jax
    import jax.numpy as jnp
    import rsunivlm_jax as rs
    from bench.train_step import jitted_step, leafwise_init
    from rsunivlm_jax.train import data as data_lib

    add_named_scopes()
    cfg = rs.presets.get(args.preset).replace(remat_policy=args.remat)
    text_len = args.seq_len - args.images * (cfg.tokens_per_image - 1)
    graphdef, params = leafwise_init(cfg)
    fn, state = jitted_step(cfg, graphdef, params, args.optimizer)
    del params
    src = data_lib.RandomBatches(cfg, global_batch=1, text_len=text_len, num_images=args.images,
                                 process_index=0, process_count=1)
    batch = {k: jnp.asarray(v) for k, v in src.batch(0).items()}
    return profile_call(fn, (state, batch), runs=args.runs, rebuild=lambda out, a: (out[0], a[1]))


def decode(args) -> dict:
    """One `generate` call (prefill of a short text prompt + `--new_tokens` decode steps), batch
    `--batch`: the while loop's per-step ops are summed over the steps."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import rsunivlm_jax as rs
    from rsunivlm_jax.inference import generate as gen

    add_named_scopes()
    cfg = rs.presets.get(args.preset)
    graphdef, params = rs.init(cfg, 0)
    ids = np.random.default_rng(0).integers(100, min(150_000, cfg.decoder.vocab_size - 2),
                                            (args.batch, args.text)).astype(np.int32)
    st = gen._Static(max_new_tokens=args.new_tokens, eos_ids=(), pad_id=0, sampling=gen.SamplingParams(),
                     vocab_limit=None, return_logits=False, homogeneous=True)
    fn = jax.jit(lambda p, i, m, g, k: gen._generate_jit(graphdef, st, p, i, m, None, g, k, None))
    return profile_call(fn, (params, jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)),
                             jnp.zeros((args.batch,), jnp.int32), jax.random.key(0)), runs=args.runs)


def build_train(args):
    """(jitted train step, abstract (state, batch)) for the preset: nothing is allocated."""
    import jax
    import jax.numpy as jnp
    import rsunivlm_jax as rs
    from rsunivlm_jax.train import data as data_lib, optim, step as step_lib

    cfg = rs.presets.get(args.preset).replace(remat_policy=args.remat)
    text_len = args.seq_len - args.images * (cfg.tokens_per_image - 1)
    graphdef, abstract = rs.abstract_init(cfg)
    spec = optim.OptimSpec(total_steps=1000, lr=1e-5, name=args.optimizer, weight_decay=0.0, clip=1.0)
    opt = optim.make_optimizer(spec, abstract)
    state = jax.eval_shape(lambda p: step_lib.init_state(p, opt), abstract)
    fn = jax.jit(step_lib.make_train_step(graphdef, opt, num_experts=cfg.gmoe.num_experts,
                                          model_config=cfg, homogeneous_batches=True), donate_argnums=(0,))
    src = data_lib.RandomBatches(cfg, global_batch=1, text_len=text_len, num_images=args.images,
                                 process_index=0, process_count=1)
    batch = {k: jax.ShapeDtypeStruct(v.shape, jnp.asarray(v).dtype) for k, v in src.batch(0).items()}
    return fn, state, batch


def memory(args) -> dict:
    """Compile-only: XLA's buffer assignment for the train step (arguments, outputs, temporaries)."""
    fn, state, batch = build_train(args)
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch).compile()
    m = compiled.memory_analysis()
    gib = lambda x: x / 2 ** 30  # noqa: E731
    out = {k: gib(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp",
                                                                "generated_code")}
    out["peak_estimate_gib"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    out["compile_s"] = time.perf_counter() - t0
    print(json.dumps(out, indent=1))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("prefill", "train", "decode", "memory", "summary"))
    p.add_argument("path", nargs="?", help="summary: a profile JSON written by this script")
    p.add_argument("--preset", default="rsunivlm-1b")
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--text", type=int, default=50, help="prefill: text tokens")
    p.add_argument("--output", default="expanded", choices=("expanded", "text"),
                   help="prefill: logits at every position (as bench.forward) or only at text tokens")
    p.add_argument("--batch", type=int, default=1, help="decode: rows")
    p.add_argument("--new_tokens", type=int, default=64, help="decode: generated tokens per row")
    p.add_argument("--seq_len", type=int, default=1024, help="train: decoder positions")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    p.add_argument("--remat", default="dots", choices=("none", "full", "dots"))
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/profile_<what>_<preset>.json)")
    p.add_argument("--hlo", default=None, help="also write the compiled HLO text here (.gz: compressed); "
                                               "summary: re-attribute the saved per-op times with this HLO")
    args = p.parse_args(argv)
    if args.what == "summary":
        with open(args.path, encoding="utf-8") as f:
            s = json.load(f)
        if args.hlo and "per_op_s" in s:  # re-attribute with the current rules
            with gzip.open(args.hlo, "rt") if args.hlo.endswith(".gz") else open(args.hlo) as f:
                events = [(op, d) for op, (d, _) in s["per_op_s"].items()]
                s.update(summarise(events, f.read()))
        print(format_summary(s, args.top))
        return s
    if args.what == "memory":
        return memory(args)
    t0 = time.perf_counter()
    s = {"prefill": prefill, "train": train, "decode": decode}[args.what](args)
    text = s.pop("_hlo_text", "")
    if args.hlo:
        with (gzip.open(args.hlo, "wt") if args.hlo.endswith(".gz") else open(args.hlo, "w")) as f:
            f.write(text)
    s["settings"] = {k: v for k, v in vars(args).items() if k not in ("path", "out", "top", "hlo")}
    s["load_average"] = os.getloadavg()
    s["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    from bench.common import cpu_model
    s["cpu_model"] = cpu_model()
    s["elapsed_s"] = time.perf_counter() - t0
    print(format_summary(s, args.top))
    out = args.out or os.path.join("bench", "results", f"profile_{args.what}_{args.preset}.json")
    if out != "-":
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(s, f, indent=1)
        print(f"wrote {out}", file=sys.stderr)
    return s


if __name__ == "__main__":
    main()
