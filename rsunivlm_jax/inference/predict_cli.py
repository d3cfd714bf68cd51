"""`rsunivlm-predict`: one prompt on one or two images -> printed answer + a PNG of it.

    rsunivlm-predict --checkpoint DIR --image A.png [--image B.png] --prompt "[VG] where is the bridge?" \\
        [--out result.png] [--constrained]

DIR: a converted checkpoint, a training run (latest step, or --step) or one of its step
directories. The picture is `rsunivlm_jax.eval.render.answer_picture` with the question and
answer below it. The prompt is checked against the images before the model loads.
"""
from __future__ import annotations

import json
import sys
from typing import Sequence

from rsunivlm_jax import cli_utils, tasks

MAX_IMAGES = 2


def build_parser() -> cli_utils.ArgumentParser:
    p = cli_utils.ArgumentParser(prog="rsunivlm-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="converted checkpoint, training run or step directory")
    p.add_argument("--step", type=cli_utils.non_negative_int, help="step of a training run (default: the latest)")
    p.add_argument("--image", action="append", required=True,
                   help="image file; give twice for change tasks (before, after)")
    p.add_argument("--prompt", required=True, help='e.g. "[VG] where is the bridge?"')
    p.add_argument("--out", default="prediction.png", help="PNG to write (default: prediction.png)")
    p.add_argument("--label", help="[SEG] class for --constrained (default: taken from the prompt)")
    p.add_argument("--json", action="store_true", help="print a JSON line instead of the bare answer")
    cli_utils.add_decoding_flags(p, default_grid_size=tasks.DEFAULT_GRID_SIZE)
    return p


def _run(argv: list[str]) -> int:
    from rsunivlm_jax.data.preprocess import open_image
    from rsunivlm_jax.eval import render
    from rsunivlm_jax.inference import predict as P

    args = build_parser().parse_args(argv)
    if len(args.image) > MAX_IMAGES:
        raise cli_utils.UsageError(f"--image given {len(args.image)} times: at most {MAX_IMAGES} images")
    P.check_request(args.prompt, len(args.image), constrained=args.constrained, label=args.label)
    images = [open_image(path) for path in args.image]
    model = P.load_model(args.checkpoint, step=args.step, **cli_utils.sampling_overrides(args))
    result = P.predict(model, images, args.prompt, constrained=args.constrained, max_new_tokens=args.max_new_tokens,
                       grid_size=args.grid_size, label=args.label, rng=args.seed)
    if args.constrained and not result["constrained"]:
        print(f"note: --constrained has no effect on {result['task'] or 'untagged'} prompts (only [VG] and [SEG])",
              file=sys.stderr)
    picture = render.answer_picture(result["task"], images, result["answer"], prompt=args.prompt,
                                    grid_size=args.grid_size)
    picture = render.captioned(picture, [f"Q: {tasks.strip_placeholders(args.prompt)}", f"answer: {result['answer']}"])
    result["picture"] = str(render.save_png(picture, args.out))
    print(json.dumps(result) if args.json else result["answer"])
    print(f"wrote {result['picture']}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli_utils.run("rsunivlm-predict", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
