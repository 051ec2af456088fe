"""How far a running request has got, for `GET /v1/me/progress/{request_id}`.

A client that wants to show progress (the web page does, while a long video is spotted) names its
request with a `request_id` form field of its own choosing and polls the progress route while the
request runs. The gateway records the request's stage (perception, spotting, evidence, model); the
perception process, which cannot share memory with the gateway, writes its counts (frames read of
the declared total, events analysed) to a small JSON file in the request's temporary folder,
replaced atomically and at most a few times a second.

The progress route says nothing but stages and counts, needs the API key like every /v1/ route,
and forgets a request when it ends. A request id is 8-64 letters, digits, '-' or '_'.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
WRITE_EVERY_S = 0.25


class RequestIdError(ValueError):
    pass


@dataclass
class Run:
    stage: str
    counts_file: Path  # written by the perception process (file_reporter)
    started: float = field(default_factory=time.monotonic)

    def snapshot(self) -> dict:
        """{stage, done, total, elapsed_s}; while perception runs, its own stage and counts."""
        out = {"stage": self.stage, "done": None, "total": None}
        try:
            counts = json.loads(self.counts_file.read_text())
        except (OSError, ValueError):
            counts = None
        if isinstance(counts, dict) and self.stage in ("perception", "spotting"):
            out.update({k: counts.get(k) for k in ("stage", "done", "total")})
        out["elapsed_s"] = round(time.monotonic() - self.started, 1)
        return out


class ProgressBoard:
    """The runs of requests that gave a request id, while they run."""

    def __init__(self, max_runs: int = 1024):
        self.max_runs = max_runs
        self._runs: dict[str, Run] = {}

    def start(self, request_id: str | None, workdir: Path, stage: str) -> Run | None:
        """Register a run (None without an id). A malformed or running id is a RequestIdError."""
        if request_id is None:
            return None
        if not REQUEST_ID.fullmatch(request_id):
            raise RequestIdError("request_id must be 8-64 letters, digits, '-' or '_'")
        if request_id in self._runs:
            raise RequestIdError("request_id is already in use by a running request; choose a new one")
        if len(self._runs) >= self.max_runs:
            raise RequestIdError(f"too many requests with a request_id are running ({self.max_runs})")
        run = self._runs[request_id] = Run(stage, workdir / "progress.json")
        return run

    def end(self, request_id: str | None) -> None:
        self._runs.pop(request_id, None)

    def get(self, request_id: str) -> dict | None:
        run = self._runs.get(request_id)
        return None if run is None else run.snapshot()


def file_reporter(path: Path) -> Callable[[str, int, int | None], None]:
    """A `report(stage, done, total)` for the perception process: writes `path`, throttled, except
    that a new stage is always written."""
    last = {"t": 0.0, "stage": None}

    def report(stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if stage == last["stage"] and now - last["t"] < WRITE_EVERY_S:
            return
        last.update(t=now, stage=stage)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stage": stage, "done": done, "total": total}))
        os.replace(tmp, path)

    return report
