"""GRPO rewards (train/rewards.py) against values computed by hand, adversarial answers included."""

from __future__ import annotations

import functools
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
# What perception made of it: AU4 on both sides, AU12 on the left (score >= 0.5).
PRESENT = {4: "both", 12: "L"}
EVIDENCE = {"aus": [{"au": 4, "side": "both", "score": 0.9}, {"au": 12, "side": "L", "score": 0.6}],
            "au_scores": [{"au": 4, "side": "both", "score": 0.9}, {"au": 12, "side": "L", "score": 0.6},
                          {"au": 15, "side": "L", "score": 0.1}]}


def test_evidence_consistency():
    ev = functools.partial(R.evidence_reward, motion=MOTION, present=PRESENT)
    # AU4 claimed: perception found it; the strong regions (both inner brows, >= 0.5 px) are
    # covered by its signature -> 1 + 1 - 1 = 1
    assert ev(AUS, "brow lowerer") == pytest.approx(1.0)
    # AU4 + AU17 (not found): supported 1/2, explained 1 -> 0.5
    assert ev(AUS, "brow lowerer, chin raiser") == pytest.approx(0.5)
    # AU12 only: supported (found on the left; no side claimed) but the brows are left unexplained -> 1 + 0 - 1
    assert ev(AUS, "lip corner puller") == pytest.approx(0.0)
    # adversarial: AU12 on the right side, but perception put it on the left -> unsupported, -1
    assert ev(AUS, "AU12 (right side)") == pytest.approx(-1.0)
    # adversarial: AU15 moves the same (moving) mouth corner, but downwards; perception did not find
    # it, so motion in its region is no support: 0 + 0 - 1
    assert ev(AUS, "lip corner depressor") == pytest.approx(-1.0)
    # adversarial: AU1 shares AU4's inner brows (explained), yet is not what perception found: 0 + 1 - 1
    assert ev(AUS, "inner brow raiser") == pytest.approx(0.0)
    # claimed twice counts once; AU23 was not found: {4: yes, 23: no} -> 0.5
    assert ev(AUS, "brow lowerer, brow lowerer, lip tightener") == pytest.approx(0.5)
    # negated claims are no claims: nothing claimed on a moving face -> -1, on a still face -> +1
    assert ev(AUS, "not brow lowerer") == -1.0
    assert R.evidence_reward(AUS, "none", {"chin|C": 0.1}, {}) == 1.0
    # yes/no: "yes" to AU17 (not found) -> -1; "yes" to AU12 -> +1; "no" claims nothing
    assert ev(question_text(QType.AU_YESNO, au=17), "yes") == -1.0
    assert ev(YESNO_12, "yes") == 1.0
    assert ev(YESNO_12, "no") is None
    assert ev(SIDE_12, "right") == -1.0
    assert ev(SIDE_12, "left") == 1.0
    assert ev(COARSE, "negative") is None


def test_one_definition_of_support_for_reward_gateway_and_benchmark():
    """`claims[].supported` in the gateway and the evidence reward's support are the same function
    (mellm.aus.claim_support) of the same claims (mellm.answers.claimed_aus)."""
    from mellm.answers import claimed_aus
    from mellm.aus import claim_support, present_aus
    from mellm.serve.gateway import _claims

    assert present_aus(EVIDENCE) == PRESENT
    for question, text, want in [
        (AUS, "brow lowerer, AU12 on the left, lip tightener", {4: True, 12: True, 23: False}),
        (AUS, "AU R12 and AU15", {12: False, 15: False}),  # AU12 on the wrong side; AU15 scored 0.1
        (AUS, "left brow lowerer", {4: True}),  # found on both sides, so on the left too
        (YESNO_12, "yes", {12: True}),
        (SIDE_12, "right", {12: False}),
        (AUS, "no AU is visible", {}),
    ]:
        claims = claimed_aus(question, text)
        assert claim_support(claims, PRESENT) == want, text
        assert {c["au"]: c["supported"] for c in _claims(claims, EVIDENCE)} == want, text


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
    ev = R.batch_reward("evidence")(completions=["brow lowerer", "lip corner depressor"], question=[AUS] * 2,
                                    motion=[json.dumps(MOTION)] * 2, present_aus=[json.dumps(PRESENT)] * 2)
    assert ev == pytest.approx([1.0, -1.0])
    with pytest.raises(KeyError):
        R.batch_reward("style")


def test_motion_of_evidence_regions():
    ev = {"regions": [{"name": "chin", "side": "C", "vector": [0.3, -0.4]}]}
    assert R.motion_of(ev) == {"chin|C": 0.5}
    cols = R.derived_columns({**ev, **EVIDENCE})
    assert json.loads(cols["motion"]) == {"chin|C": 0.5}
    assert R._present(cols["present_aus"]) == PRESENT
