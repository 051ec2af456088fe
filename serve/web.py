"""The gateway's web page: a researcher picks a clip and sees what perception and the model saw.

GET /                 the page (static HTML; public: it holds no data and no key)
GET /ui/NAME          its script and style sheet (public, package data in serve/web/)
GET /v1/me/info       what the page offers: model, limits, question types, AUs (API key)
GET /v1/me/media      clips under the media root, one folder at a time (API key)

The page itself calls only these, POST /v1/me/analyze and /v1/me/analyze_long, and
/v1/me/progress/{id} while a request runs, on the gateway's own origin, with the
key the researcher types in, sent as `Authorization: Bearer` on every data request (a browser page
cannot be handed the key any other way without putting it in the HTML or a cookie, and a cookie
would be sent by any page that links here). So the static shell is public and every byte of data
needs the key. A Content-Security-Policy keeps the page's requests on this origin.

Caching: the page is `no-cache` (revalidated with its ETag, so a new release shows at once); its
assets are linked with their content hash (`?v=HASH`) and cached for a year as immutable; an asset
asked for with another hash is `no-cache`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response

from mellm.labels import AU_NAMES
from mellm.lvqa import lvqa_questions
from mellm.serve.clips import ClipRequestError, resolve_media_path
from mellm.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from mellm.vqa import ANALYSIS_QUESTION, QType, question_text

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Images arrive as data: URLs inside the analyze reply; everything else comes from this origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
MAX_LISTED = 500  # entries per folder in a media listing
_HASHED = re.compile(r"\{\{hash:([\w.-]+)\}\}")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # quoted, as the header carries it

    @property
    def version(self) -> str:
        return self.etag.strip('"')


def _asset(name: str, body: bytes) -> Asset:
    return Asset(body, CONTENT_TYPES[Path(name).suffix], '"' + hashlib.sha256(body).hexdigest()[:16] + '"')


def load_assets() -> tuple[Asset, dict[str, Asset]]:
    """(the page, its assets by name), read from the package data. The page's `{{hash:NAME}}`
    placeholders become the assets' content hashes."""
    folder = resources.files("mellm.serve") / "web"
    assets = {f.name: _asset(f.name, f.read_bytes()) for f in folder.iterdir()
              if f.is_file() and f.name != "index.html" and Path(f.name).suffix in CONTENT_TYPES}
    html = (folder / "index.html").read_text(encoding="utf-8")

    def version(m: re.Match) -> str:
        if m.group(1) not in assets:
            raise RuntimeError(f"serve/web/index.html links {m.group(1)!r}, which is not in serve/web/")
        return assets[m.group(1)].version

    return _asset("index.html", _HASHED.sub(version, html).encode("utf-8")), assets


def _send(request: Request, asset: Asset, cache: str) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": cache, **SECURITY_HEADERS}
    if asset.etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


def views_of(result) -> dict:
    """What a person looks at in one analysis (contract.Views, as a dict): the onset and apex face
    crops, the flow colour map and magnitude overlay (with their legends) as PNG data URLs, and the
    regions' disks on the crop."""
    import base64

    from mellm.analyze import png_bytes

    pictures = {"onset": result.onset_crop, "apex": result.apex_crop, "flow": result.flow_image(),
                "magnitude": result.magnitude_image()}
    return {"crop_size": int(result.onset_crop.shape[0]), "regions": result.region_shapes(),
            "images": {role: "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
                       for role, image in pictures.items()}}


def questions_offered() -> dict:
    """The ME-VQA questions the page offers, worded as the MEGC files word them."""
    fixed = [QType.COARSE, QType.FINE, QType.AU_LIST, QType.COMBINED, QType.ANALYSIS]
    return {"fixed": [{"qtype": q.value, "text": question_text(q)} for q in fixed],
            "per_au": [{"qtype": q.value, "template": question_text(q, au=1).replace(AU_NAMES[1], "{au}")}
                       for q in (QType.AU_YESNO, QType.AU_SIDE)],
            "aus": [{"au": au, "name": name} for au, name in AU_NAMES.items()],
            "long": [{"qtype": kind, "text": text} for kind, text in lvqa_questions()],
            "event": ANALYSIS_QUESTION}


def _is_clip_folder(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
    except OSError:
        return False


def list_media(media_root: Path | None, folder: str) -> dict:
    """One folder under the media root: clips (videos, folders of frames) and folders to open."""
    try:
        here = media_root.resolve() if media_root is not None and folder in ("", ".") else \
            resolve_media_path(media_root, folder)
    except ClipRequestError as e:
        raise HTTPException(e.status, str(e)) from None
    if not here.is_dir():
        raise HTTPException(400, f"{folder!r} is not a folder under the media root")
    root = media_root.resolve()
    entries = []
    for p in sorted(here.iterdir(), key=lambda p: p.name):
        if p.name.startswith(".") or not p.resolve().is_relative_to(root):
            continue  # hidden files, and links that leave the media root
        if p.is_dir():
            kind = "frames" if _is_clip_folder(p) else "folder"
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            kind = "video"
        else:
            continue
        entries.append({"name": p.name, "path": p.relative_to(root).as_posix(), "kind": kind})
        if len(entries) == MAX_LISTED:
            break
    rel = "" if here == root else here.relative_to(root).as_posix()
    return {"folder": rel, "entries": entries, "truncated": len(entries) == MAX_LISTED}


def add_web_routes(app: FastAPI, cfg, check_key: Callable[[Request], None]) -> None:
    """Mount the page, its assets and the two data routes it needs on the gateway `app`."""
    page, assets = load_assets()

    @app.get("/", include_in_schema=False)
    async def index(request: Request):
        return _send(request, page, "no-cache")

    @app.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str, request: Request, v: str | None = None):
        if name not in assets:
            raise HTTPException(404, f"no page asset {name!r}")
        a = assets[name]
        return _send(request, a, "public, max-age=31536000, immutable" if v == a.version else "no-cache")

    @app.get("/v1/me/info")
    async def info(request: Request):
        check_key(request)
        return {"model": cfg.model, "media_root": cfg.media_root is not None, "max_upload_mb": cfg.max_upload_mb,
                "request_timeout_s": cfg.request_timeout_s, "video_suffixes": list(VIDEO_SUFFIXES),
                "questions": questions_offered()}

    @app.get("/v1/me/media")
    async def media(request: Request, folder: str = ""):
        check_key(request)
        return list_media(cfg.media_root, folder)
