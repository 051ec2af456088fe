"""Label vocabularies: AU codes as the datasets write them, emotions, the MEGC coarse mapping."""

import pytest

from mellm.errors import LabelError
from mellm.labels import AULabel, au_from_name, coarse_of, format_au_list, normalize_emotion, parse_au_codes


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("4+7", [AULabel(4), AULabel(7)]),
        ("R12+L15", [AULabel(12, "R"), AULabel(15, "L")]),
        ("AU4", [AULabel(4)]),
        ("L12+R12", [AULabel(12, "both")]),  # one AU on both sides
        ("12C+R15B", [AULabel(12), AULabel(15, "R")]),  # SAMM intensity letters dropped
        ("AU1(k)+AU2", [AULabel(1, "both", static=True), AULabel(2)]),  # 4DME static mark
        (12.0, [AULabel(12)]),  # a numeric xlsx cell
        ("/", []),
        ("", []),
    ],
)
def test_parse_au_codes(cell, expected):
    assert parse_au_codes(cell) == expected


@pytest.mark.parametrize("cell, bad", [("4+X7", "X7"), ("99", "AU99"), ("12+?", "?")])
def test_unparseable_au_codes_name_the_token(cell, bad):
    with pytest.raises(LabelError, match=bad.replace("?", r"\?")):
        parse_au_codes(cell)


def test_emotions_and_coarse_mapping():
    assert normalize_emotion(" Happiness ") == "happiness" and normalize_emotion("surprised") == "surprise"
    assert [coarse_of(e) for e in ("anger", "contempt", "repression", "fear", "sadness", "disgust")] == ["negative"] * 6
    assert coarse_of("happiness") == "positive" and coarse_of("Surprise") == "surprise"
    assert coarse_of("others") is None
    with pytest.raises(LabelError, match="'joyous'"):
        normalize_emotion("joyous")


def test_names_round_trip_in_megc_spelling():
    assert format_au_list([7, 4]) == "brow lowerer, lid tightener"
    assert au_from_name("Nostril Dilator") == 38 and au_from_name("nostril dilater") == 38
    assert au_from_name("lip corner pullers") == 12
