"""`rsunivlm-app`: the interactive page for a checkpoint, served on this machine.

    rsunivlm-app [--checkpoint DIR] [--host 127.0.0.1] [--port 7860] [--grid-size N] [--warmup]

DIR: anything `rsunivlm-predict` loads (a converted / exported checkpoint or a training work
directory). Default: the main job's G-MoE model, `runs/demo/gmoe`. Counterpart: `python app.py`
of the reference demo.
"""
from __future__ import annotations

import importlib.util
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from rsunivlm_jax import cli_utils

DEFAULT_CHECKPOINT = Path("runs") / "demo" / "gmoe"
DEMO_COMMAND = "bash launch/quickstart.sh demo"


def build_parser() -> cli_utils.ArgumentParser:
    p = cli_utils.ArgumentParser(prog="rsunivlm-app", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help=f"checkpoint directory (default: {DEFAULT_CHECKPOINT}, the main job's model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--grid-size", type=cli_utils.positive_int,
                   help="mask grid of [SEG] answers (default: the main job's, else 24)")
    p.add_argument("--warmup", action="store_true", help="answer every example once in the background at start-up, "
                   "so their programs are compiled before the first request (each new shape otherwise "
                   "compiles on first use, several seconds on a CPU)")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.checkpoint is None and not DEFAULT_CHECKPOINT.is_dir():
        raise ValueError(f"no --checkpoint given and {DEFAULT_CHECKPOINT} does not exist; `{DEMO_COMMAND}` "
                         "(the main job, about 11 minutes) creates it")
    checkpoint = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a port number (1-65535)")
    if importlib.util.find_spec("gradio") is None:
        raise ValueError("the page needs Gradio: pip install 'rsunivlm_jax[app]'")

    from rsunivlm_jax.app import examples as ex
    from rsunivlm_jax.app.engine import Engine
    from rsunivlm_jax.inference.predict import load_model
    try:
        settings = ex.settings_for(checkpoint)
        model = load_model(checkpoint, do_sample=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load checkpoint {checkpoint}: {cli_utils.one_line(e)}") from e
    grid = args.grid_size or settings.grid_size

    from rsunivlm_jax.app import page as page_lib
    with tempfile.TemporaryDirectory(prefix="rsunivlm-app-") as tmp:
        examples = ex.write_examples(tmp, ex.SyntheticSettings(settings.seed, settings.split, settings.image_size, grid))
        engine = Engine(model)
        page = page_lib.build_page(engine, examples, grid_size=grid, title="RSUniVLM")
        if args.warmup:
            threading.Thread(target=engine.warm_up, args=(ex.requests(examples, engine.defaults(grid)),),
                             daemon=True).start()
        url = page_lib.serve(page, host=args.host, port=args.port, allowed_paths=[tmp], quiet=True)
        print(f"rsunivlm-app: serving {checkpoint} at {url} (Ctrl+C stops)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # a terminated server also removes its example files
        page.block_thread()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli_utils.run("rsunivlm-app", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
