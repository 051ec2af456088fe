"""`mellm ask`: send a clip and question(s) to the ME gateway and print the answer with the
evidence it rests on."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx

from mellm.errors import ClipNotFoundError, MellmError
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


def ask(clip: str, questions: list[str], endpoint: str, api_key: str | None = None, onset: int | None = None,
        apex: int | None = None, offset: int | None = None, model: str | None = None, remote: bool = False,
        timeout_s: float = 300.0) -> dict:
    """POST the clip to `endpoint`/v1/me/analyze. remote: `clip` is a path under the gateway's
    media root, not a local file to upload."""
    form: dict[str, str | list[str]] = {"question": list(questions)}
    for key, value in (("onset", onset), ("apex", apex), ("offset", offset), ("model", model)):
        if value is not None:
            form[key] = str(value)
    files = None
    if remote:
        form["path"] = clip
    else:
        path = Path(clip)
        if not path.exists():
            raise ClipNotFoundError(f"clip not found: {path} (use --remote for a path on the server)")
        files = {"file": (f"{path.name}.zip", zip_frames(path), "application/zip")} if path.is_dir() \
            else {"file": (path.name, path.read_bytes(), "application/octet-stream")}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = endpoint.rstrip("/") + "/v1/me/analyze"
    try:
        r = httpx.post(url, data=form, files=files, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise MellmError(f"cannot reach the gateway at {endpoint}: {type(e).__name__}: {e}") from None
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise MellmError(f"the gateway answered HTTP {r.status_code}: {detail}")
    return r.json()


def format_reply(reply: dict) -> str:
    ev = reply["evidence"]
    aus = ", ".join(f"AU{a['au']} {a['name']} ({a['side']}, {a['score']:.2f})" for a in ev["aus"]) or "none"
    lines = []
    for a in reply["answers"]:
        lines += [f"Q: {a['question']}", f"A: {a['answer']}"]
        p = a["parsed"]
        labels = {k: p[k] for k in ("coarse", "fine", "yes_no", "side") if p.get(k) is not None}
        if p.get("aus"):
            labels["aus"] = p["aus"]
        if labels:
            lines.append("   parsed: " + ", ".join(f"{k}={v}" for k, v in labels.items()))
        lines.append("")
    lines += [
        f"Evidence ({reply['clip']}): onset frame {ev['onset_frame']}, apex frame {ev['apex_frame']} ({ev['apex_source']}), "
        f"flow {ev['flow_method']}",
        f"  action units: {aus}",
        f"  {ev['description']}",
        "  timings (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in reply["timings_ms"].items()),
    ]
    return "\n".join(lines)
