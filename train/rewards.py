"""GRPO rewards: small pure functions of one answer and its clip's labels and measured motion.

Each reward reads the answer with the shared parser (mellm.answers), so training pays for exactly
what `mellm eval` and the gateway will read. A reward returns None where it does not apply (the
emotion reward on an AU question, ...); trl leaves such entries out of the weighted sum and out of
the reward's logged mean.

  format      1 if the answer states what its question type asks for, 0.5 if it states part of it
              (a combined answer missing its coarse class), 0 if the parser reads nothing.
  emotion     coarse and fine class correct: 1 / 0 (combined and analysis answers: the mean of the
              labelled parts). Class-balanced: a correct answer earns the inverse frequency of its
              class among the training rows (mean 1 over them), so rare classes are not ignored.
  au          AU questions: set F1 of the stated AUs against the labelled ones, mapped to [-1, 1]
              (2 F1 - 1). Where a label has a side (L/R), a stated AU with the right side is a
              full match, without a side half a match, with the wrong side none. Yes/no and
              left/right questions: +1 right, -1 wrong or unreadable.
  evidence    consistency with the clip's perception (its Evidence record). A claimed AU is
              supported when perception judged it present, on the claimed side where one is
              stated (`mellm.aus.claim_support`: the one definition of support, shared with the
              gateway's `claims[].supported` and the GRPO benchmark); strongly moving regions
              (>= strong_px) should be covered by some claimed AU's signature regions
              (mellm.aus.SIGNATURES). reward = supported share + explained share - 1, in [-1, 1];
              claiming nothing is +1 on a still face and -1 on a moving one.
  degenerate  0 for an ordinary answer; -1 for an empty one, one whose word 3-grams repeat
              (distinct share below 1 - max_repeat), or one longer than max_words.

`motion` is a clip's region motion as {"region|side": resultant px} (see `motion_of`); `present`
is {au: side} of the AUs its perception judged present (`mellm.aus.present_aus`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from mellm.answers import au_sides, claimed_aus, parse_answer
from mellm.aus import SIGNATURES, claim_support, present_aus
from mellm.regions import SIGNIFICANT_PX
from mellm.vqa import QType, Question, classify_question

AU_TYPES = (QType.AU_LIST, QType.COMBINED, QType.ANALYSIS)  # answers that state a set of AUs


@dataclass(frozen=True)
class RewardSettings:
    class_weights: Mapping[str, Mapping[str, float]] | None = None  # {"coarse": {...}, "fine": {...}}
    strong_px: float = 2 * SIGNIFICANT_PX
    max_words: int = 60  # longest ordinary answer; analysis answers get analysis_max_words
    analysis_max_words: int = 250
    max_repeat: float = 0.5  # largest share of repeated word 3-grams


def _q(question: str) -> Question:
    return classify_question(question)


def _text(completion) -> str:
    """A completion as trl passes it: plain text, or a conversational [{"role", "content"}] list
    whose content is a string or a list of text parts."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if p.get("type") == "text")
    return content or ""


# --- the five rewards, one answer at a time -------------------------------------------------


def format_reward(question: str, text: str) -> float:
    p = parse_answer(_q(question), text)
    if not p.parsed:
        return 0.0
    return 1.0 if p.problem is None else 0.5


def emotion_reward(question: str, text: str, coarse: str | None, fine: str | None,
                   settings: RewardSettings = RewardSettings()) -> float | None:
    q = _q(question)
    parts = {QType.COARSE: ("coarse",), QType.FINE: ("fine",), QType.COMBINED: ("coarse", "fine"),
             QType.ANALYSIS: ("coarse", "fine"), QType.LV_EVENT_TYPE: ("coarse", "fine")}.get(q.type)
    gold = {"coarse": coarse, "fine": fine}
    parts = [k for k in parts or () if gold[k]]
    if not parts:
        return None
    p = parse_answer(q, text)
    weights = settings.class_weights or {}
    earned = [weights.get(k, {}).get(gold[k], 1.0) if getattr(p, k) == gold[k] else 0.0 for k in parts]
    return sum(earned) / len(earned)


def au_f1(stated: frozenset[int], stated_sides: Mapping[int, str], labelled: list[int],
          labelled_sides: list[str] | None) -> float:
    """Soft set F1; a labelled L/R side makes a match worth 1 (side right), 0.5 (no side) or 0."""
    gold = dict(zip(labelled, labelled_sides or ["both"] * len(labelled)))
    if not stated and not gold:
        return 1.0
    matched = 0.0
    for au in stated & gold.keys():
        side = gold[au]
        if side not in ("L", "R"):
            matched += 1.0
        elif au not in stated_sides:
            matched += 0.5
        elif stated_sides[au] == side:
            matched += 1.0
    return 2 * matched / (len(stated) + len(gold))


def au_reward(question: str, text: str, answer: str, aus: list[int],
              au_sides_labelled: list[str] | None = None) -> float | None:
    """`answer` is the reference answer (yes/no and left/right questions are scored against it)."""
    q = _q(question)
    p = parse_answer(q, text)
    if q.type in (QType.AU_YESNO, QType.AU_SIDE):
        ref = parse_answer(q, answer)
        key = "yes_no" if q.type is QType.AU_YESNO else "side"
        if getattr(ref, key) is None:
            return None
        return 1.0 if getattr(p, key) == getattr(ref, key) else -1.0
    if q.type not in AU_TYPES or not aus:
        return None
    return 2 * au_f1(p.aus, au_sides(text), list(aus), au_sides_labelled) - 1


def _au_regions(au: int, side: str | None) -> list[str]:
    """The region keys an AU's signature moves (on the claimed side, where one is stated)."""
    keys = []
    for region, which, _angle, _weight in SIGNATURES.get(au, ()):
        if which == "C":
            keys.append(f"{region}|C")
        elif which == "same" and side in ("L", "R"):
            keys.append(f"{region}|{side}")
        else:
            keys += [f"{region}|L", f"{region}|R"]
    return keys


def evidence_reward(question: str, text: str, motion: Mapping[str, float], present: Mapping[int, str],
                    settings: RewardSettings = RewardSettings()) -> float | None:
    q = _q(question)
    if q.type not in (*AU_TYPES, QType.AU_YESNO, QType.AU_SIDE):
        return None
    claims = claimed_aus(question, text)
    if q.type in (QType.AU_YESNO, QType.AU_SIDE):  # one AU asked about: only its support counts
        if not claims:
            return None
        return 1.0 if all(claim_support(claims, present).values()) else -1.0
    strong = [k for k, px in motion.items() if px >= settings.strong_px]
    if not claims:
        return -1.0 if strong else 1.0
    support = claim_support(claims, present)
    covered = {k for au, side in claims.items() for k in _au_regions(au, side)}
    explained = sum(k in covered for k in strong) / len(strong) if strong else 1.0
    return sum(support.values()) / len(support) + explained - 1


def degenerate_reward(question: str, text: str, settings: RewardSettings = RewardSettings()) -> float:
    words = text.split()
    if not words:
        return -1.0
    limit = settings.analysis_max_words if _q(question).type is QType.ANALYSIS else settings.max_words
    if len(words) > limit:
        return -1.0
    grams = [tuple(w.lower() for w in words[i:i + 3]) for i in range(len(words) - 2)]
    if grams and len(set(grams)) / len(grams) < 1 - settings.max_repeat:
        return -1.0
    return 0.0


# --- the dataset columns each reward reads, and trl's batch interface -----------------------

# Reward name -> (columns it needs from the GRPO dataset, optional columns).
COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "format": (("question",), ()),
    "emotion": (("question", "coarse", "fine"), ()),
    "au": (("question", "answer", "aus"), ("au_sides",)),
    "evidence": (("question", "motion", "present_aus"), ()),
    "degenerate": (("question",), ()),
}
REWARD_NAMES = tuple(COLUMNS)


# Columns the GRPO dataset derives from DATA/evidence/<clip>.json (train/grpo.py), as JSON text.
DERIVED = ("motion", "present_aus")


@lru_cache(maxsize=4096)
def _motion(motion_json: str) -> dict[str, float]:
    return json.loads(motion_json)


@lru_cache(maxsize=4096)
def _present(present_json: str) -> dict[int, str]:
    return {int(au): side for au, side in json.loads(present_json).items()}


def derived_columns(evidence: dict) -> dict[str, str]:
    """An Evidence record (as a dict) -> the DERIVED columns' values for its clip's rows."""
    return {"motion": json.dumps(motion_of(evidence)),
            "present_aus": json.dumps({str(au): side for au, side in present_aus(evidence).items()})}


def motion_of(evidence: dict) -> dict[str, float]:
    """An Evidence record (as a dict) -> {"region|side": resultant px of its mean flow}."""
    out = {}
    for r in evidence["regions"]:
        dx, dy = r["vector"]
        out[f"{r['name']}|{r['side']}"] = round(float((dx * dx + dy * dy) ** 0.5), 4)
    return out


def batch_reward(name: str, settings: RewardSettings = RewardSettings()) -> Callable[..., list[float | None]]:
    """The reward `name` as trl calls it: (completions, **dataset columns) -> one value per completion.
    Its __name__ is `name`, which trl logs as rewards/<name>/mean."""
    if name not in COLUMNS:
        raise KeyError(name)

    def reward(completions, **cols) -> list[float | None]:
        texts = [_text(c) for c in completions]
        qs = cols["question"]
        if name == "format":
            return [format_reward(q, t) for q, t in zip(qs, texts)]
        if name == "emotion":
            return [emotion_reward(q, t, c, f, settings) for q, t, c, f in zip(qs, texts, cols["coarse"], cols["fine"])]
        if name == "au":
            sides = cols.get("au_sides") or [None] * len(texts)
            return [au_reward(q, t, a, list(aus), s) for q, t, a, aus, s in
                    zip(qs, texts, cols["answer"], cols["aus"], sides)]
        if name == "evidence":
            return [evidence_reward(q, t, _motion(m), _present(p), settings)
                    for q, t, m, p in zip(qs, texts, cols["motion"], cols["present_aus"])]
        return [degenerate_reward(q, t, settings) for q, t in zip(qs, texts)]

    reward.__name__ = name
    reward.__qualname__ = name
    return reward


def class_weights(coarse: list[str | None], fine: list[str | None]) -> dict[str, dict[str, float]]:
    """Inverse class frequencies, scaled so that their mean over the rows is 1 (per granularity)."""
    out = {}
    for key, labels in (("coarse", coarse), ("fine", fine)):
        seen = [x for x in labels if x]
        counts = {c: seen.count(c) for c in set(seen)}
        out[key] = {c: len(seen) / (len(counts) * n) for c, n in counts.items()}
    return out
