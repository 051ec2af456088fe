"""The gateway's web page over real HTTP, with no model server behind: the page and its files are
served with their content types and caching headers, the shell is public but every data route needs
the key, the media listing stays under the media root, and what the page shows (views, AU claims)
is computed from real perception of a synthetic clip. The browser itself: tests/test_web_browser.py."""

from __future__ import annotations

import base64
import re

import cv2
import httpx
import numpy as np
import pytest

from mellm.analyze import PerceptionSettings
from mellm.serve.background import free_port, serve_in_thread
from mellm.serve.gateway import GatewayConfig, _claims, _perceive_views, create_app
from mellm.serve.long_video import thin_curve
from mellm.serve.progress import ProgressBoard, RequestIdError, file_reporter
from mellm.serve.web import CSP, load_assets
from mellm.synth import SynthConfig, generate_corpus

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    corpus = generate_corpus(root, n=1, seed=5, config=SynthConfig(n_frames=10, width=240, height=200, face_iod=56))
    (root / "videos").mkdir()
    (root / "videos" / "a.mp4").write_bytes(b"not decoded by a listing")
    (root / "videos" / "notes.txt").write_text("not a clip")
    (root / ".hidden").mkdir()
    outside = tmp_path_factory.mktemp("outside")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root, corpus


@pytest.fixture(scope="module")
def gateway(media):
    root, _ = media
    cfg = GatewayConfig(upstream=f"http://127.0.0.1:{free_port()}", model="m", api_key=KEY, media_root=root)
    with serve_in_thread(create_app(cfg)) as url:
        yield url


def test_the_page_and_its_files_have_content_types_and_caching(gateway):
    page = httpx.get(gateway + "/")
    assert page.status_code == 200  # public: the shell holds no data and no key
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["content-security-policy"] == CSP and "connect-src 'self'" in CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    links = re.findall(r'(?:src|href)="(ui/[\w.]+)\?v=(\w+)"', page.text)
    assert {p for p, _ in links} == {"ui/app.js", "ui/style.css"}
    assert "{{hash:" not in page.text
    # nothing on the page points anywhere but this gateway
    assert not re.search(r'(?:src|href|action)="(?:https?:)?//', page.text)
    types = {"ui/app.js": "text/javascript; charset=utf-8", "ui/style.css": "text/css; charset=utf-8"}
    for path, version in links:
        r = httpx.get(f"{gateway}/{path}?v={version}")
        assert r.status_code == 200 and r.headers["content-type"] == types[path]
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["etag"] == f'"{version}"'  # the link's version is the content hash
        again = httpx.get(f"{gateway}/{path}?v={version}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        stale = httpx.get(f"{gateway}/{path}?v=old")
        assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
    assert httpx.get(gateway + "/", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
    missing = httpx.get(gateway + "/ui/secret.py")
    assert missing.status_code == 404 and "no page asset" in missing.json()["error"]["message"]
    for sneaky in ("/ui/..%2Fgateway.py", "/ui/../gateway.py"):
        assert httpx.get(gateway + sneaky).status_code == 404


def test_the_page_assets_come_from_package_data():
    page, assets = load_assets()
    assert set(assets) == {"app.js", "style.css"}
    js = assets["app.js"].body.decode()
    assert "http://" not in js.replace("http://www.w3.org/2000/svg", "") and "https://" not in js
    assert "innerHTML" not in js  # answers and names go in as text, never as markup
    assert b"v1/me/analyze" in assets["app.js"].body


def test_data_routes_need_the_key(gateway):
    for path in ("/v1/me/info", "/v1/me/media"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
            r = httpx.get(gateway + path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.json()["error"]["type"] == "authentication_error"
    info = httpx.get(gateway + "/v1/me/info", headers=AUTH).json()
    assert info["model"] == "m" and info["media_root"] is True
    fixed = {q["qtype"]: q["text"] for q in info["questions"]["fixed"]}
    assert fixed["coarse"] == "What is the coarse expression class?"
    assert fixed["analysis"].startswith("Please analyse")
    templates = [q["template"] for q in info["questions"]["per_au"]]
    assert "Is the action unit {au} shown on the face?" in templates
    assert {"au": 4, "name": "brow lowerer"} in info["questions"]["aus"]
    long = [q["qtype"] for q in info["questions"]["long"]]
    assert long == ["all", "micro", "macro", "aus", "k=1", "k=2"] and info["questions"]["event"] == fixed["analysis"]


def test_the_media_listing_stays_under_the_media_root(gateway, media):
    root, corpus = media
    top = httpx.get(gateway + "/v1/me/media", headers=AUTH).json()
    names = {e["name"]: e["kind"] for e in top["entries"]}
    assert names["videos"] == "folder" and "escape" not in names and ".hidden" not in names
    clip = corpus[0].frames_dir
    parent, _, leaf = clip.rpartition("/")
    inside = httpx.get(gateway + "/v1/me/media", params={"folder": parent}, headers=AUTH).json()
    assert {"name": leaf, "path": clip, "kind": "frames"} in inside["entries"]
    videos = httpx.get(gateway + "/v1/me/media", params={"folder": "videos"}, headers=AUTH).json()
    assert videos["entries"] == [{"name": "a.mp4", "path": "videos/a.mp4", "kind": "video"}]
    for bad, status in (("../", 403), ("/etc", 403), ("escape", 403), ("nope", 404), ("videos/a.mp4", 400)):
        r = httpx.get(gateway + "/v1/me/media", params={"folder": bad}, headers=AUTH)
        assert r.status_code == status, (bad, r.text)
        assert str(root) not in r.text


def test_views_show_what_perception_saw(media):
    root, corpus = media
    c = corpus[0]
    cfg = GatewayConfig(upstream="", model="", perception=PerceptionSettings(flow="dis"))
    result, pngs, views = _perceive_views(root / c.frames_dir, c.onset_frame, c.apex_frame, None, cfg)
    assert len(pngs) == len(cfg.image_roles)
    size = views["crop_size"]
    assert set(views["images"]) == {"onset", "apex", "flow", "magnitude"}
    decoded = {}
    for role, url in views["images"].items():
        assert url.startswith("data:image/png;base64,")
        decoded[role] = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded["onset"].shape == (size, size) and decoded["apex"].shape == (size, size)
    assert decoded["flow"].shape[:2] == decoded["magnitude"].shape[:2] == (size + 40, size)  # map + legend strip
    assert not np.array_equal(decoded["flow"], decoded["magnitude"])
    assert len(views["regions"]) == len(result.evidence.regions) == 31
    assert {r["key"] for r in views["regions"]} == {f"{r.name}|{r.side}" for r in result.evidence.regions}
    assert all(0 < r["x"] < size and 0 < r["y"] < size and r["r"] >= 2 for r in views["regions"])
    # the apex was given, yet the page gets the motion curve; it peaks at the planted apex
    ev = result.evidence
    assert ev.apex_source == "given" and ev.motion_curve["frames"][0] == c.onset_frame + 1
    curve = ev.motion_curve
    assert curve["frames"][int(np.argmax(curve["magnitude"]))] == c.apex_frame


def test_claims_mark_each_named_au_as_supported_or_not():
    evidence = {"aus": [{"au": 4, "side": "both", "score": 0.9}],
                "au_scores": [{"au": 4, "side": "both", "score": 0.9}, {"au": 12, "side": "L", "score": 0.2}]}
    assert _claims({4: None, 12: None, 23: None}, evidence) == [
        {"au": 4, "name": "brow lowerer", "supported": True, "score": 0.9, "side": "both"},
        {"au": 12, "name": "lip corner puller", "supported": False, "score": 0.2, "side": "L"},
        {"au": 23, "name": "lip tightener", "supported": False, "score": None, "side": None},
    ]


def test_every_control_on_the_page_has_a_label():
    """Keyboard and screen-reader use: each input, select and textarea is named by a <label>
    (around it or pointing at it with `for`) or an aria-label; buttons say what they do."""
    from html.parser import HTMLParser

    class Controls(HTMLParser):
        def __init__(self):
            super().__init__()
            self.controls, self.label_for, self.open_labels, self.buttons = [], set(), 0, []
            self._button = None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "label":
                self.open_labels += 1
                if "for" in a:
                    self.label_for.add(a["for"])
            elif tag in ("input", "select", "textarea"):
                self.controls.append((a.get("id"), self.open_labels > 0 or "aria-label" in a))
            elif tag == "button":
                self._button = ""

        def handle_endtag(self, tag):
            if tag == "label":
                self.open_labels -= 1
            elif tag == "button":
                self.buttons.append(self._button.strip())
                self._button = None

        def handle_data(self, data):
            if self._button is not None:
                self._button += data

    page, _ = load_assets()
    p = Controls()
    p.feed(page.body.decode())
    assert len(p.controls) >= 10
    unlabelled = [cid for cid, wrapped in p.controls if not wrapped and cid not in p.label_for]
    assert not unlabelled, unlabelled
    assert p.buttons and all(p.buttons), p.buttons


def test_a_long_curve_is_thinned_keeping_each_stretchs_peak():
    curve = {"frames": list(range(1, 11)), "score": [0.1, 5.0, None, 0.2, None, None, 0.3, 9.0, 0.4, 0.5]}
    thin = thin_curve(curve, {"z_high": 12.0, "z_low": 3.0, "step": 4}, max_points=4)
    # 10 points into stretches of 3: [1-3] [4-6] [7-9] [10]; an all-None stretch stays a gap
    assert thin == {"frames": [1, 4, 7, 10], "score": [5.0, 0.2, 9.0, 0.5], "z_high": 12.0, "z_low": 3.0,
                    "frames_per_point": 12}
    assert thin_curve(curve, {"z_high": 1, "z_low": 0}, max_points=2000)["score"] == curve["score"]
    assert thin_curve({"frames": [1, 2], "score": [None, None]}, {}, max_points=1)["score"] == [None]


def test_progress_board_and_the_perception_processs_counts(tmp_path):
    board = ProgressBoard(max_runs=2)
    assert board.start(None, tmp_path, "perception") is None  # no id: not followed
    run = board.start("abcd-1234", tmp_path, "spotting")
    assert board.get("abcd-1234")["stage"] == "spotting" and board.get("abcd-1234")["done"] is None
    report = file_reporter(run.counts_file)
    report("spotting", 10, 300)
    report("spotting", 11, 300)  # within the throttle: not written
    assert {k: board.get("abcd-1234")[k] for k in ("stage", "done", "total")} == \
        {"stage": "spotting", "done": 10, "total": 300}
    report("evidence", 0, 3)  # a new stage is always written
    assert board.get("abcd-1234")["stage"] == "evidence"
    run.stage = "model"  # the gateway's own stage wins once perception is done
    assert board.get("abcd-1234")["stage"] == "model" and board.get("abcd-1234")["done"] is None
    for bad, why in (("short", "8-64"), ("bad id with spaces", "8-64"), ("abcd-1234", "already in use")):
        with pytest.raises(RequestIdError, match=why):
            board.start(bad, tmp_path, "perception")
    board.start("second-run", tmp_path, "perception")
    with pytest.raises(RequestIdError, match="too many"):
        board.start("third-run", tmp_path, "perception")
    board.end("abcd-1234")
    assert board.get("abcd-1234") is None


def test_a_named_request_can_be_followed_while_it_runs(gateway, media):
    """Perception of a real clip runs (the model server behind this gateway is down, so the request
    then fails with 503); meanwhile /v1/me/progress/{id} says where it is, and forgets it after."""
    import threading

    root, corpus = media
    assert httpx.get(gateway + "/v1/me/progress/abcdefgh12").status_code == 401
    missing = httpx.get(gateway + "/v1/me/progress/abcdefgh12", headers=AUTH)
    assert missing.status_code == 404 and "no running request" in missing.json()["error"]["message"]
    bad = httpx.post(gateway + "/v1/me/analyze", headers=AUTH, data={"path": corpus[0].frames_dir, "request_id": "x"})
    assert bad.status_code == 422 and "request_id must be 8-64" in bad.json()["error"]["message"]
    done: dict = {}
    post = threading.Thread(target=lambda: done.setdefault("r", httpx.post(
        gateway + "/v1/me/analyze", headers=AUTH, data={"path": corpus[0].frames_dir, "request_id": "follow-me-1"},
        timeout=120)))
    post.start()
    seen = set()
    while post.is_alive():
        r = httpx.get(gateway + "/v1/me/progress/follow-me-1", headers=AUTH)
        if r.status_code == 200:
            seen.add(r.json()["stage"])
    post.join()
    assert done["r"].status_code == 503  # no model server: after perception
    assert "perception" in seen, seen
    assert httpx.get(gateway + "/v1/me/progress/follow-me-1", headers=AUTH).status_code == 404
