"""ME-LVQA from an event list: the questions of a long video and the model-free answerer.

One `Spots` record (the spotter's event list with each event's AU evidence) answers every LVQA
question of its video, so the answers agree with each other: the three counts add up, the AU set
is the union of the events' AUs, and the k-th event's type is that of the k-th listed event.
This answerer is the baseline a model must beat (`mellm eval lvqa-baseline`), and the same event
list is what the gateway shows the model for long videos.
"""

from __future__ import annotations

from mellm.labels import format_au_list
from mellm.spots import Spots
from mellm.vqa import QType, classify_question

COUNT_QUESTIONS = {
    "all": "How many expression events appear in this video?",
    "micro": "How many micro-expression events appear in this video?",
    "macro": "How many macro-expression events appear in this video?",
}
AUS_QUESTION = "What distinct action units appear in this video?"


def kth_question(k: int) -> str:
    return f"What is the expression type of the {k}-th expression event in this video?"


def lvqa_questions(ks: tuple[int, ...] = (1, 2)) -> list[tuple[str, str]]:
    """(kind, text) of the six MEGC 2026 LVQA questions: three counts, distinct AUs, two k-th types."""
    return [(k, t) for k, t in COUNT_QUESTIONS.items()] + [("aus", AUS_QUESTION)] + [(f"k={k}", kth_question(k)) for k in ks]


def is_lvqa(question: str) -> bool:
    return classify_question(question).type in (QType.LV_COUNT, QType.LV_AUS, QType.LV_EVENT_TYPE)


def answer_from_events(spots: Spots, question: str) -> str:
    """The answer the event list gives to one LVQA question (any MEGC phrasing). A k-th question
    past the last event is answered with the closest statement the list supports."""
    q = classify_question(question)
    if q.type is QType.LV_COUNT:
        kind = q.event_kind or "all"
        n = len(spots.events) if kind == "all" else len(spots.micro if kind == "micro" else spots.macro)
        return str(n)
    if q.type is QType.LV_AUS:
        aus = spots.distinct_aus()
        return format_au_list(aus) if aus else "none"
    if q.type is QType.LV_EVENT_TYPE:
        k = q.k if q.k is not None else 1
        events = spots.events
        if not events:
            return "No expression event was found."
        event = events[k - 1] if 1 <= k <= len(events) else events[-1] if k == -1 else None
        if event is None:
            # Fewer events were found than the question assumes: the prior that most listed events
            # are of the commoner type in this video is the best the list can say.
            common = "micro" if len(spots.micro) >= len(spots.macro) else "macro"
            return f"{common}-expression"
        return f"{event.type}-expression"
    if q.type is QType.ANALYSIS or q.type is QType.UNKNOWN:
        return spots.summary()
    raise ValueError(f"not an LVQA question: {question!r}")


def event_list_text(spots: Spots) -> str:
    """The grounded event list a model is shown for a long video (and the analysis answer that
    instruction data teaches): counts, then each event with frames, times, type and AUs."""
    micro, macro = len(spots.micro), len(spots.macro)
    aus = spots.distinct_aus()
    lines = [f"Spotted {len(spots.events)} expression events ({micro} micro, {macro} macro) in "
             f"{spots.n_frames} frames at {spots.fps:g} fps."]
    for k, e in enumerate(spots.events, start=1):
        t0, t1 = e.seconds(spots.fps)
        au_text = format_au_list(e.aus) if e.aus else "no clear action unit"
        lines.append(f"{k}-th {e.type}-expression: frames {e.onset}-{e.offset} (apex {e.apex}), {t0:.2f}s-{t1:.2f}s, "
                     f"{au_text}; confidence {e.confidence:.2f}.")
    lines.append(f"Distinct action units: {format_au_list(aus) if aus else 'none'}.")
    if spots.face_gaps:
        lines.append("Face not visible in frames " + ", ".join(f"{a}-{b}" for a, b in spots.face_gaps) + ".")
    return "\n".join(lines)
