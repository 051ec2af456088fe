"""mellm.answers.parse_answer and mellm.vqa.classify_question on the real MEGC files and on the
answer styles models produce."""

import json
import random
import re

import pytest

from mellm.answers import parse_answer
from mellm.labels import AU_BY_NAME, AU_NAMES, FINE_EMOTIONS, au_from_name, format_au_list
from mellm.resources import megc_file
from mellm.vqa import QType, Question, classify_question, combined_answer, question_text

DATA = megc_file("me_vqa_samm_casme2_smic.jsonl").parent  # packaged (mellm.resources)
TRAIN = DATA / "me_vqa_samm_casme2_smic.jsonl"
MEGC_FILES = [TRAIN, DATA / "me_vqa_samm_test_to_answer.jsonl", DATA / "me_vqa_casme3_test_to_answer.jsonl"]

COARSE = Question(QType.COARSE)
FINE = Question(QType.FINE)
AU_LIST = Question(QType.AU_LIST)
COMBINED = Question(QType.COMBINED)
ANALYSIS = Question(QType.ANALYSIS)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("path", MEGC_FILES, ids=lambda p: p.name)
def test_every_real_question_has_a_known_type(path):
    seen = set()
    for row in rows(path):
        q = classify_question(row["question"])
        assert q.type is not QType.UNKNOWN, row["question"]
        if q.type in (QType.AU_YESNO, QType.AU_SIDE):
            name = re.search(r"action unit (.+?) (?:shown|located)", row["question"]).group(1)
            assert q.au == au_from_name(name)
        seen.add(q.type)
    assert {QType.COARSE, QType.FINE, QType.AU_LIST, QType.AU_YESNO, QType.AU_SIDE, QType.COMBINED} <= seen or \
        path != TRAIN


def test_real_training_answers_parse_to_the_labels_they_state():
    by_type = {}
    for row in rows(TRAIN):
        q = classify_question(row["question"])
        p = parse_answer(q, row["answer"])
        assert p.parsed and p.problem is None, (row["id"], row["answer"], p)
        by_type.setdefault(q.type, []).append((row["answer"], p))
    for answer, p in by_type[QType.COARSE]:
        assert p.coarse == answer
    for answer, p in by_type[QType.FINE]:
        assert p.fine == answer
    for answer, p in by_type[QType.AU_LIST]:
        assert p.aus == {au_from_name(n) for n in answer.split(", ")}
    for answer, p in by_type[QType.AU_YESNO]:
        assert p.yes_no == (answer == "yes")
    for answer, p in by_type[QType.AU_SIDE]:
        assert p.side == answer
    for answer, p in by_type[QType.COMBINED]:
        m = re.fullmatch(r"The action units? present (?:is|are): (.+)\. Therefore, the fine-grained expression class "
                         r"is (\w+), and the coarse expression class is (\w+)\.", answer)
        assert p.aus == {au_from_name(n) for n in m.group(1).split(", ")}
        assert (p.fine, p.coarse) == (m.group(2), m.group(3))


def test_templates_round_trip_for_every_au_and_class():
    rng = random.Random(7)
    for au, name in AU_NAMES.items():
        assert parse_answer(AU_LIST, name).aus == {au}
        for qtype in (QType.AU_YESNO, QType.AU_SIDE):
            assert classify_question(question_text(qtype, au=au)) == Question(qtype, au=au)
    for name, au in AU_BY_NAME.items():
        assert parse_answer(AU_LIST, name).aus == {au}, name
    for _ in range(500):
        aus = rng.sample(sorted(AU_NAMES), rng.randint(1, 6))
        fine = rng.choice(FINE_EMOTIONS)
        coarse = rng.choice(["negative", "positive", "surprise"])
        assert parse_answer(AU_LIST, format_au_list(aus)).aus == set(aus)
        p = parse_answer(COMBINED, combined_answer(aus, fine, coarse))
        assert (p.aus, p.fine, p.coarse, p.problem) == (set(aus), fine, coarse, None)
    for qtype in (QType.COARSE, QType.FINE, QType.AU_LIST, QType.COMBINED, QType.ANALYSIS):
        for n in (1, 2):
            assert classify_question(question_text(qtype, n)).type is qtype


@pytest.mark.parametrize("text, expected", [
    ("What is the coarse-grained expression class?", Question(QType.COARSE)),
    ("Is the emotion positive, negative or surprise?", Question(QType.COARSE)),
    ("What emotion does the subject show?", Question(QType.FINE)),
    ("Which AUs are activated?", Question(QType.AU_LIST)),
    ("Does the face show action unit AU12?", Question(QType.AU_YESNO, au=12)),
    ("Is AU 4 present?", Question(QType.AU_YESNO, au=4)),
    ("Based on the video, is the action unit chin raiser shown on the face?", Question(QType.AU_YESNO, au=17)),
    ("Which side of the face is the action unit dimpler located on?", Question(QType.AU_SIDE, au=14)),
    ("Is the action unit lip corner puller (AU12) shown on the face?", Question(QType.AU_YESNO, au=12)),
    ("Is the action unit lip biter shown on the face?", Question(QType.UNKNOWN)),  # unknown AU: not an AU list
    ("Please analyse the micro-expression shown in this video in detail.", Question(QType.ANALYSIS)),
    ("Describe the facial movements in this clip and the expression they show.", Question(QType.ANALYSIS)),
    ("How many expression events appear in this video?", Question(QType.LV_COUNT, event_kind="all")),
    ("How many micro-expression events appear in this video?", Question(QType.LV_COUNT, event_kind="micro")),
    ("How many macro-expressions appear in this video?", Question(QType.LV_COUNT, event_kind="macro")),
    ("What distinct action units appear in this video?", Question(QType.LV_AUS)),
    ("What is the expression type of the 3rd expression event in this video?", Question(QType.LV_EVENT_TYPE, k=3)),
    ("What is the expression type of the second event in this video?", Question(QType.LV_EVENT_TYPE, k=2)),
    ("What is the weather like?", Question(QType.UNKNOWN)),
])
def test_classify_more_phrasings(text, expected):
    assert classify_question(text) == expected


@pytest.mark.parametrize("question, text, field, value", [
    (COARSE, "Negative.", "coarse", "negative"),
    (COARSE, "  POSITIVE ", "coarse", "positive"),
    (COARSE, "surprised", "coarse", "surprise"),
    (COARSE, "happy", "coarse", "positive"),  # a fine emotion answers a coarse question through its class
    (COARSE, "The coarse expression class is negative.", "coarse", "negative"),
    (COARSE, "Not positive but negative.", "coarse", "negative"),
    (COARSE, "It is more negative than positive", "coarse", "negative"),
    (FINE, "Happy", "fine", "happiness"),
    (FINE, "disgusted!", "fine", "disgust"),
    (FINE, "Others", "fine", "others"),
    (FINE, "The emotion is most likely anger rather than contempt.", "fine", "anger"),
    (FINE, "The fine-grained expression class is fear, and the coarse expression class is negative.", "fine", "fear"),
    (AU_LIST, "brow lowerer, lid tightener", "aus", {4, 7}),
    (AU_LIST, "Brow Lowerer and Lid Tightener.", "aus", {4, 7}),
    (AU_LIST, "AU4 and AU7", "aus", {4, 7}),
    (AU_LIST, "4, 7", "aus", {4, 7}),
    (AU_LIST, "R12+L14", "aus", {12, 14}),
    (AU_LIST, "Lip corner pullers and the cheek raiser (AU6)", "aus", {6, 12}),
    (AU_LIST, "lip-corner puller, not dimpler", "aus", {12}),
    (AU_LIST, "nostril dilator", "aus", {38}),
    (Question(QType.AU_YESNO, au=4), "Yes", "yes_no", True),
    (Question(QType.AU_YESNO, au=4), "no.", "yes_no", False),
    (Question(QType.AU_YESNO, au=4), "The brow lowerer is not shown.", "yes_no", False),
    (Question(QType.AU_YESNO, au=4), "It is clearly visible.", "yes_no", True),
    (Question(QType.AU_YESNO, au=4), "The brow lowerer isn't present.", "yes_no", False),
    (Question(QType.AU_SIDE, au=14), "Left", "side", "left"),
    (Question(QType.AU_SIDE, au=14), "On the subject's right side, not the left.", "side", "right"),
    (Question(QType.AU_SIDE, au=14), "both sides", "side", "both"),
    (Question(QType.LV_COUNT, event_kind="all"), "3", "count", 3),
    (Question(QType.LV_COUNT, event_kind="all"), "There are three events.", "count", 3),
    (Question(QType.LV_COUNT, event_kind="micro"), "No micro-expression events appear.", "count", 0),
    (Question(QType.LV_COUNT, event_kind="macro"), "There are 3 micro-expression events and 2 macro-expression events.",
     "count", 2),
    (Question(QType.LV_COUNT, event_kind="micro"), "There are 3 micro-expression events and 2 macro-expression events.",
     "count", 3),
    (Question(QType.LV_EVENT_TYPE, k=2), "It is a micro-expression.", "event_type", "micro"),
    (Question(QType.LV_EVENT_TYPE, k=2), "A macro-expression, not a micro-expression.", "event_type", "macro"),
    (Question(QType.LV_AUS), "AU1, AU2 and AU12", "aus", {1, 2, 12}),
])
def test_parse_tolerates_case_synonyms_plurals_codes_and_negation(question, text, field, value):
    p = parse_answer(question, text)
    assert p.parsed, p
    assert getattr(p, field) == value


@pytest.mark.parametrize("question, text, problem", [
    (COARSE, "positive or negative", "ambiguous coarse class: positive, negative"),
    (COARSE, "I cannot tell from this clip.", "no coarse class stated"),
    (COARSE, "", "empty answer"),
    (FINE, "negative", "no fine class stated"),  # a coarse class is no fine class
    (FINE, "happiness or surprise", "ambiguous fine class: happiness, surprise"),
    (AU_LIST, "There are 2 of them.", "no action unit stated"),
    (Question(QType.AU_YESNO, au=4), "Maybe.", "no yes/no stated"),
    (Question(QType.AU_SIDE, au=14), "left and right", "ambiguous side: left, right"),
    (Question(QType.LV_COUNT, event_kind="all"), "3 or 4", "ambiguous count: 3, 4"),
])
def test_no_recognisable_label_is_unparsed_with_a_reason(question, text, problem):
    p = parse_answer(question, text)
    assert not p.parsed
    assert p.problem == problem


def test_question_may_be_given_as_text():
    assert parse_answer("What is the fine-grained expression class?", "sad").fine == "sadness"


def test_combined_free_form_and_missing_parts():
    p = parse_answer(COMBINED, "AUs: AU12, AU6. Fine: happiness. Coarse: positive")
    assert (p.aus, p.fine, p.coarse, p.problem) == ({6, 12}, "happiness", "positive", None)
    # "surprise" stated as the coarse class is not also a fine class
    p = parse_answer(COMBINED, "The action units present are: inner brow raiser. Coarse: surprise")
    assert (p.aus, p.fine, p.coarse) == ({1}, None, "surprise")
    assert p.parsed and p.problem == "no fine class stated"


def test_analysis_answer_yields_every_stated_label():
    text = ("The brows are lowered and drawn together (AU4) and the lids tighten (lid tightener). "
            "This suggests disgust rather than anger; the coarse class is negative.")
    p = parse_answer(ANALYSIS, text)
    assert (p.aus, p.fine, p.coarse, p.parsed) == ({4, 7}, "disgust", "negative", True)
