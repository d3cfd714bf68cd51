"""The Gradio page: inputs, streamed answer, drawn picture, examples; and serving it offline.

Counterpart: the `gr.Blocks` of the reference demo's `app.py`. Offline: analytics off, system fonts
(no web fonts), nothing fetched from outside; served on 127.0.0.1 unless told otherwise; one
request decodes at a time (a shared queue slot), others wait in the queue.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from typing import Sequence  # noqa: E402

import gradio as gr  # noqa: E402

from rsunivlm_jax.app import handlers  # noqa: E402
from rsunivlm_jax.app.engine import Engine  # noqa: E402
from rsunivlm_jax.app.examples import Example  # noqa: E402

CONCURRENCY_ID = "model"
MAX_FILE_SIZE = "50mb"
UPDATE_EVERY = 0.05  # seconds between partial answers sent to the page
FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
MONO_FONTS = ("ui-monospace", "Consolas", "monospace")
CSS = "#answer textarea { font-family: ui-monospace, Consolas, monospace; }"


def theme() -> gr.themes.Base:
    """The default theme with system fonts only (its web fonts would be requested from the server)."""
    return gr.themes.Default(font=list(FONTS), font_mono=list(MONO_FONTS))


def build_page(engine: Engine, examples: Sequence[Example] = (), *, grid_size: int = 24,
               title: str = "RSUniVLM", update_every: float = UPDATE_EVERY) -> gr.Blocks:
    """The page for `engine`. API endpoints: ``/answer`` (streamed: a partial answer at most every
    `update_every` seconds) and ``/template``."""
    sp = engine.defaults(grid_size)
    cfg = engine.model.config
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"## {title}\nCheckpoint `{engine.model.path.name}` · {cfg.gmoe.num_experts} expert(s) · "
                    f"images resized to {cfg.vision.image_size} px. Pick a task (it fills in the tag and a "
                    "template), edit the message freely, add one image (two for change tasks) and submit.")
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    image1 = gr.Image(label="Image (before, for change tasks)", type="filepath", format="png",
                                      sources=["upload", "clipboard"], elem_id="image1", height=280)
                    image2 = gr.Image(label="Second image (after; change tasks only)", type="filepath",
                                      format="png", sources=["upload", "clipboard"], elem_id="image2", height=280)
                task = gr.Dropdown(choices=[list(c) for c in handlers.TASK_CHOICES], value="cap", label="Task",
                                   elem_id="task")
                message = gr.Textbox(value=handlers.template("cap"), label="Message", lines=3, elem_id="message")
                constrained = gr.Checkbox(value=sp.constrained, label="Constrained decoding: [VG] answers are always "
                                          "valid boxes, [SEG] answers valid masks", elem_id="constrained")
                with gr.Accordion("Decoding settings", open=False):
                    do_sample = gr.Checkbox(value=sp.do_sample, label="Sample (off: greedy, as the reference demo)")
                    with gr.Row():
                        temperature = gr.Slider(0.05, 2.0, value=float(sp.temperature), step=0.05, label="Temperature")
                        top_k = gr.Slider(0, 200, value=int(sp.top_k), step=1, label="Top-k (0: off)")
                        top_p = gr.Slider(0.05, 1.0, value=float(sp.top_p), step=0.05, label="Top-p")
                    with gr.Row():
                        penalty = gr.Slider(1.0, 2.0, value=float(sp.repetition_penalty), step=0.01,
                                            label="Repetition penalty")
                        max_new = gr.Number(value=0, precision=0, minimum=0, maximum=handlers.MAX_NEW_TOKENS,
                                            label="Max new tokens (0: per task)")
                        grid = gr.Number(value=grid_size, precision=0, minimum=1, maximum=handlers.MAX_GRID_SIZE,
                                         label="Mask grid (cells per side)")
                        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                submit = gr.Button("Submit", variant="primary", elem_id="submit")
            with gr.Column():
                answer = gr.Textbox(label="Answer", lines=8, max_lines=30, interactive=False, elem_id="answer")
                picture = gr.Image(label="Answer drawn", type="pil", format="png", interactive=False,
                                   elem_id="picture", height=320)
                info = gr.Markdown(elem_id="info")
                notes = gr.Textbox(label="Messages (input and parse problems)", lines=2, interactive=False,
                                   elem_id="notes")
        if examples:
            gr.Examples([[e.image1, e.image2, e.task, e.message] for e in examples], inputs=[image1, image2, task, message],
                        label="Examples: held-out synthetic scenes", examples_per_page=len(examples))

        def respond(img1, img2, text, con, sample, temp, k, p, rep, budget, cells, rng):
            try:
                settings = handlers.decoding(con, sample, temp, k, p, rep, budget, cells, rng)
            except handlers.RequestError as e:
                yield "", None, "", str(e)
                return
            first = True
            for u in handlers.respond(engine, img1, img2, text, settings, min_interval=update_every):
                shown = u.picture if (u.done or first) else gr.skip()
                first = False
                yield u.answer, shown, u.info, u.notes

        inputs = [image1, image2, message, constrained, do_sample, temperature, top_k, top_p, penalty, max_new,
                  grid, seed]
        outputs = [answer, picture, info, notes]
        kw = dict(preprocess=False, concurrency_limit=1, concurrency_id=CONCURRENCY_ID)  # uploads decoded by us
        submit.click(respond, inputs, outputs, api_name="answer", **kw)
        message.submit(respond, inputs, outputs, api_name=False, **kw)
        task.input(handlers.template, [task], [message], api_name="template")
    return page


def serve(page: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None,
          allowed_paths: Sequence[str] = (), quiet: bool = False) -> str:
    """Queues and launches `page` in the background; returns its local URL (`page.block_thread()`
    then serves until Ctrl+C, `page.close()` stops it). OSError when the port is taken."""
    page.queue(max_size=64)
    _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False,
                            theme=theme(), css=CSS, allowed_paths=list(allowed_paths), max_file_size=MAX_FILE_SIZE,
                            footer_links=["api", "settings"], quiet=quiet, show_error=True, inbrowser=False)
    return url
