"""Child process for the resume tests: a tiny training run on a given synthetic dataset that can
pause (blocking inside the data iterator) so the parent can SIGKILL / SIGTERM it at a known point.

    python -m tests.train.run_child --workdir W --data D --steps N [--pause_after K --marker M --release R]

With --pause_after K the K+1-th batch request of this process blocks: it writes `marker`, then
waits until `release` exists (forever if never created).
"""
import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")


class PausingIterator:
    def __init__(self, inner, pause_after, marker, release):
        self.inner, self.pause_after, self.marker, self.release = inner, pause_after, marker, release
        self.consumed = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.pause_after >= 0 and self.consumed == self.pause_after:
            open(self.marker, "w").close()
            while not os.path.exists(self.release):
                time.sleep(0.05)
        self.consumed += 1
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


class PausingDataset:
    def __init__(self, ds, **kw):
        self.ds, self.kw = ds, kw

    def __iter__(self):
        return PausingIterator(iter(self.ds), **self.kw)


def config_for(data_dir, steps):
    from tests.config_files import load as load_config
    c = load_config("tiny_cpu.py")
    c.data.train = os.path.join(data_dir, "train.jsonl")
    c.data.eval = os.path.join(data_dir, "val.jsonl")
    c.data.max_text_len = 96
    c.data.max_seq_len = 256
    c.data.max_images = 1
    c.train.steps = steps
    c.train.global_batch = 4
    c.train.log_every = 1
    c.train.progress = False
    c.ckpt.every = 3
    c.ckpt.keep = 5
    c.eval.every = 4
    c.eval.batches = 2
    return c


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--pause_after", type=int, default=-1)
    parser.add_argument("--marker", default="")
    parser.add_argument("--release", default="")
    args = parser.parse_args()
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    from rsunivlm_jax.train import data as data_lib, trainer
    config = config_for(args.data, args.steps)
    inputs = data_lib.build_inputs(config, trainer.model_config_from(config.model), args.workdir)
    inputs.train = PausingDataset(inputs.train, pause_after=args.pause_after, marker=args.marker,
                                  release=args.release)
    summary = trainer.train(config, args.workdir, inputs=inputs)
    print(f"STATUS {summary.status} {summary.step}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
