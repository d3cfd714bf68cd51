"""The main job with a kill point: `python -m tests.demo_kill_child POINT [demo flags]`.

Runs `rsunivlm_jax.demo.main` in this process and sends itself SIGKILL (no cleanup of any kind)
when it reaches POINT, one of `POINTS`. The hooks wrap library functions from the outside; the
demo itself knows nothing about them. Exit status -9 (killed) means the point was reached.
"""
import os
import signal
import sys

# point -> (stage, what triggers the kill)
POINTS = {
    "data": "the synthetic writer, after 20 scenes of the training split",
    "tokenizer": "the trained tokenizer, before its file is written",
    "stage1-save": "stage 1, while the step-16 checkpoint is being written (asynchronously)",
    "gmoe-step": "stage 2 (G-MoE), before the 5th step this process runs",
    "gmoe-final-save": "stage 2 (G-MoE), while its final (step-12) checkpoint is being written",
    "dense-done": "the dense run, after its final checkpoint, before its done marker",
    "eval-gmoe": "evaluation, the 3rd task of the G-MoE model, before its directory is renamed into place",
    "eval-dense": "evaluation, the 1st task of the dense model, before its rename",
    "eval-control": "evaluation, the 2nd task of the shuffled-image control, before its rename",
    "report-md": "the report, after the curves and the gallery, before report.md",
    "report-metrics": "the report, after report.md, before metrics.json",
}


def _die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    import orbax.checkpoint as ocp

    from rsunivlm_jax.data.synthetic import writer
    from rsunivlm_jax.train import data as data_lib
    from rsunivlm_jax.train import trainer

    state = {"stage": None, "steps": 0, "scenes": 0, "evals": {}}

    train = trainer.train

    def tracked_train(config, workdir, **kw):
        state["stage"], state["steps"] = os.path.basename(os.path.normpath(workdir)), 0
        return train(config, workdir, **kw)

    trainer.train = tracked_train

    to_global = data_lib.to_global

    def counted_to_global(*a, **kw):
        state["steps"] += 1
        if point == "gmoe-step" and (state["stage"], state["steps"]) == ("gmoe", 5):
            _die()
        return to_global(*a, **kw)

    data_lib.to_global = counted_to_global

    save = ocp.CheckpointManager.save

    def killing_save(self, step, *a, **kw):
        out = save(self, step, *a, **kw)  # async: the write is in flight when this returns
        if (point, state["stage"], int(step)) in (("stage1-save", "stage1", 16), ("gmoe-final-save", "gmoe", 12)):
            _die()
        return out

    ocp.CheckpointManager.save = killing_save

    write_scene = writer._write_scene

    def counted_write_scene(job):
        out = write_scene(job)
        state["scenes"] += job[4] == "train"
        if point == "data" and state["scenes"] == 20:
            _die()
        return out

    writer._write_scene = counted_write_scene

    if point == "tokenizer":
        from rsunivlm_jax.data import bpe
        bpe.atomic_write_text = lambda *a, **kw: _die()

    replace = os.replace

    def watched_replace(src, dst, *a, **kw):
        src, dst = str(src), str(dst)
        name, parent = os.path.basename(dst), os.path.basename(os.path.dirname(dst))
        if src.endswith(".partial"):  # an evaluation directory renamed into place
            n = state["evals"][parent] = state["evals"].get(parent, 0) + 1
            if (point, parent, n) in (("eval-gmoe", "gmoe", 3), ("eval-dense", "dense", 1),
                                      ("eval-control", "gmoe_shuffled", 2)):
                _die()
        if (point, parent, name) == ("dense-done", "dense", "DONE.json"):
            _die()
        if (point, name) in (("report-md", "report.md"), ("report-metrics", "metrics.json")) and \
                os.path.isfile(os.path.join(os.path.dirname(dst), "demo_config.json")):
            _die()
        return replace(src, dst, *a, **kw)

    os.replace = watched_replace


if __name__ == "__main__":
    point, argv = sys.argv[1], sys.argv[2:]
    if point not in POINTS:
        sys.exit(f"unknown kill point {point!r}; expected one of {sorted(POINTS)}")
    install(point)
    from rsunivlm_jax import demo
    sys.exit(demo.main(argv))
