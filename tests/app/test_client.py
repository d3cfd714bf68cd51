"""The page's functions through `gradio_client` against one served app: every task, one and two images,
constrained decoding on and off, sampling settings, streaming, queueing and bad inputs. Nothing is
contacted outside this machine."""
import dataclasses
import ipaddress
import re
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax import tasks
from rsunivlm_jax.app import engine as engine_lib
from rsunivlm_jax.app import handlers, stream
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference.predict import load_model, predict
from rsunivlm_jax.router import route
from tests.app.conftest import free_port

GRID = 4
CONNECTIONS: list = []


def _audit(event, args):
    """Records every outgoing connection and name lookup of this process."""
    if event == "socket.connect":
        CONNECTIONS.append(args[1])
    elif event == "socket.getaddrinfo":
        CONNECTIONS.append((args[0], args[1]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def model(app_checkpoint):
    return load_model(app_checkpoint, do_sample=False)


@pytest.fixture(scope="module")
def served(model):
    from gradio_client import Client

    from rsunivlm_jax.app import page as page_lib
    engine = engine_lib.Engine(model)
    page = page_lib.build_page(engine, grid_size=GRID, update_every=0.0)  # every token reaches the client
    url = page_lib.serve(page, port=free_port(), quiet=True)
    client = Client(url, verbose=False, download_files=True)
    yield client, engine, url
    client.close()
    page.close()


def ask(client, image1, image2, message, *, constrained=True, do_sample=False, temperature=1.0, top_k=0,
        top_p=1.0, penalty=1.0, max_new_tokens=16, grid=GRID, seed=0):
    from gradio_client import handle_file
    files = [handle_file(p) if p else None for p in (image1, image2)]
    return client.predict(*files, message, constrained, do_sample, temperature, top_k, top_p, penalty,
                          max_new_tokens, grid, seed, api_name="/answer")


def parse_info(info):
    m = re.match(r"task (\w+) · expert (\d) \([a-z-]+\) · (\d+) tokens · [\d.]+ s \(first token [\d.]+ s\) · "
                 r"(constrained|unconstrained)$", info)
    assert m, info
    return m.group(1), int(m.group(2)), int(m.group(3)), m.group(4) == "constrained"


def test_template_fills_tag(served):
    client, _, _ = served
    for label, key in handlers.TASK_CHOICES:
        text = client.predict(key, api_name="/template")
        assert text == handlers.TEMPLATES[key]
        want = None if key == "free" else tasks.TASK_TAG[key]
        assert tasks.leading_tag(text) == want, (label, text)


# (template key, images, picture width): the 80 x 64 inputs are drawn at 320 x 256; two images side by side
# 4 pixels apart, change detection as before | after | change map.
TASK_CASES = [("cap", 1, 320), ("vqa", 1, 320), ("cls", 1, 320), ("vg", 1, 320), ("ref", 1, 320), ("seg", 1, 320),
              ("free", 1, 320), ("ccd", 2, 644), ("cd", 2, 960), ("free", 2, 644)]


@pytest.mark.parametrize("key,n,width", TASK_CASES, ids=[f"{k}-{n}img" for k, n, _ in TASK_CASES])
def test_each_task(served, app_images, key, n, width):
    client, _, _ = served
    message = handlers.template(key)
    budget = 0 if key in ("seg", "cd") else 16  # 0: the task's default (40 tokens per mask row)
    answer, pic, info, notes = ask(client, app_images["before"], app_images["after"] if n == 2 else None, message,
                                   max_new_tokens=budget)
    task, expert, tokens, constrained = parse_info(info)
    assert task == (tasks.task_of_prompt(message, n) or "untagged")
    assert expert == route(message)
    assert 1 <= tokens <= (budget or 40 * GRID)
    assert constrained == (key in ("vg", "seg", "cd"))
    img = Image.open(pic)
    assert img.size == (width, 256)
    if key in ("vg", "seg", "cd"):  # constrained: always a complete, parsable answer, no problems listed
        assert notes == ""
        if key == "vg":
            assert C.parse_boxes_strict(answer)
        else:
            tasks.decode_mask_strict(answer, GRID)
    if key == "cd":  # the change map is the decoded mask
        grid = tasks.decode_mask_strict(answer, GRID)
        change_map = np.asarray(img)[:, 640:, 0] > 127
        assert (change_map == tasks.grid_to_mask(grid, 256, 320)).all()
    if key == "ref":
        assert "nothing drawn" not in notes


def test_answer_matches_rsunivlm_predict(served, model, app_images):
    """The page's greedy answer is rsunivlm-predict's (the fused generate loop)."""
    client, _, _ = served
    images = [Image.open(app_images["before"]).convert("RGB")]
    message = "[CAP] Describe this image briefly."
    answer, _, info, _ = ask(client, app_images["before"], None, message, constrained=False)
    want = predict(model, images, message, max_new_tokens=16, grid_size=GRID)
    assert answer == want["answer"]
    assert parse_info(info)[2] == want["tokens"]


def test_unconstrained_parse_problems_are_shown(served, app_images):
    client, _, _ = served
    answer, pic, info, notes = ask(client, app_images["before"], None, "[SEG] water.", constrained=False)
    grid, problems = tasks.decode_mask(answer, GRID)
    assert problems, answer  # a random model's free text is no mask
    assert all(f"mask: {p}" in notes for p in problems)
    assert "stopped at the token limit (16)" in notes and not parse_info(info)[3]
    answer, _, _, notes = ask(client, app_images["before"], None, "[VG] where is the car?", constrained=False)
    with pytest.raises(ValueError):
        C.parse_boxes_strict(answer)
    assert "boxes:" in notes
    _, _, info, _ = ask(client, app_images["before"], None, "[CAP] Describe.", constrained=True)
    assert not parse_info(info)[3]  # the switch is on, but only [VG] and [SEG] have a grammar


def test_sampling_settings(served, app_images):
    client, _, _ = served
    kw = dict(constrained=False, do_sample=True, temperature=0.8, penalty=1.1, max_new_tokens=10)
    a = ask(client, app_images["before"], None, "[CAP] Describe this image briefly.", seed=1, **kw)[0]
    b = ask(client, app_images["before"], None, "[CAP] Describe this image briefly.", seed=1, **kw)[0]
    c = ask(client, app_images["before"], None, "[CAP] Describe this image briefly.", seed=2, **kw)[0]
    assert a == b and a != c


def test_answer_streams_token_by_token(served, app_images):
    from gradio_client import handle_file
    client, _, _ = served
    job = client.submit(handle_file(app_images["before"]), None, "[CAP] Describe this image briefly.", False, False,
                        1.0, 0, 1.0, 1.0, 12, GRID, 0, api_name="/answer")
    final = job.result()
    updates = job.outputs()
    counts = [int(m.group(1)) for u in updates if (m := re.search(r"· (\d+) tokens", u[2] or ""))]
    assert counts[-1] == 12 and len(set(counts)) >= 6  # the token count rose while the text streamed
    assert counts == sorted(counts)
    assert updates[-1][0] == final[0]


def test_concurrent_requests_are_queued_and_share_programs(served, app_images):
    client, _, _ = served
    message = "[VQA] How many buildings are there in the image?"
    first = ask(client, app_images["before"], None, message)
    sizes = (stream._prefill._cache_size(), stream._step._cache_size())
    results = [None] * 3

    def run(i):
        results[i] = ask(client, app_images["before"], None, message)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r[0] == first[0] for r in results)
    assert (stream._prefill._cache_size(), stream._step._cache_size()) == sizes  # nothing recompiled
    # Equal pictures, each its own file: Gradio rewrites a shared cache file in place, which once
    # truncated a concurrent download (the picture carries a per-response PNG text chunk).
    from PIL import Image
    paths = [r[1] for r in results + [first]]
    assert len(set(paths)) == len(paths)
    pixels = [np.asarray(Image.open(p)) for p in paths]
    assert all((px == pixels[0]).all() for px in pixels)


def test_warm_up_compiles_before_the_first_request(served, app_images):
    client, engine, _ = served
    images = [Image.open(app_images["before"]).convert("RGB")]
    message = "[REF] what is [10, 20, 30, 40]?"
    settings = dataclasses.replace(engine.defaults(GRID), max_new_tokens=100)  # a cache size not used yet
    before = stream._step._cache_size()
    assert engine.warm_up([(images, message, settings)]) == 1
    compiled = stream._step._cache_size()
    assert compiled > before
    answer, _, info, _ = ask(client, app_images["before"], None, message, max_new_tokens=100)
    assert parse_info(info)[2] == 100 and stream._step._cache_size() == compiled


@pytest.mark.parametrize("case", ["corrupt", "huge", "no image", "ccd one image", "vg two images", "empty message",
                                  "placeholders", "bad setting", "bad seg label", "budget too small"])
def test_bad_inputs_give_a_message(served, app_images, case):
    client, _, _ = served
    one, two = app_images["before"], app_images["after"]
    args, want = {
        "corrupt": ((app_images["corrupt"], None, "[CAP] hi"), r"image 1 \(corrupt.png\): not a readable image"),
        "huge": ((one, app_images["huge"], "[SEG] x."), r"image 2 \(huge.png\): 10000x10000 pixels exceeds"),
        "no image": ((None, None, "[CAP] hi"), "no image"),
        "ccd one image": ((one, None, "[CCD] what changed?"), r"\[CCD\] compares two images"),
        "vg two images": ((one, two, "[VG] the car"), r"\[VG\] takes one image, got two"),
        "empty message": ((one, None, "   "), "the message is empty"),
        "placeholders": ((one, None, "<image> <image> [CAP] hi"), "2 <image> placeholders for 1 image"),
        "bad setting": ((one, None, "[CAP] hi", dict(top_p=0.0)), r"top-p must be in"),
        "bad seg label": ((one, None, "[SEG] a*b"), "mask label"),
        "budget too small": ((one, None, "[SEG] water.", dict(max_new_tokens=3)), "cannot hold a complete"),
    }[case]
    kw = args[3] if len(args) > 3 else {}
    answer, pic, info, notes = ask(client, *args[:3], **kw)
    assert answer == "" and pic is None and info == ""
    assert re.search(want, notes), notes
    assert "\n" not in notes and "/tmp" not in notes and "Traceback" not in notes


def test_nothing_contacted_outside_this_machine(served):
    assert CONNECTIONS  # the client did connect to the served page
    for entry in CONNECTIONS:
        host = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str) and host not in ("localhost", "") and not host.startswith("/"):
            assert ipaddress.ip_address(host).is_loopback, entry
