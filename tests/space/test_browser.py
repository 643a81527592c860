"""A real browser (headless Debian Chromium through Playwright): upload a clip, click Transcribe, see the
transcript and the entropy plot (screenshot saved as reports/space/space_browser.png); record from the
microphone (Chromium's fake capture device); pick an example clip."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.space.conftest import ARTIFACTS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # a synthetic microphone (a beep) and no permission prompt, for the recording test
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian chromium is not installed (apt-get install chromium; WITH_BROWSER=1 make system)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, space_server):
    context = browser.new_context(viewport={"width": 1280, "height": 1100}, permissions=["microphone"])
    page = context.new_page()
    page.outside_requests = []  # anything not served by the app itself
    local = (space_server.url, "blob:" + space_server.url.rstrip("/"), "data:")
    page.on("request", lambda r: None if r.url.startswith(local) else page.outside_requests.append(r.url))
    # not "networkidle": the live tab's session state keeps a heartbeat connection open while the page is open
    page.goto(space_server.url, wait_until="load")
    page.locator("#transcribe-button").wait_for(timeout=60_000)
    yield page
    context.close()


def uploaded_file(page) -> str:
    """Wait until the audio component holds a file on the server; return that file's server path."""
    link = page.locator("#audio-input a[data-testid=download-link]")
    link.wait_for(state="attached", timeout=60_000)
    return unquote(link.get_attribute("href").split("file=", 1)[1])


def transcribe_and_wait(page) -> str:
    page.locator("#transcribe-button").click()
    page.wait_for_function("() => document.querySelector('#processing input')?.value > 0", timeout=120_000)
    return page.locator("#transcript textarea").input_value()


def test_upload_click_see_transcript_timestamps_and_plot(page, space_server, clips):
    backend = space_server.backend
    # the controls start at the model's decoding options: hotwords heard in the clip act through the bias alone
    bias = float(page.locator("#hotword-bias input[type=number]").input_value())
    assert bias == backend.defaults.hotword_bonus
    assert not page.locator("#hotwords-in-prompt input[type=checkbox]").is_checked()
    assert page.locator("#hotwords-heard-only input[type=checkbox]").is_checked()
    reference = backend.recognizer(str(clips["nav"]), hotwords=["Zhang Wei"], return_timestamps="word")
    expected = reference["text"]
    page.locator("#audio-input input[type=file]").set_input_files(str(clips["nav"]))
    page.locator("#hotwords textarea, #hotwords input").first.fill("Zhang Wei")
    assert uploaded_file(page).endswith("nav.wav")
    assert transcribe_and_wait(page) == expected
    plot = page.locator("#entropy-plot img")
    plot.wait_for(state="visible", timeout=60_000)
    assert page.locator("#phonemes textarea").input_value() != ""
    box = plot.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100
    assert plot.evaluate("img => img.naturalWidth") > 300  # the image decoded, not a broken icon
    assert float(page.locator("#duration input").input_value()) > 1.0
    # the word timestamps table: one row per word the CTC head aligned, as the pipeline's chunks
    stamped = [c for c in reference["chunks"] if c["timestamp"][0] is not None]
    table = page.locator("#word-timestamps")
    page.wait_for_function(
        "w => document.querySelector('#word-timestamps')?.innerText.includes(w)", arg=stamped[-1]["text"]
    )
    shown = table.inner_text().split()
    for chunk in stamped:  # each word with its start and end, in order
        at = shown.index(chunk["text"])
        assert [float(x) for x in shown[at + 1 : at + 3]] == list(chunk["timestamp"])
        shown = shown[at + 3 :]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "space_browser.png"), full_page=True)
    assert page.outside_requests == [], f"the page fetched from outside the app: {page.outside_requests[:5]}"


def test_microphone_recording_transcribes(page, space_server):
    page.locator("#audio-input button[aria-label='Record audio']").click()
    page.locator("#audio-input button", has_text="Record").first.click()
    page.wait_for_timeout(2000)
    page.locator("#audio-input button", has_text="Stop").first.click()
    recorded = uploaded_file(page)
    expected = space_server.backend.recognizer(recorded)["text"]
    assert transcribe_and_wait(page) == expected
    assert 1.5 < float(page.locator("#duration input").input_value()) < 10
    assert page.outside_requests == []


def test_example_clip_fills_audio_and_hotwords(page, space_server, examples_dir):
    page.locator("text=call.wav").first.click()
    assert uploaded_file(page).endswith("call.wav")
    assert page.locator("#hotwords textarea, #hotwords input").first.input_value() == "John Smith"
    expected = space_server.backend.recognizer(str(examples_dir / "call.wav"), hotwords=["John Smith"])[
        "text"
    ]
    assert transcribe_and_wait(page) == expected


def record_until_chunks_flow(page, component: str, tries: int = 5) -> None:
    """Start a streaming recording and wait until its first chunk is uploaded; if none comes within 5 s, stop and
    record again. Gradio's streaming recorder loads its WAV encoder when the tab opens, and a Record click that
    lands before the encoder is ready starts a recording that never sends a chunk (it shows Stop, the page logs
    "is not a constructor"; about one run in three of this file on a loaded 2-core machine)."""
    uploads = []
    page.on("request", lambda r: uploads.append(r.url) if "/gradio_api/upload" in r.url else None)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    for _ in range(tries):
        page.locator(f"{component} button", has_text="Record").first.click()
        for _ in range(20):
            if uploads:
                return
            page.wait_for_timeout(250)
        page.locator(f"{component} button", has_text="Stop").first.click()
        page.wait_for_timeout(500)
    raise AssertionError(
        f"{component}: {tries} recordings sent no audio to the server; page errors: {errors}"
    )


def test_live_tab_streams_the_microphone_and_ends_with_a_final_transcript(page, space_server):
    """The live tab: while the (fake) microphone records, its chunks reach the backend's streaming session, which
    decodes every 0.64 s (each decode builds a prompt: the spy counts them); when the recording stops, the final
    transcript is shown."""
    before = len(space_server.spy.calls)
    page.get_by_role("tab", name="Live (microphone)").click()
    record_until_chunks_flow(page, "#live-audio")
    page.wait_for_timeout(4000)
    for _ in range(480):  # a loaded machine decodes more slowly: record until two decodes or 2 min more
        if len(space_server.spy.calls) - before >= 2:
            break
        page.wait_for_timeout(250)
    during = len(space_server.spy.calls) - before
    page.locator("#live-audio button", has_text="Stop").first.click()
    for _ in range(60):  # the stop event's final decode
        if len(space_server.spy.calls) > before + during:
            break
        page.wait_for_timeout(250)
    assert during >= 2, f"{during} decodes while recording"
    assert len(space_server.spy.calls) > before + during
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "space_live.png"), full_page=True)
    assert page.outside_requests == []
