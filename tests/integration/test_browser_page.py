"""The web page at / in a real headless Chromium: paste a thread, click, read the summary.

Needs Debian's `chromium` and `chromium-driver` (installed by `make browser` / scripts/install-browser.sh)
and the `selenium` package; skipped with the reason when any of them is missing.
"""
from __future__ import annotations

import os
import shutil
from email.message import EmailMessage

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("headless Chromium is not installed: run `make browser` "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install 'threadsum[dev]'")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from threadsum.config import ServeConfig  # noqa: E402
from threadsum.inference.summarizer import Summarizer  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir  # noqa: E402
from threadsum.serve.app import create_app, serve_in_thread  # noqa: E402

FLAGS = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no network: a CDN asset would fail
         "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--window-size=1200,900"]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    torch.set_num_threads(1)
    model_dir = build_tiny_model_dir(tmp_path_factory.mktemp("browser-model"))
    summarizer = Summarizer.from_pretrained(str(model_dir), device="cpu")
    with serve_in_thread(create_app(summarizer, ServeConfig(max_chars=5_000, api_key="page-key"))) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _summarize(browser, base_url, text: str, key: str = "page-key"):
    browser.get(base_url + "/")
    area = browser.find_element(By.ID, "thread")
    # send_keys types character by character; setting the value is what a paste does, and fast
    browser.execute_script("arguments[0].value = arguments[1];", area, text)
    key_field = browser.find_element(By.ID, "apikey")
    key_field.clear()
    key_field.send_keys(key)
    browser.find_element(By.ID, "summarize").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "result").is_displayed() or d.find_element(By.ID, "error").is_displayed()
    )


def test_paste_a_thread_and_read_the_summary(browser, base_url):
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Tana Jones <tana@example.com>", "Kay Mann <kay@example.com>", "Gas contract"
    m["Date"] = "Tue, 29 Jan 2002 11:23:42 -0600"
    m.set_content("Kay, can you send the revised gas contract draft by Friday? Legal wants the credit terms.")
    _summarize(browser, base_url, m.as_string())
    assert browser.find_element(By.ID, "result").is_displayed(), browser.find_element(By.ID, "error").text
    summary = browser.find_element(By.ID, "summary").text
    timing = browser.find_element(By.ID, "timing")
    assert summary.strip()
    assert timing.text.startswith("took ") and float(timing.get_attribute("data-seconds")) > 0
    assert "1 email" in timing.text


def test_upload_an_eml_file(browser, base_url, tmp_path):
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Vince <vince@example.com>", "Mark <mark@example.com>", "Storage report"
    m["Date"] = "Wed, 30 Jan 2002 09:00:00 -0600"
    m.set_content("Mark, the storage volume report is attached. Please confirm the numbers.")
    eml = tmp_path / "report.eml"
    eml.write_bytes(m.as_bytes())
    browser.get(base_url + "/")
    browser.find_element(By.ID, "file").send_keys(str(eml))
    WebDriverWait(browser, 10).until(lambda d: "Storage report" in d.find_element(By.ID, "thread").get_property("value"))
    assert "report.eml" in browser.find_element(By.ID, "status").text
    browser.find_element(By.ID, "apikey").send_keys("page-key")
    browser.find_element(By.ID, "summarize").click()
    WebDriverWait(browser, 60).until(EC.visibility_of_element_located((By.ID, "result")))
    assert browser.find_element(By.ID, "summary").text.strip()


def test_errors_are_shown_not_swallowed(browser, base_url):
    _summarize(browser, base_url, "word " * 2000)  # over serve.max_chars=5000
    error = WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, "error")))
    assert "422" in error.text and "serve.max_chars=5000" in error.text
    assert "summarize_batch" not in error.text
    _summarize(browser, base_url, "a short thread", key="wrong")
    error = WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, "error")))
    assert "401" in error.text


def test_result_box_has_no_leading_blank_lines(browser, base_url):
    _summarize(browser, base_url, "Bob, the storage report is late again. Can you chase legal?")
    assert browser.find_element(By.ID, "result").is_displayed()
    text = browser.execute_script("return document.getElementById('result').innerText;")
    assert text == text.lstrip() and not text.startswith("\n")


def test_upload_an_mbox_summarizes_each_thread(browser, base_url, tmp_path):
    parts = []
    for subject, body in (("Budget", "Numbers for Q3 are attached."), ("Party", "Friday at six in the lobby.")):
        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = "Ann <ann@example.com>", "Bob <bob@example.com>", subject
        m["Date"] = "Mon, 14 May 2001 09:12:00 -0000"
        m.set_content(body)
        parts.append("From ann@example.com Mon May 14 09:12:00 2001\n" + m.as_string() + "\n")
    mbox = tmp_path / "two.mbox"
    mbox.write_text("".join(parts))
    browser.get(base_url + "/")
    browser.find_element(By.ID, "file").send_keys(str(mbox))
    WebDriverWait(browser, 10).until(lambda d: "Party" in d.find_element(By.ID, "thread").get_property("value"))
    browser.find_element(By.ID, "apikey").send_keys("page-key")
    browser.find_element(By.ID, "summarize").click()
    WebDriverWait(browser, 60).until(EC.visibility_of_element_located((By.ID, "result")))
    headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#summary h2")]
    assert sorted(headings) == ["Budget", "Party"]
    assert "2 threads summarized" in browser.find_element(By.ID, "timing").text


def test_docs_work_offline(browser, base_url):
    browser.get(base_url + "/docs")
    ops = WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {o.text.replace("\u200b", "") for o in ops}
    assert {"/v1/summarize", "/v1/summarize/batch"} <= paths


class _InventingSummarizer(Summarizer):
    """The real Summarizer (cleaning, service, grounding check) around a model that invents people."""

    INVENTED = "Reagan Nemec asks Bob Jones to send the revised Q3 budget by Friday."

    def generate(self, texts, batch_size=None):
        return [self.INVENTED for _ in texts]


@pytest.fixture(scope="module")
def inventing_url(tmp_path_factory):
    model_dir = build_tiny_model_dir(tmp_path_factory.mktemp("inventing-model"))
    base = Summarizer.from_pretrained(str(model_dir), device="cpu")
    summarizer = _InventingSummarizer(base.model, base.tokenizer, base.cfg, base.device, name=base.name)
    with serve_in_thread(create_app(summarizer, ServeConfig())) as url:
        yield url


def test_unsupported_claims_are_highlighted_with_the_reason(browser, inventing_url, tmp_path):
    pasted = ("From: Ann Smith\nTo: Bob Jones\nSubject: Q3 budget\nBob, can you send the revised Q3 budget by Friday?\n"
              "From: Bob Jones\nTo: Ann Smith\nYes, I will send it Thursday after legal signs off.\n")
    _summarize(browser, inventing_url, pasted, key="")
    assert browser.find_element(By.ID, "result").is_displayed(), browser.find_element(By.ID, "error").text
    marks = browser.find_elements(By.CSS_SELECTOR, "#summary mark.unsupported")
    assert [m.text for m in marks] == ["Reagan Nemec"]
    assert "no one named Reagan Nemec" in marks[0].get_attribute("title")
    # supported names and values stay plain text
    assert "Bob Jones" not in " ".join(m.text for m in marks) and "Friday" not in " ".join(m.text for m in marks)
    assert browser.find_element(By.CSS_SELECTOR, "#summary p.summary-text").text.strip() == _InventingSummarizer.INVENTED
    # the mirror question: what the summary left out of the thread, listed apart from the summary's text
    assert browser.find_element(By.CSS_SELECTOR, "#summary .left-out-title").text.startswith("Left out of the summary")
    left_out = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#summary ul.left-out li")]
    assert "weekday: Thursday" in left_out  # Bob commits to Thursday; the summary only says Friday
    assert "claims not found in the thread" in browser.find_element(By.ID, "timing").text
    shot = tmp_path / "highlighted.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
