"""Understand a free-text answer to an ME question: which labels does it state?

Shared by evaluation (scoring model answers against references) and the serving gateway (turning
a model's answer into structured fields), so both read an answer the same way.

Rules, in order of trust:
1. The MEGC 2025 templated answer of the combined question is read exactly.
2. An explicit statement ("the fine-grained expression class is disgust", "Coarse: negative",
   "answer: 3") wins over loose mentions. Several statements that disagree make the answer
   ambiguous.
3. Otherwise every label mentioned counts, except mentions negated within their clause
   ("not happiness", "rather than surprise"). One distinct label is the answer; several distinct
   labels make it ambiguous.
An ambiguous answer, or one stating no recognisable label, has `parsed=False` and a `problem`
saying why: scorers count it wrong and list it, they never guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from mellm.labels import AU_BY_NAME, AU_NAMES, COARSE_OF_FINE, COARSE_SYNONYMS, EMOTION_SYNONYMS
from mellm.vqa import QType, Question, classify_question


@dataclass(frozen=True)
class ParsedAnswer:
    """The labels an answer states. Fields the answer does not state are None (aus: empty).

    side: "left" | "right" | "both" (the subject's side, as MEGC answers use it).
    event_type: "micro" | "macro" (ME-LVQA expression type).
    parsed: the answer stated what its question asks for (for the combined and analysis
    questions: at least one of AUs, fine, coarse). problem: why not, or which part is missing.
    """

    coarse: str | None = None
    fine: str | None = None
    aus: frozenset[int] = frozenset()
    yes_no: bool | None = None
    side: str | None = None
    count: int | None = None
    event_type: str | None = None
    parsed: bool = False
    problem: str | None = None


def parse_answer(question: Question | str, text: str) -> ParsedAnswer:
    """Parse `text` as an answer to `question` (a classified Question or the question's text)."""
    if isinstance(question, str):
        question = classify_question(question)
    return _parse(question, text)


# --- text normalisation and mention finding -------------------------------------------------

_DASHES = re.compile(r"[-\u2010-\u2015_]+")
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9']+")
_CLAUSE_END = re.compile(r"[.,;:!?()\n]")
_NEGATORS = frozenset({
    "not", "no", "nor", "neither", "never", "without", "than", "instead", "isn't", "aren't", "wasn't",
    "weren't", "doesn't", "don't", "didn't", "cannot", "can't", "unlikely", "excluding", "except",
})
_CLAUSE_WORDS = frozenset({"but", "however", "therefore", "thus", "so", "hence", "yet"})


def _normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return _SPACES.sub(" ", _DASHES.sub(" ", text)).strip()


def _negated(norm: str, start: int) -> bool:
    """Is the mention at `start` negated by one of the three words before it, in its clause?
    ("not positive but negative": "but" ends the negation's reach.)"""
    window = norm[max(0, start - 40):start]
    cut = max((m.end() for m in _CLAUSE_END.finditer(window)), default=0)
    words = _WORD.findall(window[cut:])
    for i in range(len(words) - 1, -1, -1):
        if words[i] in _CLAUSE_WORDS:
            words = words[i + 1:]
            break
    return any(w in _NEGATORS for w in words[-3:])


def _alternation(phrases) -> str:
    # Longest first, so "lip corner depressor" is never read as a shorter name.
    return "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))


_AU_NAME_RE = re.compile(rf"\b(?:{_alternation(AU_BY_NAME)})(?:e?s)?\b")
_AU_CODE_RE = re.compile(r"\b(?:au|action unit) ?([lr])?(\d{1,2})(?![\d])")
_AU_BARE_LIST = re.compile(
    r"^(?:aus? )?(?:au ?)?[lrb]?\d{1,2}[a-e]?(?: ?(?:,|\+|&|;|/|and) ?(?:au ?)?[lrb]?\d{1,2}[a-e]?)* ?\.?$"
)
_AU_BARE_TOKEN = re.compile(r"(\d{1,2})")
_NO_AUS = re.compile(r"^(?:none|no action units?|no aus?|there are no action units?)\b")

_FINE_WORDS = {k: v for k, v in EMOTION_SYNONYMS.items() if v != "others"}
_FINE_RE = re.compile(rf"\b(?:{_alternation(_FINE_WORDS)})\b")
_OTHERS_RE = re.compile(r"\bothers?\b")
_COARSE_RE = re.compile(rf"\b(?:{_alternation(COARSE_SYNONYMS)})\b")

_VALUE = r"(?:an? |the |likely |probably |most likely )?(?P<value>[a-z']+)"
_IS = r" ?(?:is|was|are|would be|appears to be|seems to be|:|=) ?"
_FINE_STATEMENT = re.compile(
    rf"\bfine(?: grained(?: expression| emotion| emotional)?(?: class| category| label| type)?"
    rf"| (?:expression |emotion )?(?:class|category|label|emotion)){_IS}{_VALUE}")
_COARSE_STATEMENT = re.compile(
    rf"\bcoarse(?: grained)?(?: expression| emotion| emotional)?(?: class| category| label| type)?{_IS}{_VALUE}")
# Statements that name no granularity: used when the question fixes it.
_GENERIC_STATEMENT = re.compile(
    rf"(?<!grained )(?<!coarse )(?<!fine )"
    rf"\b(?:emotion|expression class|expression category|emotion class|emotion category|final answer|answer)"
    rf"{_IS}{_VALUE}")

_YES_WORDS = frozenset({"yes", "yeah", "yep", "true", "correct"})
_NO_WORDS = frozenset({"no", "nope", "false", "incorrect", "none"})
_SHOWN = r"(?:shown|present|visible|activated|active|seen|observed|displayed|detected|evident|apparent)"
_NOT_SHOWN_RE = re.compile(rf"(?:\bnot|n't|\bnever) (?:\w+ )?{_SHOWN}\b|\b(?:absent|no sign|no evidence)\b")
_SHOWN_RE = re.compile(rf"\b{_SHOWN}\b")

_SIDE_RE = re.compile(r"\b(left|right|both sides?|bilateral(?:ly)?|symmetric(?:al|ally)?|both)\b")

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}
_NUMBER_RE = re.compile(rf"\b(\d+|{'|'.join(_NUMBER_WORDS)})\b")
_COUNT_STATEMENT = re.compile(
    rf"\b(?:there (?:is|are|were|was)|total of|count is|number is|answer is|answer:|in total) ?"
    rf"(?:a total of |only |exactly )?(\d+|{'|'.join(_NUMBER_WORDS)})\b")
_ZERO_RE = re.compile(r"^(?:none|zero|no)\b|\bno (?:\w+ ){0,2}(?:events?|expressions?)\b|\bnot any\b")
_EVENT_TYPE_RE = re.compile(r"\b(micro|macro) ?(?:expressions?|events?)?\b")


def _pick(values: list[str], what: str) -> tuple[str | None, str | None]:
    """One distinct value -> (value, None); several -> (None, "ambiguous ..."); none -> (None, None)."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) == 1:
        return distinct[0], None
    if len(distinct) > 1:
        return None, f"ambiguous {what}: {', '.join(distinct)}"
    return None, None


def _statements(pattern: re.Pattern, norm: str, vocab: dict[str, str]) -> tuple[list[str], list[tuple[int, int]]]:
    """Values of explicit statements that are in `vocab`, and the spans of those values."""
    values, spans = [], []
    for m in pattern.finditer(norm):
        value = m["value"]
        if value in vocab:
            values.append(vocab[value])
            spans.append(m.span("value"))
    return values, spans


def _mentions(pattern: re.Pattern, norm: str, vocab: dict[str, str], skip=()) -> list[str]:
    out = []
    for m in pattern.finditer(norm):
        if any(a <= m.start() < b for a, b in skip) or _negated(norm, m.start()):
            continue
        out.append(vocab[m.group(0)])
    return out


def _is_short(norm: str) -> bool:
    return len(_WORD.findall(norm)) <= 4


# --- one reader per label kind ---------------------------------------------------------------


def _fine(norm: str, skip=()) -> tuple[str | None, str | None, list[tuple[int, int]]]:
    """Fine class stated in `norm` (and the spans of the statements that state it). "other" is an
    everyday word, so it counts only in a statement or a short answer."""
    values, spans = _statements(_FINE_STATEMENT, norm, EMOTION_SYNONYMS)
    more, more_spans = _statements(_GENERIC_STATEMENT, norm, EMOTION_SYNONYMS)
    values, spans = values + more, spans + more_spans
    if values:
        value, problem = _pick(values, "fine class")
        return value, problem, spans
    mentions = _mentions(_FINE_RE, norm, _FINE_WORDS, skip)
    if not mentions and _is_short(norm):
        mentions = ["others" for m in _OTHERS_RE.finditer(norm) if not _negated(norm, m.start())]
    value, problem = _pick(mentions, "fine class")
    return value, problem, []


def _coarse(norm: str, generic: bool, skip=(), from_fine: bool = False) -> tuple[str | None, str | None]:
    """Coarse class stated in `norm`. from_fine: an answer naming only a fine emotion ("happy") to
    a coarse question means that emotion's coarse class."""
    values, _ = _statements(_COARSE_STATEMENT, norm, COARSE_SYNONYMS)
    if generic:
        values += _statements(_GENERIC_STATEMENT, norm, COARSE_SYNONYMS)[0]
    if values:
        return _pick(values, "coarse class")
    value, problem = _pick(_mentions(_COARSE_RE, norm, COARSE_SYNONYMS, skip), "coarse class")
    if value is None and problem is None and from_fine:
        fine, problem, _ = _fine(norm)
        if fine is not None:
            value = COARSE_OF_FINE.get(fine)
            problem = None if value else f"fine class {fine!r} has no coarse class"
    return value, problem


def _aus(norm: str, allow_bare: bool) -> tuple[frozenset[int], bool]:
    """AUs named (FACS names, aliases, plurals) or coded ("AU12", "R12"; bare "4, 7" only when the
    whole answer is such a list). Returns (aus, says_none)."""
    if allow_bare and _AU_BARE_LIST.match(norm):
        return frozenset(n for n in map(int, _AU_BARE_TOKEN.findall(norm)) if n in AU_NAMES), False
    found = set()
    for m in _AU_NAME_RE.finditer(norm):
        if _negated(norm, m.start()):
            continue
        key = m.group(0)
        found.add(AU_BY_NAME[key] if key in AU_BY_NAME else AU_BY_NAME.get(key[:-1]) or AU_BY_NAME[key[:-2]])
    for m in _AU_CODE_RE.finditer(norm):
        if int(m.group(2)) in AU_NAMES and not _negated(norm, m.start()):
            found.add(int(m.group(2)))
    return frozenset(found), not found and bool(_NO_AUS.match(norm))


def _yes_no(norm: str) -> tuple[bool | None, str | None]:
    words = _WORD.findall(norm)
    if not words:
        return None, "empty answer"
    if words[0] in _YES_WORDS:
        return True, None
    if words[0] in _NO_WORDS:
        return False, None
    negative = bool(_NOT_SHOWN_RE.search(norm))
    positive = any(not _negated(norm, m.start()) for m in _SHOWN_RE.finditer(norm))
    if negative != positive:
        return positive, None
    if negative:
        return None, "ambiguous yes/no: both stated"
    return None, "no yes/no stated"


def _side(norm: str) -> tuple[str | None, str | None]:
    sides = []
    for m in _SIDE_RE.finditer(norm):
        if _negated(norm, m.start()):
            continue
        word = m.group(1)
        sides.append(word if word in ("left", "right") else "both")
    if "both" in sides:  # "both left and right" / "left and right sides (bilateral)"
        return "both", None
    return _pick(sides, "side")


def _number(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBER_WORDS[word]


def _count(norm: str, kind: str | None) -> tuple[int | None, str | None]:
    """The number of events stated. Several numbers ("3 micro and 2 macro events") resolve only
    through the question's event kind or one explicit statement ("there are 3")."""
    values = [_number(w) for w in _NUMBER_RE.findall(norm)]
    if not values:
        return (0, None) if _ZERO_RE.search(norm) else (None, "no number stated")
    value, problem = _pick([str(v) for v in values], "count")
    if problem and kind in ("micro", "macro"):
        of_kind = re.findall(rf"\b(\d+|{'|'.join(_NUMBER_WORDS)}) (?:\w+ )?{kind} ?expression", norm)
        value, kind_problem = _pick([str(_number(w)) for w in of_kind], "count")
        problem = kind_problem or (None if value else problem)
    if problem and kind in (None, "all"):
        # "2 expression events. 1-th macro-expression: frames 557-608 ...": the interval list a
        # public peer writes after the count.
        of_all = re.findall(rf"\b(\d+|{'|'.join(_NUMBER_WORDS)}) (?:expression )?events?\b", norm)
        value, all_problem = _pick([str(_number(w)) for w in of_all], "count")
        problem = all_problem or (None if value else problem)
    if problem:
        stated = [str(_number(w)) for w in _COUNT_STATEMENT.findall(norm)]
        value, stated_problem = _pick(stated, "count")
        problem = stated_problem or (None if value else problem)
    return (int(value) if value is not None else None), problem


def _event_type(norm: str) -> tuple[str | None, str | None]:
    kinds = [m.group(1) for m in _EVENT_TYPE_RE.finditer(norm) if not _negated(norm, m.start())]
    return _pick(kinds, "expression type")


# --- per question type -----------------------------------------------------------------------

_TEMPLATE = re.compile(
    r"^the action units? present (?:is|are): (?P<aus>.+?)\. therefore, the fine grained expression class is "
    r"(?P<fine>[a-z]+), and the coarse expression class is (?P<coarse>[a-z]+)\.?$"
)


def _combined_template(norm: str) -> ParsedAnswer | None:
    m = _TEMPLATE.match(norm)
    if not m:
        return None
    names = [n.strip() for n in m["aus"].split(",")]
    if not all(n in AU_BY_NAME for n in names):
        return None  # not our exact template; the general reader decides
    fine = EMOTION_SYNONYMS.get(m["fine"])
    coarse = COARSE_SYNONYMS.get(m["coarse"])
    if fine is None or coarse is None:
        return None
    return ParsedAnswer(coarse=coarse, fine=fine, aus=frozenset(AU_BY_NAME[n] for n in names), parsed=True)


def _labels(norm: str, allow_bare: bool) -> ParsedAnswer:
    """Combined and analysis answers: AUs, fine and coarse, each wherever the answer states it."""
    aus, says_none = _aus(norm, allow_bare=allow_bare)
    # "surprise" is both a fine and a coarse class: a word that is the value of a coarse statement
    # is not also a fine mention, and the other way round. Each class must be stated on its own.
    coarse_spans = _statements(_COARSE_STATEMENT, norm, COARSE_SYNONYMS)[1]
    fine, fine_problem, fine_spans = _fine(norm, skip=coarse_spans)
    coarse, coarse_problem = _coarse(norm, generic=False, skip=fine_spans)
    missing = [name for name, v in (("AUs", aus or says_none), ("fine class", fine), ("coarse class", coarse)) if not v]
    problems = [p for p in (fine_problem, coarse_problem) if p]
    if missing:
        problems.append("no " + ", ".join(missing) + " stated")
    parsed = bool(aus or says_none or fine or coarse)
    return ParsedAnswer(coarse=coarse, fine=fine, aus=aus, parsed=parsed, problem="; ".join(problems) or None)


@lru_cache(maxsize=1 << 17)
def _parse(question: Question, text: str) -> ParsedAnswer:
    norm = _normalise(text or "")
    if not norm:
        return ParsedAnswer(problem="empty answer")
    t = question.type
    if t is QType.COARSE:
        value, problem = _coarse(norm, generic=True, from_fine=True)
        return ParsedAnswer(coarse=value, parsed=value is not None, problem=problem or _none(value, "coarse class"))
    if t is QType.FINE:
        value, problem, _ = _fine(norm)
        return ParsedAnswer(fine=value, parsed=value is not None, problem=problem or _none(value, "fine class"))
    if t in (QType.AU_LIST, QType.LV_AUS):
        aus, says_none = _aus(norm, allow_bare=True)
        ok = bool(aus) or says_none
        return ParsedAnswer(aus=aus, parsed=ok, problem=None if ok else "no action unit stated")
    if t is QType.AU_YESNO:
        value, problem = _yes_no(norm)
        return ParsedAnswer(yes_no=value, parsed=value is not None, problem=problem)
    if t is QType.AU_SIDE:
        value, problem = _side(norm)
        return ParsedAnswer(side=value, parsed=value is not None, problem=problem or _none(value, "side"))
    if t is QType.COMBINED:
        return _combined_template(norm) or _labels(norm, allow_bare=False)
    if t is QType.LV_COUNT:
        value, problem = _count(norm, question.event_kind)
        return ParsedAnswer(count=value, parsed=value is not None, problem=problem)
    if t is QType.LV_EVENT_TYPE:
        kind, problem = _event_type(norm)
        labels = _labels(norm, allow_bare=False)
        ok = kind is not None or labels.fine is not None or labels.coarse is not None
        return ParsedAnswer(event_type=kind, fine=labels.fine, coarse=labels.coarse, parsed=ok,
                            problem=problem or (None if ok else "no expression type stated"))
    # ANALYSIS and UNKNOWN: whatever labels the text states.
    return _labels(norm, allow_bare=False)


def _none(value, what: str) -> str | None:
    return None if value is not None else f"no {what} stated"


_SIDE_WORD = re.compile(r"\b(left|right|both sides?|bilateral(?:ly)?)\b")
_SIDE_STOP = re.compile(r"[.;,\n]")


def au_sides(text: str) -> dict[int, str]:
    """The side an answer gives each AU it states: {au: "L" | "R" | "both"}, the subject's side.

    A side is read from an L/R code prefix ("AU R12"), or from the first side word after the AU's
    mention and before the next AU mention or the end of its clause ("AU12 lip corner puller (left
    side)", "lip corner puller on the right"), or from the word just before it ("left lip corner
    puller"). Negated mentions state no side, as they state no AU (`parse_answer`). An AU whose
    side is not stated is left out."""
    norm = _normalise(text or "")
    mentions = []
    for m in _AU_NAME_RE.finditer(norm):
        key = m.group(0)
        au = AU_BY_NAME[key] if key in AU_BY_NAME else AU_BY_NAME.get(key[:-1]) or AU_BY_NAME[key[:-2]]
        mentions.append((m.start(), m.end(), au, None))
    for m in _AU_CODE_RE.finditer(norm):
        if int(m.group(2)) in AU_NAMES:
            mentions.append((m.start(), m.end(), int(m.group(2)), (m.group(1) or "").upper() or None))
    mentions.sort()
    sides: dict[int, str] = {}
    for i, (start, end, au, coded) in enumerate(mentions):
        if _negated(norm, start) or au in sides:
            continue
        if coded:
            sides[au] = coded
            continue
        nxt = mentions[i + 1][0] if i + 1 < len(mentions) else len(norm)
        after = norm[end:nxt]
        stop = _SIDE_STOP.search(after)
        m = _SIDE_WORD.search(after[: stop.start()] if stop else after)
        before = _WORD.findall(norm[max(0, start - 12):start])[-1:]
        word = m.group(1) if m else (before[0] if before and before[0] in ("left", "right") else None)
        if word:
            sides[au] = {"left": "L", "right": "R"}.get(word, "both")
    return sides


def claimed_aus(question: Question | str, text: str) -> dict[int, str | None]:
    """The AUs an answer claims to see, with the side it gives each (None: no side stated).

    AU-list, combined and analysis answers claim the AUs they state (`parse_answer`, so negated
    mentions claim nothing); "yes" to "Is AU12 shown?" claims AU12; "left" to "On which side is
    AU12?" claims AU12 on the left. The GRPO evidence reward, the gateway's `claims` and the GRPO
    benchmark all count claims with this function (support: `mellm.aus.claim_support`)."""
    q = classify_question(question) if isinstance(question, str) else question
    p = parse_answer(q, text)
    if q.type is QType.AU_YESNO:
        return {q.au: None} if p.yes_no and q.au else {}
    if q.type is QType.AU_SIDE:
        return {q.au: {"left": "L", "right": "R"}.get(p.side)} if p.side and q.au else {}
    sides = au_sides(text)
    return {au: sides.get(au) for au in sorted(p.aus)}
