"""Child process for the multi-process test: one of `--nproc` JAX processes on localhost (gloo CPU
collectives), each with `--devices` CPU devices, training the tiny G-MoE model on random contract
batches (each process feeds its own rows of the global batch).

    python -m tests.train.run_mp_child --workdir W --steps 3 --devices 8                       # 1 x 8
    python -m tests.train.run_mp_child --workdir W --steps 3 --devices 4 --nproc 2 --pid I --port P
"""
import argparse
import os

os.environ["XLA_FLAGS"] = ""  # the device count comes from --devices, not the test's XLA_FLAGS


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--pid", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    import jax
    jax.config.update("jax_num_cpu_devices", args.devices)
    if args.nproc > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    from rsunivlm_jax.train import data as data_lib, trainer

    trainer.maybe_initialize_distributed(coordinator_address=f"localhost:{args.port}" if args.nproc > 1 else None,
                                         num_processes=args.nproc, process_id=args.pid)
    assert jax.process_count() == args.nproc and jax.device_count() == 8, (jax.process_count(), jax.device_count())

    from tests.config_files import load as load_config
    c = load_config("tiny_cpu.py:stage2")
    c.init.mode = "random"
    c.mesh.shape = (2, -1, 1)
    c.train.steps = args.steps
    c.train.global_batch = 8
    c.train.log_every = 1
    c.train.progress = False
    c.data.max_text_len = 24
    c.data.max_images = 1
    c.ckpt.every = args.steps
    c.eval.every = 0
    model = trainer.model_config_from(c.model)
    src = data_lib.RandomBatches(model, global_batch=8, text_len=24, num_images=1)  # process rows from jax
    summary = trainer.train(c, args.workdir, inputs=data_lib.Inputs(src, None, None, 8 // args.nproc))
    print(f"STATUS {summary.status} {summary.step}", flush=True)


if __name__ == "__main__":
    main()
