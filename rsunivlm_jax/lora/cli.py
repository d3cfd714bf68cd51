"""`rsunivlm-lora`: a LoRA run's adapters out to peft, or merged into the base model.

    rsunivlm-lora export --run RUN --dst ADAPTER_DIR [--layout llava_next|hf_memory_5x|...] [--dtype D]
    rsunivlm-lora merge --run RUN --dst MERGED_DIR [--base CHECKPOINT] [--dtype D]
    rsunivlm-lora merge --adapter ADAPTER_DIR --base CHECKPOINT --dst MERGED_DIR

`export` writes `adapter_config.json` + `adapter_model.safetensors` (peft) with the module names of
the layout the base came from (`rsunivlm_jax.lora.peft_format`). `merge` folds the adapters of a
run (latest step, or `--step`) or of a peft adapter directory into the base (default: the run's
`init.path`) and writes a converted checkpoint (`params/`, `meta.json`, the base's tokenizer and
generation files) that `rsunivlm-eval`, `rsunivlm-predict` and `rsunivlm-convert --to-torch` read.
Errors print one line and exit with status 2; nothing is left at `--dst` after a failure.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from rsunivlm_jax import cli_utils
from rsunivlm_jax.lora.peft_format import EXPORT_LAYOUTS

DTYPES = ("float32", "bfloat16", "float16")


def load_run(run: str, step: int | None = None):
    """(adapters, LoraConfig, ModelConfig, meta) of a LoRA training run's checkpoint."""
    import jax

    from rsunivlm_jax import checkpoints
    from rsunivlm_jax.lora import adapters as adapters_lib
    from rsunivlm_jax.lora.config import LoraConfig
    src = checkpoints.resolve(run, step=step)
    if src.kind != "run" or "lora" not in src.meta:
        raise ValueError(f"{run}: not a LoRA training run (its checkpoint meta has no 'lora' entry)")
    lora = LoraConfig.from_dict(src.meta["lora"])
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=single),
                            adapters_lib.abstract_init(src.config, lora))
    adapters, meta = checkpoints.load_params(run, abstract, step=src.step)
    return adapters, lora, src.config, meta


def load_base(path: str):
    """The base model (`rsunivlm_jax.checkpoints.Checkpoint`) of a merge: a full model, not a LoRA run."""
    from rsunivlm_jax import checkpoints
    src = checkpoints.resolve(path)
    if "lora" in src.meta:
        raise ValueError(f"base {path}: a LoRA run holds adapters only; give the checkpoint it was trained on")
    missing = {"vision", "connector", "decoder"} - set(src.parts)
    if missing:
        raise ValueError(f"base {path}: holds only {list(src.parts)}; LoRA needs a full model")
    return checkpoints.load(path), src.files_dir


def export(run: str, dst: str, *, layout: str | None = None, dtype: str = "float32", step: int | None = None,
           base_name: str | None = None) -> dict:
    """A run's adapters -> peft adapter directory; returns a summary."""
    from rsunivlm_jax import checkpoints
    from rsunivlm_jax.lora import peft_format
    adapters, lora, model, meta = load_run(run, step)
    if layout is None:
        base_path = (meta.get("base") or {}).get("path")
        base_meta = checkpoints.read_meta(base_path) if base_path and Path(base_path).exists() else None
        layout = peft_format.default_layout(base_meta, model.gmoe.num_experts)
    return peft_format.save(dst, adapters, lora, layout=layout, num_experts=model.gmoe.num_experts,
                            base_model=base_name, dtype=dtype)


def merge(dst: str, *, run: str | None = None, adapter: str | None = None, base: str | None = None,
          dtype: str | None = None, step: int | None = None, layout: str | None = None) -> dict:
    """Adapters (of a run or a peft directory) merged into the base -> converted checkpoint at `dst`."""
    import jax

    from rsunivlm_jax import checkpoints
    from rsunivlm_jax.lora import adapters as adapters_lib, peft_format
    if (run is None) == (adapter is None):
        raise cli_utils.UsageError("give exactly one of --run (a LoRA run) and --adapter (a peft adapter directory)")
    checkpoints.check_destination(dst)
    if run is not None:
        adapters, lora, model, meta = load_run(run, step)
        base = base or (meta.get("base") or {}).get("path")
        if not base:
            raise cli_utils.UsageError(f"--run {run}: its base was randomly initialised; give --base")
        source = {"run": str(Path(run).absolute()), "step": int(meta["step"])}
    else:
        if not base:
            raise cli_utils.UsageError("--adapter needs --base (the checkpoint the adapter was trained on)")
        source = {"adapter": str(Path(adapter).absolute())}
    ckpt, files_dir = load_base(base)
    config = ckpt.config
    if run is not None and model.architecture() != config.architecture():
        raise ValueError(f"base {base}: its model differs from the one the run {run} trained adapters for")
    if adapter is not None:
        adapters, lora, summary = peft_format.load(adapter, config, layout=layout)
        source["layout"] = summary["layout"]
    dtype = dtype or config.param_dtype
    merged = jax.tree.map(lambda x: jax.numpy.asarray(x, dtype), adapters_lib.merge(ckpt.params, adapters, lora))
    extra = {"lora_merged": {**source, "base": str(Path(base).absolute()), "lora": lora.to_dict(),
                             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
             "param_dtype": dtype}
    if ckpt.meta.get("source"):
        extra["source"] = ckpt.meta["source"]  # the layout the base came from (names for a later export)
    checkpoints.save(dst, config.replace(param_dtype=dtype), merged, tokenizer_dir=str(files_dir), meta=extra)
    return {"dst": str(dst), "dtype": dtype, "modules": len(adapters_lib.adapter_modules(adapters))}


def build_parser() -> cli_utils.ArgumentParser:
    p = cli_utils.ArgumentParser(prog="rsunivlm-lora", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=cli_utils.ArgumentParser)
    e = sub.add_parser("export", help="a run's adapters -> peft adapter_config.json + adapter_model.safetensors")
    e.add_argument("--run", required=True, help="LoRA training work directory")
    e.add_argument("--dst", required=True, help="output directory (must not hold an adapter already)")
    e.add_argument("--layout", default=None, choices=EXPORT_LAYOUTS,
                   help="module names: llava_next (RSUniVLM release), hf_memory_5x (transformers 5.x "
                        "llava_onevision; default for such bases), hf_memory_4x, hf_hub")
    e.add_argument("--dtype", default="float32", choices=DTYPES)
    e.add_argument("--step", type=cli_utils.non_negative_int, default=None, help="step (default: the latest)")
    e.add_argument("--base-name", default=None, help="base_model_name_or_path written into adapter_config.json")
    m = sub.add_parser("merge", help="adapters merged into the base -> a converted checkpoint")
    m.add_argument("--run", default=None, help="LoRA training work directory")
    m.add_argument("--adapter", default=None, help="peft adapter directory (instead of --run)")
    m.add_argument("--base", default=None, help="converted checkpoint or full-model run (default: the run's init.path)")
    m.add_argument("--dst", required=True, help="output directory (must not exist or be empty)")
    m.add_argument("--dtype", default=None, choices=DTYPES, help="parameter dtype written (default: the base's)")
    m.add_argument("--step", type=cli_utils.non_negative_int, default=None, help="step of --run (default: the latest)")
    m.add_argument("--layout", default=None, choices=EXPORT_LAYOUTS,
                   help="--adapter: its module names (default: recognised from them)")
    return p


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        out = export(args.run, args.dst, layout=args.layout, dtype=args.dtype, step=args.step,
                     base_name=args.base_name)
        print(f"wrote {out['num_tensors']} tensors ({out['dtype']}, {out['layout']} names) to {args.dst}")
    else:
        out = merge(args.dst, run=args.run, adapter=args.adapter, base=args.base, dtype=args.dtype,
                    step=args.step, layout=args.layout)
        print(f"merged {out['modules']} adapted modules into {args.dst} ({out['dtype']})")
    return 0


def main(argv=None) -> int:
    return cli_utils.run("rsunivlm-lora", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
