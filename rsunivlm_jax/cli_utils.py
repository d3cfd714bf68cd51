"""What every `rsunivlm-*` command line shares: one argparse convention, named errors, decoding flags.

    parser = cli_utils.ArgumentParser(prog="rsunivlm-x", description=...)   # adds --debug
    def main(argv=None) -> int:
        return cli_utils.run(parser.prog, lambda args: body(parser.parse_args(args)), argv)

`run` turns bad input (ValueError, OSError, KeyError: a wrong flag value, a missing file, a corrupt
checkpoint, a bad record) into one line ``prog: error: <what and why>`` on stderr and exit status
2; ``--debug`` prints the traceback as well. `--help` returns 0. Any other exception is a bug and
keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Sequence

BAD_INPUT = (ValueError, OSError, KeyError)
EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """Bad command-line input; the message names the flag and the value."""


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors raise `UsageError` (one line via `run`, no usage
    block) and that takes ``--debug`` (sub-command parsers share the class and the flag)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="on an error, also print the traceback")

    def error(self, message: str):
        raise UsageError(message)


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (an OSError as ``file: reason``, list items joined by ';')."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    problems = getattr(error, "problems", None)
    if problems:
        return "; ".join(str(p) for p in problems)
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    text = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return text or type(error).__name__


def run(prog: str, body: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """`body(argv)` (default `sys.argv[1:]`) -> exit status; bad input -> one line and status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(body(args) or 0)
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BAD_INPUT as e:
        if "--debug" in args:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


# --------------------------------------------------------------------------------------------
# Value types (argparse `type=`): the message names the flag through argparse
# --------------------------------------------------------------------------------------------

def _number(kind, test, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    parse.__name__ = what
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer (>= 1)")
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _number(float, lambda v: v > 0, "a positive number")
probability = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")


# --------------------------------------------------------------------------------------------
# Decoding flags of rsunivlm-predict and rsunivlm-eval
# --------------------------------------------------------------------------------------------

SAMPLING_FIELDS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "penalize_prompt")


def add_decoding_flags(parser: argparse.ArgumentParser, *, default_grid_size: int) -> None:
    """--max-new-tokens, --constrained, --grid-size, the sampling flags and --seed."""
    g = parser.add_argument_group("decoding (greedy unless --do-sample, as the reference demo)")
    g.add_argument("--max-new-tokens", type=positive_int, help="answer budget in tokens (default: per task)")
    g.add_argument("--constrained", action="store_true", help="grammar-constrained [VG] boxes / [SEG] masks")
    g.add_argument("--grid-size", type=positive_int, default=default_grid_size,
                   help=f"mask grid cells per side (default {default_grid_size}, as RSUniVLM)")
    g.add_argument("--do-sample", action="store_true",
                   help="sample (with generation_config.json's temperature / top-k / top-p unless given)")
    g.add_argument("--temperature", type=positive_float)
    g.add_argument("--top-k", type=non_negative_int)
    g.add_argument("--top-p", type=probability)
    g.add_argument("--repetition-penalty", type=positive_float, help="default: generation_config.json, else 1.0")
    g.add_argument("--penalize-prompt", action="store_true", default=None,
                   help="the repetition penalty also counts prompt tokens (transformers input_ids mode)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling flags as `SamplingParams` overrides (None: keep generation_config.json's)."""
    return {name: getattr(args, name) for name in SAMPLING_FIELDS}
