"""`rsunivlm-train`: train or resume a run from an ml-collections config file.

    rsunivlm-train --config configs/tiny_cpu.py --workdir runs/tiny
    rsunivlm-train --config configs/rsunivlm_1b_stage2.py --workdir runs/s2 \\
        --config.init.path=runs/s1 --config.optim.lr=1e-5 --config.train.global_batch=128

Any config field can be overridden with `--config.<path>=<value>` (ml-collections `config_flags`);
a config file argument follows a colon (`--config configs/tiny_cpu.py:stage2`). The config and
its model are checked before anything is written. Multi-host: pass `--multihost` on every process
(TPU pods and SLURM are auto-detected by `jax.distributed.initialize()`), or give
`--coordinator-address`, `--num-processes` and `--process-id` explicitly. Re-running the same
command resumes from the latest checkpoint in `--workdir`. Exit status: 0 done, 2 bad input,
3 diverged.
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Sequence

from rsunivlm_jax import cli_utils

EXIT_DIVERGED = 3


def build_parser() -> cli_utils.ArgumentParser:
    p = cli_utils.ArgumentParser(prog="rsunivlm-train", description=__doc__.split("\n\n")[0],
                                 epilog="Overrides: --config.<path>=<value>, e.g. --config.optim.lr=1e-4.")
    p.add_argument("--config", required=True, metavar="FILE[:ARG]", help="training config file (configs/*.py)")
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics, TensorBoard)")
    p.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize() (auto-detected)")
    p.add_argument("--coordinator-address", "--coordinator_address", dest="coordinator_address",
                   help="host:port of process 0 (explicit multi-process setup)")
    p.add_argument("--num-processes", "--num_processes", dest="num_processes", type=cli_utils.positive_int,
                   help="number of processes (with --coordinator-address)")
    p.add_argument("--process-id", "--process_id", dest="process_id", type=cli_utils.non_negative_int,
                   help="this process's index (with --coordinator-address)")
    p.add_argument("--cpu-devices", "--cpu_devices", dest="cpu_devices", type=cli_utils.positive_int,
                   help="number of (fake) CPU devices per process (testing)")
    return p


def _overrides(extra: list[str]) -> list[str]:
    """The `--config.<path>[=]<value>` arguments among those argparse did not know."""
    out, k = [], 0
    while k < len(extra):
        arg = extra[k]
        if not arg.startswith("--config."):
            raise cli_utils.UsageError(f"unrecognized argument {arg!r}")
        out.append(arg)
        if "=" not in arg and k + 1 < len(extra):
            out.append(extra[k + 1])
            k += 1
        k += 1
    return out


def _has_field(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def _parse_config(spec: str, overrides: list[str], *, base: bool = False):
    from absl import flags
    from ml_collections import config_flags
    argv = ["rsunivlm-train", f"--config={spec}", *([] if base else overrides)]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "training config", flag_values=values,
                                             lock_config=True, sys_argv=argv)
    try:
        values(argv)
    except flags.Error as e:  # a bad value; an error inside get_config() comes with its traceback as text
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise cli_utils.UsageError(f"--config {spec}: {lines[-1].strip()}" if "Traceback" in str(e)
                                   else " ".join(lines)) from e
    return holder.value


def load_config(spec: str, overrides: Sequence[str] = ()):
    """The config of `spec` (`file[:arg]`) with `--config.<path>=<value>` overrides applied."""
    path = spec.split(":", 1)[0]
    if not Path(path).is_file():
        raise cli_utils.UsageError(f"--config {path}: no such file")
    try:
        return _parse_config(spec, list(overrides))
    except AttributeError:  # an override of a field the config does not have
        base = _parse_config(spec, [], base=True)
        for arg in overrides:
            name = arg.split("=", 1)[0][len("--config."):]
            if arg.startswith("--config.") and not _has_field(base, name):
                raise cli_utils.UsageError(f"--config.{name}: {spec} has no such field") from None
        raise


def check_model(config):
    """The run's `ModelConfig` (`trainer.model_config_from`), or a UsageError naming the bad field."""
    from rsunivlm_jax.train import trainer
    try:
        return trainer.model_config_from(config.model, config.init)
    except (AttributeError, TypeError) as e:  # "...has no attribute 'x'" / "...unexpected keyword argument 'x'"
        m = re.search(r"(?:attribute|argument) '(\w+)'", str(e))
        raise cli_utils.UsageError(f"--config model: unknown model field {m.group(1)!r}" if m else
                                   f"--config model: {e}") from e
    except KeyError as e:  # presets.get
        raise cli_utils.UsageError(f"--config model.preset: {cli_utils.one_line(e)}") from e
    except ValueError as e:
        raise cli_utils.UsageError(f"--config model: {cli_utils.one_line(e)}") from e


def _run(argv: list[str]) -> int:
    args, extra = build_parser().parse_known_args(argv)
    config = load_config(args.config, _overrides(extra))
    check_model(config)
    import jax
    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
        if args.coordinator_address or args.multihost:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from rsunivlm_jax.train import trainer
    trainer.maybe_initialize_distributed(coordinator_address=args.coordinator_address,
                                         num_processes=args.num_processes, process_id=args.process_id,
                                         auto=args.multihost)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO)
    for quiet in ("absl", "jax"):  # Orbax logs every save step at INFO, JAX each backend it tries
        logging.getLogger(quiet).setLevel(logging.WARNING)
    try:
        summary = trainer.train(config, args.workdir)
    except trainer.TrainingDiverged as e:
        logging.error("%s", e)
        return EXIT_DIVERGED
    if jax.process_index() == 0:
        print(f"{summary.status} at step {summary.step}: train loss {summary.train_loss}, "
              f"eval loss {summary.eval_loss}, skipped steps {summary.nonfinite_total}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; `argv` excludes the program name (default: `sys.argv[1:]`)."""
    return cli_utils.run("rsunivlm-train", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
