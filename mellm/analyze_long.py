"""Long-video perception (`mellm spot VIDEO --out DIR`): spot the events, then run the short-clip
perception (mellm.analyze, unchanged) on each event's onset -> apex, so each event gets the same
`Evidence` a short clip would.

Writes DIR/spots.json (`Spots`), DIR/curve.png (the motion score with the spotted and, when
known, the true intervals) and DIR/events/<k>/evidence.json (+ flow.png, description.txt). An
event whose perception fails keeps its interval and records the error in the spots notes: one
bad event never loses the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mellm.errors import ClipError
from mellm.spot import SpotSettings, spot_video
from mellm.spots import Spots

if TYPE_CHECKING:
    from mellm.analyze import Analysis


def analyze_long(video: str | Path, out: str | Path, settings: SpotSettings | None = None, fps: float | None = None,
                 evidence: bool = True, truth: Sequence[tuple[int, int, str]] = (), flow: str = "dis",
                 flow_checkpoint: str | None = None, progress: bool = False,
                 report: Callable[[str, int, int | None], None] | None = None,
                 on_event: Callable[[int, Analysis], None] | None = None) -> Spots:
    """Spot, per-event evidence, and the files above. `truth`: (onset, offset, type) to draw.
    `report(stage, done, total)`: "spotting" frames read of the declared total, then "evidence"
    events analysed of those spotted. `on_event(k, analysis)`: each event's short-clip analysis
    (1-based k), for what the saved files do not hold (the gateway's pictures)."""
    from mellm.analyze import PerceptionSettings, analyze_clip, save_analysis

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Made first: a bad flow setting or checkpoint fails before the long spotting pass.
    perception = PerceptionSettings(flow=flow, flow_checkpoint=flow_checkpoint) if evidence else None
    frames_read = (lambda n, total: report("spotting", n, total)) if report is not None else None
    spots = spot_video(video, settings, fps=fps, progress=progress, report=frames_read)
    if evidence:
        for k, e in enumerate(spots.events, start=1):
            if report is not None:
                report("evidence", k - 1, len(spots.events))
            folder = out / "events" / str(k)
            try:
                result = analyze_clip(video, onset=e.onset, offset=min(e.offset, spots.n_frames), fps=spots.fps,
                                      settings=perception)
            except ClipError as err:
                spots.notes.append(f"event {k} (frames {e.onset}-{e.offset}): no evidence: {err}")
                continue
            save_analysis(result, folder)
            if on_event is not None:
                on_event(k, result)
            ev = result.evidence
            spots.events[k - 1] = replace(e, apex=ev.apex_frame, aus=[a.au for a in ev.aus],
                                          evidence=str((folder / "evidence.json").relative_to(out)))
    spots.save(out / "spots.json")
    plot_curve(spots, out / "curve.png", truth)
    return spots


def plot_curve(spots: Spots, path: Path, truth: Sequence[tuple[int, int, str]] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3.2), dpi=100)
    if spots.curve:
        t = [(f - 1) / spots.fps for f in spots.curve["frames"]]
        score = [float("nan") if v is None else v for v in spots.curve["score"]]
        ax.plot(t, score, lw=0.8, color="black", label="motion score (z)")
    s = spots.settings
    for level, style in ((s.get("z_high"), "--"), (s.get("z_low"), ":")):
        if level:
            ax.axhline(level, color="grey", ls=style, lw=0.8)
    colours = {"micro": "tab:red", "macro": "tab:blue"}
    for e in spots.events:
        ax.axvspan((e.onset - 1) / spots.fps, (e.offset - 1) / spots.fps, color=colours[e.type], alpha=0.25)
    for onset, offset, kind in truth:
        ax.plot([(onset - 1) / spots.fps, (offset - 1) / spots.fps], [-1, -1], color=colours.get(kind, "green"), lw=4)
    for a, b in spots.face_gaps:
        ax.axvspan((a - 1) / spots.fps, (b - 1) / spots.fps, color="grey", alpha=0.3, hatch="//")
    ax.set_xlabel("seconds")
    ax.set_ylabel("z")
    ax.set_title(f"{Path(spots.video).name}: {len(spots.micro)} micro, {len(spots.macro)} macro spotted "
                 "(shaded; bars below: truth; hatched: no face)")
    ax.set_ylim(bottom=-2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
