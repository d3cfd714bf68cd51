"""Multi-host input: each process reads a disjoint block shard of the records (Grain), the global
batch assembled from the processes' rows equals the batch of one process, and a checkpoint restores
every process's iterator.

The multi-process test runs this module as a child (`python -m tests.train.test_multihost_data`):
2 local JAX processes (gloo CPU collectives) x 2 CPU devices.
"""
import argparse
import json
import os
import socket
import subprocess
import sys

import grain
import numpy as np
import pytest

from tests.data.helpers import IMAGE_TOKEN_ID, qwen_tokenizer, small_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
S, T, L, N, K = 24, 96, 200, 2, 20  # image size, text len, seq len, max images, positions per image
GLOBAL = 4


def _dataset(src, *, batch_size, shard_index=None, shard_count=None, grouping="granularity", num_epochs=None):
    from rsunivlm_jax.data import pipeline
    return pipeline.make_dataset(
        [src], tokenizer=qwen_tokenizer(), image_size=S, image_token_id=IMAGE_TOKEN_ID, tokens_per_image=K,
        max_text_len=T, max_seq_len=L, max_images=N, batch_size=batch_size, seed=3, grouping=grouping,
        shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs, read_threads=1)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _rows(batch) -> list[bytes]:
    ids, px = batch["input_ids"], batch["pixel_values"]
    return [ids[i].tobytes() + px[i].tobytes() for i in range(len(ids))]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    from rsunivlm_jax.data import records
    return records.load_source(small_dataset(tmp_path_factory.mktemp("mh"), n=24, size=S), strict=True)


def test_block_shards_are_disjoint_equal_length_runs():
    from rsunivlm_jax.data.pipeline import ShardByBlocks
    base = grain.MapDataset.range(20)
    a, b = (ShardByBlocks(base, i, 2, 3) for i in range(2))
    assert list(a) == [0, 1, 2, 6, 7, 8, 12, 13, 14] and list(b) == [3, 4, 5, 9, 10, 11, 15, 16, 17]
    assert len(a) == len(b) == 9  # 18, 19: a partial group, dropped on every shard
    with pytest.raises(ValueError, match="shard 2 of 2"):
        ShardByBlocks(base, 2, 2, 3)


@pytest.mark.parametrize("grouping", ["granularity", "mixed"])
def test_process_rows_side_by_side_are_the_single_process_batches(src, grouping):
    one = _take(iter(_dataset(src, batch_size=GLOBAL, shard_index=0, shard_count=1, grouping=grouping)), 6)
    shards = [_take(iter(_dataset(src, batch_size=GLOBAL // 2, shard_index=i, shard_count=2, grouping=grouping)), 6)
              for i in range(2)]
    for step, full in enumerate(one):
        for key, value in full.items():
            np.testing.assert_array_equal(np.concatenate([shards[0][step][key], shards[1][step][key]]), value,
                                          err_msg=f"{grouping} step {step} {key}")


def test_one_epoch_shards_are_disjoint_and_cover(src):
    # batch 1 per process, one epoch: every record is read by exactly one process
    a, b = (list(_dataset(src, batch_size=1, shard_index=i, shard_count=2, grouping="mixed", num_epochs=1))
            for i in range(2))
    ka = {r for x in a for r in _rows(x)}
    kb = {r for x in b for r in _rows(x)}
    assert len(a) == len(b) == 12 and len(ka) == 12 and len(kb) == 12 and not ka & kb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_assemble_global_batches_and_resume_every_iterator(tmp_path):
    data = small_dataset(tmp_path / "data", n=24, size=S)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.train.test_multihost_data", "--data", data,
                               "--workdir", str(tmp_path / "run"), "--port", str(port), "--pid", str(i)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        outs.append(out)
        assert p.returncode == 0, out[-4000:]
    reports = [json.loads(next(line for line in o.splitlines() if line.startswith("REPORT "))[7:]) for o in outs]
    for pid, r in enumerate(reports):
        assert r["process"] == pid and r["process_count"] == 2
        assert r["global_equals_single_process"] == [True] * 5
        assert r["resumed_equals_continued"] == [True] * 2
        assert r["local_rows"] == GLOBAL // 2
    ckpt = tmp_path / "run" / "3" / "data_iter"
    files = sorted(f for f in os.listdir(ckpt) if f.startswith("process_"))
    assert files == ["process_0-of-2.json", "process_1-of-2.json"]
    states = [json.loads((ckpt / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert [st["index"] for st in states] == [3, 3]  # each process's iterator, 3 batches in


def child(argv=None) -> None:
    """One of two JAX processes: global batches through `to_global`, a checkpoint, a restore."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    args = parser.parse_args(argv)
    os.environ["XLA_FLAGS"] = ""
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{args.port}", num_processes=2, process_id=args.pid)
    import jax.numpy as jnp
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P

    from rsunivlm_jax import sharding as shd
    from rsunivlm_jax.data import records
    from rsunivlm_jax.train import checkpoint as ckpt_lib, data as data_lib, step as step_lib
    from rsunivlm_jax.train.trainer import BATCH_NDIMS

    src = records.load_source(args.data, strict=True)
    mesh = shd.make_mesh((1, -1, 1))
    batch_sh = {k: shd.data_sharding(mesh, "fsdp", n) for k, n in BATCH_NDIMS.items()}
    local = GLOBAL // jax.process_count()
    ds = _dataset(src, batch_size=local)  # shard = this JAX process
    reference = _take(iter(_dataset(src, batch_size=GLOBAL, shard_index=0, shard_count=1)), 5)

    def global_rows(batch) -> dict:
        arrays = data_lib.to_global(batch, batch_sh, GLOBAL)
        return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in arrays.items()}

    def same(a, b) -> bool:
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    it = iter(ds)
    seen = [global_rows(next(it)) for _ in range(3)]
    rep = NamedSharding(mesh, P())
    zero = jax.device_put(jnp.zeros((), jnp.int32), rep)
    w = jax.device_put(jnp.arange(4.0), NamedSharding(mesh, P("fsdp")))
    state = step_lib.TrainState(step=zero, params={"w": w}, opt_state={}, opt_step=zero, nonfinite_total=zero,
                                nonfinite_run=zero)
    ckpt = ckpt_lib.Checkpointer(args.workdir, async_save=False)
    ckpt.save(3, state, data_iter=it, force=True)
    ckpt.wait()
    seen += [global_rows(next(it)) for _ in range(2)]  # steps 4, 5 after the save

    fresh = iter(_dataset(src, batch_size=local))
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    ckpt.restore(3, target, data_iter=fresh)
    resumed = [global_rows(next(fresh)) for _ in range(2)]
    ckpt.close()
    report = {"process": jax.process_index(), "process_count": jax.process_count(),
              "local_rows": int(len(next(iter(ds))["input_ids"])),
              "global_equals_single_process": [same(a, b) for a, b in zip(seen, reference)],
              "resumed_equals_continued": [same(a, b) for a, b in zip(resumed, seen[3:])]}
    print("REPORT " + json.dumps(report), flush=True)
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    child()
