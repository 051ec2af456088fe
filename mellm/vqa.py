"""ME-VQA question types: recognise a question's type and phrase questions and reference answers
the way the MEGC files do (2025 v1, 2026 v2 and ME-LVQA). Shared by data building, serving and
evaluation so that all three agree on what a question asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from mellm.errors import LabelError
from mellm.labels import AU_NAMES, AULabel, au_from_name, au_name, format_au_list


class QType(str, Enum):
    COARSE = "coarse"
    FINE = "fine"
    AU_LIST = "au_list"
    AU_YESNO = "au_yesno"
    AU_SIDE = "au_side"
    COMBINED = "combined"
    ANALYSIS = "analysis"  # MEGC 2026 open question
    LV_COUNT = "lv_count"  # ME-LVQA: how many (micro-/macro-) expression events
    LV_AUS = "lv_aus"  # ME-LVQA: distinct action units in a long video
    LV_EVENT_TYPE = "lv_event_type"  # ME-LVQA: expression type of the k-th event
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Question:
    """A classified question. `au` is set for yes/no and left/right questions, `event_kind`
    ("all" | "micro" | "macro") for counts, `k` (1-based) for the k-th event question."""

    type: QType
    au: int | None = None
    event_kind: str | None = None
    k: int | None = None


_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5,
    "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10, "last": -1,
}
# A question about one named AU. Anchored at the start of a sentence or clause so that the combined
# question ("What is the action unit present, and ...") never reads as one.
_AU_IN_QUESTION = re.compile(
    r"(?:^|[,.;:?!] )(?:is|are) (?:the )?(?:action units?|aus?) (?P<name>.+?) "
    r"(?:shown|present|located|visible|activated|active|observed|seen|displayed|found|on)\b"
)
# 2026 / free phrasings naming the AU after the verb or asking for its side.
_AU_IN_FREE_QUESTION = (
    re.compile(r"(?:^|[,.;:?!] )(?:is|are) (?:the )?(?P<name>au ?\d{1,2}) (?:shown|present|located|visible|activated|active|on)\b"),
    re.compile(r"\b(?:does|do|did) (?:the )?(?:face|subject|person|video|clip) (?:show|display|contain|exhibit|have) "
               r"(?:the )?(?:action unit|au) (?P<name>.+?)\??$"),
    re.compile(r"\bwhich side (?:of the face )?(?:is|does|do) (?:the )?(?:action unit|au) (?P<name>.+?)"
               r"(?: (?:located|shown|present|appear|occur)\w*)?(?: on)?\??$"),
)
_DASHED_ORDINAL = re.compile(r"\b(\d+)[-\u2010-\u2013 ](st|nd|rd|th)\b")
_MENTIONS_AU = re.compile(r"\baction units?\b|\baus?\b|\bau\d")
_EVENT_ORDINAL = re.compile(
    r"\b(?:type|kind) of (?:the )?(\w+) (?:expression |micro-expression |macro-expression |micro |macro )?event"
    r"|\bthe (\w+) (?:expression |micro-expression |macro-expression |micro |macro )?event\b"
)


def classify_question(text: str) -> Question:
    """Question text (any MEGC phrasing) -> Question. Unrecognised text gives QType.UNKNOWN."""
    q = " ".join(text.lower().replace("\u2019", "'").split())
    q = _DASHED_ORDINAL.sub(r"\1\2", q)  # ME-LVQA writes "5-th", "33-th", "1-th"
    au_question = _au_question(q)
    if au_question is not None:
        return au_question
    if "how many" in q and ("event" in q or "expression" in q) and "action unit" not in q:
        kind = "micro" if "micro" in q else "macro" if "macro" in q else "all"
        return Question(QType.LV_COUNT, event_kind=kind)
    if "distinct action unit" in q or ("action unit" in q and "in this video" in q and "appear" in q):
        return Question(QType.LV_AUS)
    if ("type" in q or "kind" in q) and "event" in q:
        m = _EVENT_ORDINAL.search(q)
        if m:
            try:
                return Question(QType.LV_EVENT_TYPE, k=_ordinal(m.group(1) or m.group(2)))
            except LabelError:
                return Question(QType.UNKNOWN)
    if ("analy" in q and ("detail" in q or "micro-expression" in q)) or (
        ("describe" in q or "explain" in q) and ("expression" in q or "face" in q or "video" in q)
    ):
        return Question(QType.ANALYSIS)
    mentions_au = bool(_MENTIONS_AU.search(q))
    mentions_fine = "fine-grained" in q or "fine grained" in q or "fine " in q
    mentions_coarse = "coarse" in q or ("positive" in q and "negative" in q)
    if mentions_au and (mentions_fine or mentions_coarse):
        return Question(QType.COMBINED)
    if mentions_au:
        return Question(QType.AU_LIST)
    if mentions_fine:
        return Question(QType.FINE)
    if mentions_coarse:
        return Question(QType.COARSE)
    if "emotion" in q:  # "What emotion is shown?" asks for the fine class
        return Question(QType.FINE)
    return Question(QType.UNKNOWN)


def _au_question(q: str) -> Question | None:
    """A yes/no or left/right question about one AU; None when q is not one. A question that has
    that shape but names no known AU is UNKNOWN rather than silently becoming an AU-list question."""
    m = _AU_IN_QUESTION.search(q)
    if not m:
        for pattern in _AU_IN_FREE_QUESTION:
            m = pattern.search(q)
            if m:
                break
    if not m:
        return None
    au = _au_in(m["name"])
    if au is None:
        return Question(QType.UNKNOWN)
    qtype = QType.AU_SIDE if ("left or right" in q or "which side" in q) else QType.AU_YESNO
    return Question(qtype, au=au)


def _au_in(name: str) -> int | None:
    """"lip corner puller", "AU12", "12", "lip corner puller (AU12)" -> 12."""
    name = name.strip(" ?.")
    try:
        return au_from_name(name)
    except LabelError:
        pass
    au = _au_from_code(name)
    if au is not None:
        return au
    m = re.fullmatch(r"(.+?)\s*\((.+)\)", name)  # a name with its code, or a code with its name
    if m:
        for part in (m.group(1), m.group(2)):
            try:
                return au_from_name(part)
            except LabelError:
                au = _au_from_code(part)
                if au is not None:
                    return au
    return None


def _au_from_code(text: str) -> int | None:
    m = re.fullmatch(r"(?:au|action unit)?\s*(\d{1,2})", text.strip())
    return int(m.group(1)) if m and int(m.group(1)) in AU_NAMES else None


def _ordinal(word: str) -> int:
    if word in _ORDINALS:
        return _ORDINALS[word]
    m = re.fullmatch(r"(\d+)(?:st|nd|rd|th)?", word)
    if not m:
        raise LabelError(f"unknown ordinal {word!r} in an event question")
    return int(m.group(1))


# --- phrasing, MEGC 2025 templates -----------------------------------------------------------

ANALYSIS_QUESTION = "Please analyse the micro-expression shown in this video in detail."


def question_text(qtype: QType, n_aus: int = 2, au: int | None = None) -> str:
    """The MEGC wording of a question. n_aus picks singular/plural for AU questions."""
    one = n_aus == 1
    if qtype is QType.COARSE:
        return "What is the coarse expression class?"
    if qtype is QType.FINE:
        return "What is the fine-grained expression class?"
    if qtype is QType.AU_LIST:
        return "What is the action unit?" if one else "What are the action units?"
    if qtype is QType.AU_YESNO:
        return f"Is the action unit {au_name(au)} shown on the face?"
    if qtype is QType.AU_SIDE:
        return f"Is the action unit {au_name(au)} located on the left or right face?"
    if qtype is QType.COMBINED:
        if one:
            return ("What is the action unit present, and based on it, what is the fine-grained "
                    "expression and the coarse expression class?")
        return ("What are the action units present, and based on them, what is the fine-grained "
                "expression and the coarse expression class?")
    if qtype is QType.ANALYSIS:
        return ANALYSIS_QUESTION
    raise ValueError(f"no fixed wording for {qtype}")


def combined_answer(aus: list[AULabel] | list[int], fine: str, coarse: str) -> str:
    """The templated answer of the combined question, exactly as in the MEGC training file."""
    names = format_au_list(aus)
    n = len({a.au if isinstance(a, AULabel) else a for a in aus})
    lead = f"The action unit present is: {names}." if n == 1 else f"The action units present are: {names}."
    return f"{lead} Therefore, the fine-grained expression class is {fine}, and the coarse expression class is {coarse}."


def side_answer(side: str) -> str:
    """Subject's side code ("L"/"R") -> the MEGC answer word."""
    return {"L": "left", "R": "right"}.get(side, "both")
