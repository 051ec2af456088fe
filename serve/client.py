"""`mellm ask`: send a clip and question(s) to the ME gateway and print the answer with the
evidence it rests on."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import httpx

from mellm.errors import ClipNotFoundError, MellmError
from mellm.serve.contract import AnalyzeOptions, AnalyzeReply, LongAnalyzeReply, ReplyError, error_message, read_reply
from mellm.video import list_frame_files


def zip_frames(folder: Path) -> bytes:
    files = list_frame_files(folder)
    if not files:
        raise MellmError(f"no frames in folder {folder}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # frames are compressed already
        for f in files:
            zf.write(f, f.name)
    return buf.getvalue()


def analyze_request(clip: str | Path, options: AnalyzeOptions, remote: bool = False) -> dict:
    """The one place a `/v1/me/analyze` request is built: keyword arguments for httpx's post
    (`data`, and `files` for an upload). remote: `clip` is a path under the gateway's media root;
    otherwise a local video is sent as it is and a frame folder as a zip of its frames."""
    form = options.form()
    if remote:
        return {"data": {**form, "path": str(clip)}}
    path = Path(clip)
    if not path.exists():
        raise ClipNotFoundError(f"clip not found: {path} (use --remote for a path on the server)")
    if path.is_dir():
        return {"data": form, "files": {"file": (f"{path.name}.zip", zip_frames(path), "application/zip")}}
    return {"data": form, "files": {"file": (path.name, path.read_bytes(), "application/octet-stream")}}



def _post_for_json(url: str, endpoint: str, **request):
    """POST and return the JSON body of a 200 reply; an unreachable gateway or a non-200 -> MellmError."""
    try:
        r = httpx.post(url, **request)
    except httpx.HTTPError as e:
        raise MellmError(f"cannot reach the gateway at {endpoint}: {type(e).__name__}: {e}") from None
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code != 200:
        raise MellmError(f"the gateway answered HTTP {r.status_code}: {error_message(body, r.text[:300])}")
    return body

def ask(clip: str, options: AnalyzeOptions, endpoint: str, api_key: str | None = None, remote: bool = False,
        timeout_s: float = 300.0) -> AnalyzeReply:
    """POST the clip to `endpoint`/v1/me/analyze and return the validated reply."""
    request = analyze_request(clip, options, remote)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = endpoint.rstrip("/") + "/v1/me/analyze"
    body = _post_for_json(url, endpoint, headers=headers, timeout=timeout_s, **request)
    try:
        return read_reply(body)
    except ReplyError as e:
        raise MellmError(f"{url}: {e}") from None


def format_reply(reply: AnalyzeReply) -> str:
    ev = reply.evidence
    aus = ", ".join(f"AU{a['au']} {a['name']} ({a['side']}, {a['score']:.2f})" for a in ev.aus) or "none"
    lines = []
    for a in reply.answers:
        lines += [f"Q: {a.question}", f"A: {a.answer}"]
        p = a.parsed
        labels = {k: getattr(p, k) for k in ("coarse", "fine", "yes_no", "side", "count", "event_type")
                  if getattr(p, k) is not None}
        if p.aus:
            labels["aus"] = p.aus
        if labels:
            lines.append("   parsed: " + ", ".join(f"{k}={v}" for k, v in labels.items()))
        lines.append("")
    for e in reply.errors:
        lines += [f"Q: {e.question}", f"   not answered (HTTP {e.status}): {e.message}", ""]
    lines += [
        f"Evidence ({reply.clip}): onset frame {ev.onset_frame}, apex frame {ev.apex_frame} ({ev.apex_source}), "
        f"flow {ev.flow_method}",
        f"  action units: {aus}",
        f"  {ev.description}",
        "  timings (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in reply.timings_ms.items()),
    ]
    return "\n".join(lines)


def ask_long(clip: str, questions: list[str], endpoint: str, api_key: str | None = None, remote: bool = False,
             model: str | None = None, timeout_s: float = 900.0, event_questions: Sequence[str] = (),
             fps: float | None = None) -> LongAnalyzeReply:
    """POST a long video to `endpoint`/v1/me/analyze_long (upload, or with `remote` a media path);
    `event_questions` are asked of each spotted event."""
    from pydantic import ValidationError

    data: dict = {"question": list(questions), "event_question": list(event_questions),  # multipart takes a dict
                  **({"model": model} if model else {}), **({"fps": str(fps)} if fps else {})}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = endpoint.rstrip("/") + "/v1/me/analyze_long"
    if remote:
        body = _post_for_json(url, endpoint, data={**data, "path": clip}, headers=headers, timeout=timeout_s)
    else:
        path = Path(clip)
        if not path.is_file():
            raise MellmError(f"{path}: no such video file (a long video is uploaded as a file)")
        with open(path, "rb") as f:
            body = _post_for_json(url, endpoint, data=data, files={"file": (path.name, f)}, headers=headers,
                                  timeout=timeout_s)
    try:
        return LongAnalyzeReply.model_validate(body)
    except ValidationError as e:
        raise MellmError(f"{url}: the reply does not follow the contract: {e}") from None
