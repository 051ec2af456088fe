"""GRPO rewards (train/rewards.py) against values computed by hand, adversarial answers included."""

from __future__ import annotations

import json

import pytest

from mellm.answers import au_sides
from mellm.train import rewards as R
from mellm.vqa import QType, question_text

COARSE = question_text(QType.COARSE)
FINE = question_text(QType.FINE)
AUS = question_text(QType.AU_LIST, 2)
COMBINED = question_text(QType.COMBINED, 2)
ANALYSIS = question_text(QType.ANALYSIS)
YESNO_12 = question_text(QType.AU_YESNO, au=12)
SIDE_12 = question_text(QType.AU_SIDE, au=12)


def test_au_sides_reads_codes_words_and_skips_negated():
    assert au_sides("AU12 lip corner puller (left side) and AU4 brow lowerer") == {12: "L"}
    assert au_sides("AU R12, AU L14") == {12: "R", 14: "L"}
    assert au_sides("left lip corner puller, brow lowerer on both sides") == {12: "L", 4: "both"}
    assert au_sides("not AU12 (left side), AU4 (right side)") == {4: "R"}


def test_format_uses_the_shared_parser():
    assert R.format_reward(COARSE, "negative") == 1.0
    assert R.format_reward(COARSE, "banana") == 0.0
    assert R.format_reward(COARSE, "negative or positive") == 0.0  # ambiguous: parser reads nothing
    full = ("The action units present are: brow lowerer, lid tightener. Therefore, the fine-grained "
            "expression class is disgust, and the coarse expression class is negative.")
    assert R.format_reward(COMBINED, full) == 1.0
    assert R.format_reward(COMBINED, "brow lowerer and lid tightener; disgust") == 0.5  # no coarse class stated
    assert R.format_reward(AUS, "") == 0.0


def test_emotion_plain_and_class_balanced():
    assert R.emotion_reward(COARSE, "negative", "negative", "disgust") == 1.0
    assert R.emotion_reward(COARSE, "not negative, positive", "negative", "disgust") == 0.0
    assert R.emotion_reward(FINE, "disgust", "negative", "disgust") == 1.0
    assert R.emotion_reward(AUS, "brow lowerer", "negative", "disgust") is None
    # combined: coarse right, fine wrong -> (1 + 0) / 2
    text = "The brows lower. The fine-grained expression class is anger and the coarse expression class is negative."
    assert R.emotion_reward(ANALYSIS, text, "negative", "disgust") == 0.5
    # 4 rows: negative x3, positive x1 -> weights 4/(2*3) and 4/(2*1)
    w = R.class_weights(["negative"] * 3 + ["positive"], ["disgust"] * 3 + ["happiness"])
    assert w["coarse"] == pytest.approx({"negative": 2 / 3, "positive": 2.0})
    s = R.RewardSettings(class_weights=w)
    assert R.emotion_reward(COARSE, "positive", "positive", "happiness", s) == pytest.approx(2.0)
    assert R.emotion_reward(COARSE, "negative", "negative", "disgust", s) == pytest.approx(2 / 3)
    assert R.emotion_reward(COARSE, "negative", "positive", "happiness", s) == 0.0


def test_au_f1_sides_duplicates_and_negation():
    # labelled {4, 7}; stated {4, 12}: F1 = 2*1/(2+2) = 0.5 -> 0.0
    assert R.au_reward(AUS, "brow lowerer, lip corner puller", "", [4, 7]) == pytest.approx(0.0)
    # listed twice counts once: {4, 7} vs {4, 7} -> 1
    assert R.au_reward(AUS, "brow lowerer, brow lowerer, AU4, lid tightener", "", [4, 7]) == pytest.approx(1.0)
    # a negated AU is not claimed: {4} vs {4, 7}: F1 = 2/3 -> 1/3
    assert R.au_reward(AUS, "brow lowerer, not lid tightener", "", [4, 7]) == pytest.approx(1 / 3)
    # labelled AU12 on the left, AU4 both: right side -> 1 match, wrong side -> 0, no side -> 0.5
    assert R.au_reward(AUS, "AU12 (left side), AU4", "", [12, 4], ["L", "both"]) == pytest.approx(1.0)
    assert R.au_reward(AUS, "AU12 (right side), AU4", "", [12, 4], ["L", "both"]) == pytest.approx(2 * 0.5 - 1)
    assert R.au_reward(AUS, "AU12, AU4", "", [12, 4], ["L", "both"]) == pytest.approx(2 * 0.75 - 1)
    # no side labels at all: sides ignored
    assert R.au_reward(AUS, "AU12 (right side), AU4", "", [12, 4]) == pytest.approx(1.0)
    assert R.au_reward(AUS, "banana", "", [4, 7]) == pytest.approx(-1.0)
    assert R.au_reward(COARSE, "negative", "negative", [4]) is None


def test_au_yes_no_and_side_questions():
    assert R.au_reward(YESNO_12, "yes", "yes", [12]) == 1.0
    assert R.au_reward(YESNO_12, "no, it is not shown", "yes", [12]) == -1.0
    assert R.au_reward(YESNO_12, "maybe", "no", [4]) == -1.0
    assert R.au_reward(SIDE_12, "left", "left", [12]) == 1.0
    assert R.au_reward(SIDE_12, "right", "left", [12]) == -1.0


# Measured motion: brows (AU4's inner brow) and the left mouth corner move; the rest is still.
MOTION = {"inner brow|L": 0.9, "inner brow|R": 0.8, "outer brow|L": 0.1, "outer brow|R": 0.1,
          "mouth corner|L": 0.3, "mouth corner|R": 0.05, "chin|C": 0.0, "cheek|L": 0.1, "cheek|R": 0.1}


def test_evidence_consistency():
    # AU4 claimed: its primary region (inner brow) moves; the strong regions (both inner brows,
    # >= 0.5 px) are covered -> 1 + 1 - 1 = 1
    assert R.evidence_reward(AUS, "brow lowerer", MOTION) == pytest.approx(1.0)
    # AU4 + AU17 (chin is still): supported 1/2, explained 1 -> 0.5
    assert R.evidence_reward(AUS, "brow lowerer, chin raiser", MOTION) == pytest.approx(0.5)
    # AU12 only: supported (left mouth corner 0.3 >= 0.25) but the brows are left unexplained -> 1 + 0 - 1
    assert R.evidence_reward(AUS, "lip corner puller", MOTION) == pytest.approx(0.0)
    # AU12 on the right side, where the corner is still: unsupported, brows unexplained -> -1
    assert R.evidence_reward(AUS, "AU12 (right side)", MOTION) == pytest.approx(-1.0)
    # claimed twice counts once; AU23 has no signature -> unsupported: {4: yes, 23: no} -> 0.5
    assert R.evidence_reward(AUS, "brow lowerer, brow lowerer, lip tightener", MOTION) == pytest.approx(0.5)
    # negated claims are no claims: nothing claimed on a moving face -> -1, on a still face -> +1
    assert R.evidence_reward(AUS, "not brow lowerer", MOTION) == -1.0
    assert R.evidence_reward(AUS, "none", {"chin|C": 0.1}) == 1.0
    # yes/no: "yes" to AU17 with a still chin -> -1; "yes" to AU12 -> +1; "no" claims nothing
    assert R.evidence_reward(question_text(QType.AU_YESNO, au=17), "yes", MOTION) == -1.0
    assert R.evidence_reward(YESNO_12, "yes", MOTION) == 1.0
    assert R.evidence_reward(YESNO_12, "no", MOTION) is None
    assert R.evidence_reward(SIDE_12, "right", MOTION) == -1.0
    assert R.evidence_reward(COARSE, "negative", MOTION) is None


def test_degenerate_guard():
    assert R.degenerate_reward(COARSE, "negative") == 0.0
    assert R.degenerate_reward(COARSE, "   ") == -1.0
    assert R.degenerate_reward(COARSE, " ".join(["negative"] * 10)) == -1.0  # 8 3-grams, 1 distinct
    assert R.degenerate_reward(COARSE, "word " * 61) == -1.0
    long = " ".join(f"w{i}" for i in range(100))
    assert R.degenerate_reward(COARSE, long) == -1.0
    assert R.degenerate_reward(ANALYSIS, long) == 0.0


def test_batch_rewards_take_trl_completions_and_carry_their_names():
    fn = R.batch_reward("au")
    assert fn.__name__ == "au"
    completions = [[{"role": "assistant", "content": "brow lowerer"}], [{"role": "assistant", "content": "none"}]]
    out = fn(completions=completions, question=[AUS, AUS], answer=["", ""], aus=[[4], [4]], au_sides=[["both"]] * 2,
             prompts=None, trainer_state=None)
    assert out == pytest.approx([1.0, -1.0])
    ev = R.batch_reward("evidence")(completions=["brow lowerer"], question=[AUS], motion=[json.dumps(MOTION)])
    assert ev == pytest.approx([1.0])
    with pytest.raises(KeyError):
        R.batch_reward("style")


def test_motion_of_evidence_regions():
    ev = {"regions": [{"name": "chin", "side": "C", "vector": [0.3, -0.4]}]}
    assert R.motion_of(ev) == {"chin|C": 0.5}
