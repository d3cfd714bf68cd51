"""`rsunivlm-app` in a real browser: Debian's headless Chromium driven by Selenium loads the page, uploads an
image, picks [VG], submits and waits for the answer and the drawn picture; every request stays on
this machine; the examples fill in the inputs."""
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from rsunivlm_jax.app import handlers
from rsunivlm_jax.app.examples import EXAMPLES
from rsunivlm_jax.inference import constrained as C
from tests.app.conftest import free_port

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def app_url(app_checkpoint, tmp_path_factory):
    """The command itself, serving the tiny checkpoint."""
    port = free_port()
    log = tmp_path_factory.mktemp("app_cli") / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "rsunivlm_jax.app", "--checkpoint", str(app_checkpoint),
                                 "--port", str(port), "--grid-size", "4"], stdout=err, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"rsunivlm-app did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1700"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def requested_urls(driver) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.add(msg["params"]["request"]["url"])
    return urls


def value(driver, css):
    return driver.find_element(By.CSS_SELECTOR, css).get_attribute("value")


def test_vg_request_in_the_browser(app_url, browser, app_images, tmp_path):
    d = browser
    d.get(app_url)
    wait = WebDriverWait(d, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#submit"))
    assert value(d, "#message textarea") == handlers.template("cap")

    d.find_element(By.CSS_SELECTOR, "#image1 input[type=file]").send_keys(app_images["before"])
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image1 img"))

    d.find_element(By.CSS_SELECTOR, "#task input").click()
    option = wait.until(lambda d: [li for li in d.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li")
                                   if "[VG]" in li.text])
    option[0].click()
    wait.until(lambda d: value(d, "#message textarea") == handlers.template("vg"))

    d.find_element(By.CSS_SELECTOR, "#submit").click()
    WebDriverWait(d, 240).until(lambda d: "first token" in d.find_element(By.CSS_SELECTOR, "#info").text
                                and d.find_elements(By.CSS_SELECTOR, "#picture img"))
    answer = value(d, "#answer textarea")
    assert C.parse_boxes_strict(answer), answer  # constrained by default: a valid box
    info = d.find_element(By.CSS_SELECTOR, "#info").text
    assert "task vg · expert 1 (region-level)" in info and "constrained" in info
    assert value(d, "#notes textarea") == ""
    size = d.execute_script("const i = document.querySelector('#picture img');"
                            "return i.complete ? [i.naturalWidth, i.naturalHeight] : null;")
    assert size == [320, 256]  # the 80 x 64 upload, drawn at display size

    shot = tmp_path / "app_vg.png"
    assert d.save_screenshot(str(shot)) and os.path.getsize(shot) > 10_000

    outside = [u for u in requested_urls(d) if not u.startswith((app_url, "data:", "blob:"))]
    assert not outside  # no fonts, scripts or telemetry from elsewhere


def test_examples_fill_the_inputs(app_url, browser):
    d = browser
    d.get(app_url)
    wait = WebDriverWait(d, 60)
    rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "table tbody tr"))
    assert len(rows) == len(EXAMPLES)
    seg = [r for r in rows if "[SEG] " in r.text and "changed" not in r.text][0]
    message = seg.text.split("\n")[-1]
    seg.click()
    wait.until(lambda d: value(d, "#message textarea").startswith("[SEG] ")
               and d.find_elements(By.CSS_SELECTOR, "#image1 img"))
    assert value(d, "#message textarea") == message
