"""The deterministic natural-language motion description (the text an LLM reads).

Same evidence in, same words out: the description is part of training prompts and of served
prompts, so any change here changes what a tuned model sees.
"""

from __future__ import annotations

import numpy as np

from mellm.aus import AUEvidence
from mellm.regions import RegionStat

SIDE_WORD = {"L": "left", "R": "right", "both": "both sides"}
MOTION_WORD = {
    "up": "rises", "down": "moves down", "outward": "moves outward", "inward": "moves inward",
    "up-outward": "moves up and outward", "up-inward": "moves up and inward",
    "down-outward": "moves down and outward", "down-inward": "moves down and inward",
    "left": "moves to the left", "right": "moves to the right", "up-left": "moves up and to the left",
    "up-right": "moves up and to the right", "down-left": "moves down and to the left",
    "down-right": "moves down and to the right", "mixed": "moves without a clear dominant direction",
}
MOTION_WORD_PLURAL = {k: v.replace("moves", "move").replace("rises", "rise") for k, v in MOTION_WORD.items()}
EYELID_PARTS = ("inner", "middle", "outer")
MAX_PHRASES = 8


def _adverb(px: float) -> str:
    return " slightly" if px < 0.6 else (" markedly" if px >= 1.2 else "")


def _merge_eyelids(stats: list[RegionStat], skip: set[str] | frozenset = frozenset()) -> list[tuple[str, str, float, str]]:
    """(name, side, px, octant) entries; the three thirds of an eyelid become one entry."""
    entries, lids = [], {}
    for s in stats:
        if not s.significant or s.key in skip:
            continue
        if "eyelid" in s.name:
            base = s.name.rsplit(" ", 1)[0]
            lids.setdefault((base, s.side), []).append(s)
        else:
            entries.append((s.name, s.side, s.resultant_px, s.octant))
    for (base, side), parts in lids.items():
        strongest = max(parts, key=lambda p: p.resultant_px)
        entries.append((base, side, float(np.mean([p.resultant_px for p in parts])), strongest.octant))
    return entries


def _pair(entries: list[tuple[str, str, float, str]]) -> list[tuple[str, str, float, str]]:
    """Left and right of the same region moving the same way become one "both" entry."""
    by = {(n, s): (px, o) for n, s, px, o in entries}
    out, done = [], set()
    for n, s, px, o in entries:
        if (n, s) in done:
            continue
        other = {"L": "R", "R": "L"}.get(s)
        if other and (n, other) in by and by[(n, other)][1] == o:
            px2 = by[(n, other)][0]
            out.append((n, "both", (px + px2) / 2, o))
            done |= {(n, "L"), (n, "R")}
        else:
            out.append((n, s, px, o))
            done.add((n, s))
    return sorted(out, key=lambda e: -e[2])


# How a region is named in a sentence: (one side, both sides). "{side}" is "left"/"right".
NAMES = {
    "inner brow": ("the inner end of the {side} brow", "the inner ends of both brows"),
    "outer brow": ("the outer end of the {side} brow", "the outer ends of both brows"),
    "upper eyelid": ("the {side} upper eyelid", "both upper eyelids"),
    "lower eyelid": ("the {side} lower eyelid", "both lower eyelids"),
    "nose side": ("the {side} side of the nose", "both sides of the nose"),
    "nostril wing": ("the {side} nostril wing", "both nostril wings"),
    "cheek": ("the {side} cheek", "both cheeks"),
    "mouth corner": ("the {side} mouth corner", "both mouth corners"),
    "upper lip": ("the {side} part of the upper lip", "both sides of the upper lip"),
    "lower lip": ("the {side} part of the lower lip", "both sides of the lower lip"),
}
MIDLINE_NAMES = {"upper lip": "the centre of the upper lip", "lower lip": "the centre of the lower lip", "chin": "the chin"}


def _subject(name: str, side: str) -> str:
    if side == "C":
        return MIDLINE_NAMES[name]
    one, both = NAMES[name]
    return both if side == "both" else one.format(side=SIDE_WORD[side])


def motion_phrases(stats: list[RegionStat], limit: int = MAX_PHRASES,
                   skip: set[str] | frozenset = frozenset()) -> tuple[list[str], int]:
    """("the inner ends of both brows rise slightly (0.9 px, up)", ...) strongest first, and how
    many weaker moving regions were left out. Regions in `skip` (a blinking eye's lids) are not described."""
    entries = _pair(_merge_eyelids(stats, skip))
    phrases = []
    for name, side, px, octant in entries[:limit]:
        verb = (MOTION_WORD_PLURAL if side == "both" else MOTION_WORD)[octant]
        phrases.append(f"{_subject(name, side)} {verb}{_adverb(px)} ({px:.1f} px, {octant})")
    return phrases, max(0, len(entries) - limit)


def au_phrase(au: AUEvidence) -> str:
    return f"AU{au.au} {au.name} ({SIDE_WORD[au.side]}, {au.score:.2f})"


def describe(stats: list[RegionStat], aus: list[AUEvidence], onset: int, apex: int,
             fps: float | None, head_px: float, skip: set[str] | frozenset = frozenset(),
             blink_sides: list[str] = (), floor_px: float | None = None) -> str:
    """`skip`: region keys left out (a blinking eye's lids, named by `blink_sides`); `floor_px`:
    the clip's noise floor when AUs were held to it (then a clip without AUs says it shows no ME)."""
    span = f"from onset frame {onset} to apex frame {apex}"
    if fps:
        span += f" ({1000 * (apex - onset) / fps:.0f} ms)"
    phrases, left_out = motion_phrases(stats, skip=skip)
    sentences = []
    if phrases:
        sentences.append(f"Facial motion {span}: " + "; ".join(phrases) + ".")
        sentences.append(f"{left_out} weaker regions also move." if left_out else "Other regions show no significant motion.")
    else:
        sentences.append(f"No significant facial motion {span}.")
    if head_px >= 0.3:
        sentences.append(f"Head motion of {head_px:.1f} px was removed first.")
    if blink_sides:
        eyes = "both eyes" if len(blink_sides) == 2 else f"the {SIDE_WORD[blink_sides[0]]} eye"
        sentences.append(f"A blink of {eyes} falls between these frames; the eyelid motion is left out.")
    if aus:
        sentences.append("Action units suggested by the motion: " + ", ".join(au_phrase(a) for a in aus) + ".")
    elif floor_px is None:
        sentences.append("No action unit reaches the detection threshold.")
    else:
        sentences.append(f"No action unit reaches the detection threshold (motion must exceed {floor_px:.2f} px, "
                         "set by this clip's own noise): no micro-expression is evident.")
    return " ".join(sentences)
