"""ME-VQA question types: recognise a question's type and phrase questions and reference answers
the way the MEGC files do (2025 v1, 2026 v2 and ME-LVQA). Shared by data building, serving and
evaluation so that all three agree on what a question asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from mellm.errors import LabelError
from mellm.labels import AULabel, au_from_name, au_name, format_au_list


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
_AU_IN_QUESTION = re.compile(r"is the action unit (?P<name>.+?) (?:shown|present|located|visible)", re.I)


def classify_question(text: str) -> Question:
    """Question text (any MEGC phrasing) -> Question. Unrecognised text gives QType.UNKNOWN."""
    q = " ".join(text.lower().split())
    m = _AU_IN_QUESTION.search(q)
    if m:
        try:
            au = au_from_name(m["name"])
        except LabelError:
            au = _au_from_code(m["name"])
        if au is None:
            return Question(QType.UNKNOWN)
        qtype = QType.AU_SIDE if ("left or right" in q or "which side" in q) else QType.AU_YESNO
        return Question(qtype, au=au)
    if "how many" in q and "event" in q:
        kind = "micro" if "micro" in q else "macro" if "macro" in q else "all"
        return Question(QType.LV_COUNT, event_kind=kind)
    if "distinct action unit" in q or ("action unit" in q and "in this video" in q and "appear" in q):
        return Question(QType.LV_AUS)
    m = re.search(r"(?:expression )?type of the (\w+) (?:expression |micro-expression |macro-expression )?event", q)
    if m:
        return Question(QType.LV_EVENT_TYPE, k=_ordinal(m.group(1)))
    if "analy" in q and ("detail" in q or "micro-expression" in q):
        return Question(QType.ANALYSIS)
    mentions_au = "action unit" in q
    mentions_fine = "fine-grained" in q or "fine grained" in q or "fine " in q
    mentions_coarse = "coarse" in q
    if mentions_au and (mentions_fine or mentions_coarse):
        return Question(QType.COMBINED)
    if mentions_au:
        return Question(QType.AU_LIST)
    if mentions_fine:
        return Question(QType.FINE)
    if mentions_coarse:
        return Question(QType.COARSE)
    return Question(QType.UNKNOWN)


def _au_from_code(text: str) -> int | None:
    m = re.fullmatch(r"(?:au)?\s*(\d{1,2})", text.strip())
    return int(m.group(1)) if m else None


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
