"""`rsunivlm-train`: train or resume a run from an ml-collections config file.

    rsunivlm-train --config configs/tiny_cpu.py --workdir /tmp/tiny
    rsunivlm-train --config configs/rsunivlm_1b_stage2.py --workdir runs/s2 \
        --config.init.path=runs/s1 --config.optim.lr=1e-5 --config.train.global_batch=128

Any config field can be overridden with `--config.<path>=<value>`; a config file argument follows a
colon (`--config configs/tiny_cpu.py:stage2`). Multi-host: pass `--multihost` on every process
(TPU pods and SLURM are auto-detected by `jax.distributed.initialize()`), or give
`--coordinator_address`, `--num_processes` and `--process_id` explicitly. Re-running the same
command resumes from the latest checkpoint in `--workdir`. In Python, `main([...])` takes the same
arguments (without the program name) and returns the exit status.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, TensorBoard).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (auto-detected cluster).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-process setup).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "Number of (fake) CPU devices per process (testing).")


def _run(argv) -> int:
    del argv
    if _WORKDIR.value is None or _CONFIG.value is None:
        raise app.UsageError("--config and --workdir are required")
    import jax
    if _CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
        if _COORD.value or _MULTIHOST.value:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from rsunivlm_jax.train import trainer
    trainer.maybe_initialize_distributed(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                                         process_id=_PID.value, auto=_MULTIHOST.value)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save step at INFO
    try:
        summary = trainer.train(_CONFIG.value, _WORKDIR.value)
    except trainer.TrainingDiverged as e:
        logging.error("%s", e)
        return 3
    if jax.process_index() == 0:
        print(f"{summary.status} at step {summary.step}: train loss {summary.train_loss}, "
              f"eval loss {summary.eval_loss}, skipped steps {summary.nonfinite_total}", flush=True)
    return 0


@contextlib.contextmanager
def _sys_argv(args: list[str]):
    """ml-collections finds the `--config.*` overrides to define in `sys.argv`, not in the parsed list."""
    saved, sys.argv = sys.argv, args
    try:
        yield
    finally:
        sys.argv = saved


def _reset_flags() -> None:
    """Forgets an earlier parse in this process: this module's flags go back to their defaults and
    the `--config.*` override flags it defined are dropped (the new argv defines its own)."""
    for name in list(flags.FLAGS):
        if name.startswith(f"{_CONFIG.name}."):
            delattr(flags.FLAGS, name)
    for holder in (_CONFIG, _WORKDIR, _MULTIHOST, _COORD, _NPROC, _PID, _CPU_DEVICES):
        flags.FLAGS[holder.name].unparse()


def _parse_flags(args: list[str]) -> list[str]:
    with _sys_argv(args):
        return app.parse_flags_with_usage(args)


def _exit_status(code) -> int:
    return 0 if code is None else code if isinstance(code, int) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; `argv` excludes the program name (default: `sys.argv[1:]`). Returns the exit
    status (0 done, 1 usage error, 3 diverged)."""
    args = list(sys.argv) if argv is None else ["rsunivlm-train", *argv]
    _reset_flags()
    try:
        app.run(lambda a: sys.exit(_run(a)), argv=args, flags_parser=_parse_flags)
    except SystemExit as e:  # app.run always ends in sys.exit
        return _exit_status(e.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
