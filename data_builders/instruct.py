"""MEU-Instruct samples: the questions asked about one clip and their reference answers.

Question types are MEGC ME-VQA's (coarse, fine, AU list, AU yes/no with sampled negatives, AU
left/right, combined) worded and answered as the MEGC files are (mellm.vqa), plus the MEGC 2026
open analysis question, whose answer is a reasoning chain grounded in the clip's measured motion:
significant regions -> action units (with sides) -> fine emotion -> coarse class. When the
measured AUs disagree with the labelled ones, the answer says what was observed and the sample
records the disagreement (`agreement`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mellm.data_builders.perceive import Perceived
from mellm.describe import motion_phrases
from mellm.evidence import Evidence
from mellm.labels import AU_NAMES, AULabel, format_au_list
from mellm.vqa import QType, classify_question, combined_answer, question_text, side_answer

# AUs seen in micro-expressions, from which "no" questions are drawn.
NEGATIVE_POOL = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26, 43)
ALL_TYPES = (QType.COARSE, QType.FINE, QType.AU_LIST, QType.AU_YESNO, QType.AU_SIDE, QType.COMBINED, QType.ANALYSIS)


@dataclass(frozen=True)
class SampleOptions:
    types: tuple[QType, ...] = ALL_TYPES
    negatives: int = 2  # "is AU X shown?" questions answered "no", per clip
    seed: int = 0


@dataclass
class Sample:
    id: str
    clip: Perceived
    qtype: QType
    question: str
    answer: str
    agreement: dict = field(default_factory=dict)


def agreement(labelled: list[AULabel], evidence: Evidence) -> dict:
    """How the measured AUs relate to the labelled ones."""
    lab = {a.au for a in labelled}
    seen = {a.au for a in evidence.aus}
    return {
        "labelled": sorted(lab), "measured": sorted(seen), "confirmed": sorted(lab & seen),
        "not_observed": sorted(lab - seen), "unlabelled_motion": sorted(seen - lab),
        "agree": bool(lab) and lab <= seen,
    }


def _au_list_phrase(aus: list[AULabel]) -> str:
    parts = [f"AU{a.au} {AU_NAMES[a.au]}" + ("" if a.side == "both" else f" ({side_answer(a.side)} side)") for a in aus]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _none_of(aus: list[int]) -> str:
    """"AU7" or "neither AU7 nor AU9": worded so that the answer parser reads them as negated."""
    names = [f"AU{a}" for a in aus]
    return names[0] if len(names) == 1 else "neither " + " nor ".join(names)


def _disagreement(agree: dict) -> str:
    """What the measured motion says about the labelled AUs, when it does not simply confirm them.
    Worded so that the answer's stated AUs stay the labelled ones (mellm.answers reads them)."""
    out = ""
    if agree["not_observed"] and agree["confirmed"]:
        out += " The measured motion confirms " + " and ".join(f"AU{a}" for a in agree["confirmed"]) + "."
    if agree["not_observed"]:
        missing = agree["not_observed"]
        out += (f" The measured motion does not clearly show {_none_of(missing)}." if len(missing) == 1
                else f" The measured motion clearly shows {_none_of(missing)}.")
    if agree["unlabelled_motion"]:
        extra = agree["unlabelled_motion"]
        out += (f" The annotation does not include {_none_of(extra)}, which the motion also suggests." if len(extra) == 1
                else f" The annotation includes {_none_of(extra)}, which the motion also suggests.")
    return out


def analysis_answer(p: Perceived) -> tuple[str, dict]:
    """The grounded reasoning chain for the open analysis question, and the agreement record."""
    rec, ev = p.record, p.evidence
    phrases, _ = motion_phrases(ev.regions, limit=5)
    steps = []
    if phrases:
        steps.append("Step 1 (motion): " + "; ".join(phrases) + ".")
    else:
        steps.append("Step 1 (motion): no facial region moves clearly between the onset and apex frames.")
    agree = agreement(rec.aus, ev)
    if rec.aus:
        line = f"Step 2 (action units): the action units are {_au_list_phrase(rec.aus)}."
        line += _disagreement(agree)
        steps.append(line)
    elif ev.aus:
        steps.append("Step 2 (action units): the motion suggests " + _au_list_phrase(
            [AULabel(a.au, a.side) for a in ev.aus]) + ".")
    else:
        steps.append("Step 2 (action units): no action unit can be identified with confidence.")
    if rec.fine and rec.coarse:
        steps.append(f"Step 3 (emotion): these movements indicate {rec.fine}, so the fine-grained expression class "
                     f"is {rec.fine} and the coarse expression class is {rec.coarse}.")
    elif rec.fine:
        steps.append(f"Step 3 (emotion): the fine-grained expression class is {rec.fine}.")
    elif rec.coarse:
        steps.append(f"Step 3 (emotion): the coarse expression class is {rec.coarse}.")
    return " ".join(steps), agree


def _generated(p: Perceived, opts: SampleOptions, rng: random.Random) -> list[tuple[QType, str, str]]:
    rec = p.record
    n = len(rec.aus)
    out = []
    if rec.coarse:
        out.append((QType.COARSE, question_text(QType.COARSE), rec.coarse))
    if rec.fine:
        out.append((QType.FINE, question_text(QType.FINE), rec.fine))
    if rec.aus:
        out.append((QType.AU_LIST, question_text(QType.AU_LIST, n), format_au_list(rec.aus)))
        for a in rec.aus:
            out.append((QType.AU_YESNO, question_text(QType.AU_YESNO, au=a.au), "yes"))
        absent = [au for au in NEGATIVE_POOL if au not in {a.au for a in rec.aus}]
        for au in rng.sample(absent, min(opts.negatives, len(absent))):
            out.append((QType.AU_YESNO, question_text(QType.AU_YESNO, au=au), "no"))
        for a in rec.aus:
            if a.side in ("L", "R"):
                out.append((QType.AU_SIDE, question_text(QType.AU_SIDE, au=a.au), side_answer(a.side)))
        if rec.fine and rec.coarse:
            out.append((QType.COMBINED, question_text(QType.COMBINED, n), combined_answer(rec.aus, rec.fine, rec.coarse)))
    return out


def samples_for_clip(p: Perceived, opts: SampleOptions) -> list[Sample]:
    """The clip's samples: its dataset's own questions when it has them (MEGC files), otherwise
    generated ones; plus the analysis question."""
    rng = random.Random(f"{opts.seed}:{p.record.key}")
    if p.record.qa:
        pairs = [(classify_question(q).type, q, a) for q, a in p.record.qa]
    else:
        pairs = _generated(p, opts, rng)
    samples = []
    counts: dict[QType, int] = {}
    for qtype, question, answer in pairs:
        if qtype not in opts.types:
            continue
        counts[qtype] = counts.get(qtype, 0) + 1
        samples.append(Sample(f"{p.record.key}_{qtype.value}_{counts[qtype]}", p, qtype, question, answer))
    if QType.ANALYSIS in opts.types and (p.record.coarse or p.record.fine or p.record.aus):
        text, agree = analysis_answer(p)
        samples.append(Sample(f"{p.record.key}_analysis_1", p, QType.ANALYSIS, question_text(QType.ANALYSIS), text, agree))
    agree = agreement(p.record.aus, p.evidence)
    for s in samples:
        s.agreement = s.agreement or agree
    return samples
