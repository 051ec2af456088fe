"""Label vocabularies shared by every stage: Action Units, emotions and the MEGC coarse mapping.

Sides follow FACS: "L" and "R" are the *subject's* left and right. In an image of a face looking
at the camera, the subject's left is on the image's right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mellm.errors import LabelError

# FACS names. Where the MEGC ME-VQA files spell a name their own way ("nostril dilater",
# "eye closure", "tilt right"), that spelling is the canonical one, so our answers match theirs.
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    5: "upper lid raiser",
    6: "cheek raiser",
    7: "lid tightener",
    8: "lips toward each other",
    9: "nose wrinkler",
    10: "upper lip raiser",
    11: "nasolabial deepener",
    12: "lip corner puller",
    13: "sharp lip puller",
    14: "dimpler",
    15: "lip corner depressor",
    16: "lower lip depressor",
    17: "chin raiser",
    18: "lip pucker",
    19: "tongue show",
    20: "lip stretcher",
    21: "neck tightener",
    22: "lip funneler",
    23: "lip tightener",
    24: "lip pressor",
    25: "lips part",
    26: "jaw drop",
    27: "mouth stretch",
    28: "lip suck",
    29: "jaw thrust",
    30: "jaw sideways",
    31: "jaw clencher",
    32: "lip bite",
    33: "cheek blow",
    34: "cheek puff",
    35: "cheek suck",
    36: "tongue bulge",
    37: "lip wipe",
    38: "nostril dilater",
    39: "nostril compress",
    41: "lid droop",
    42: "slit",
    43: "eye closure",
    44: "squint",
    45: "blink",
    46: "wink",
    51: "head turn left",
    52: "head turn right",
    53: "head up",
    54: "head down",
    55: "tilt left",
    56: "tilt right",
    57: "head forward",
    58: "head back",
    61: "eyes left",
    62: "eyes right",
    63: "eyes up",
    64: "eyes down",
}

# Other spellings seen in papers and model outputs.
AU_ALIASES: dict[str, int] = {
    "nostril dilator": 38,
    "nostril compressor": 39,
    "eyes closed": 43,
    "eye closed": 43,
    "head tilt left": 55,
    "head tilt right": 56,
    "eyes turn left": 61,
    "eyes turn right": 62,
    "lip corner depresser": 15,
    "lid tightner": 7,
    "lip tightner": 23,
    "chin raise": 17,
    "lip stretch": 20,
    "cheek raise": 6,
    "lips apart": 25,
    "lip part": 25,
    "jaw dropper": 26,
    "brow lower": 4,
    "brow lowering": 4,
    # Variants seen in model answers (our evaluation must not call these unparsed).
    "lips parted": 25,
    "lip presser": 24,
    "nose wrinkle": 9,
    "dimple": 14,
    "inner brow raise": 1,
    "outer brow raise": 2,
    "upper lid raise": 5,
    "upper lip raise": 10,
    "lip corner pull": 12,
    "lip corner depress": 15,
    "jaw drops": 26,
    "eyes closure": 43,
    "neck tighten": 21,
}

AU_BY_NAME: dict[str, int] = {name: num for num, name in AU_NAMES.items()} | AU_ALIASES

FINE_EMOTIONS = ("happiness", "surprise", "disgust", "repression", "fear", "sadness", "anger", "contempt", "others")
COARSE_CLASSES = ("negative", "positive", "surprise")

# MEGC composite mapping. "others" has no coarse class.
COARSE_OF_FINE: dict[str, str] = {
    "happiness": "positive",
    "surprise": "surprise",
    "disgust": "negative",
    "repression": "negative",
    "fear": "negative",
    "sadness": "negative",
    "anger": "negative",
    "contempt": "negative",
}

EMOTION_SYNONYMS: dict[str, str] = {
    "happy": "happiness",
    "happiness": "happiness",
    "joy": "happiness",
    "joyful": "happiness",
    "surprise": "surprise",
    "surprised": "surprise",
    "surprising": "surprise",
    "disgust": "disgust",
    "disgusted": "disgust",
    "repression": "repression",
    "repressed": "repression",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "sadness": "sadness",
    "sad": "sadness",
    "anger": "anger",
    "angry": "anger",
    "contempt": "contempt",
    "contemptuous": "contempt",
    "other": "others",
    "others": "others",
    "frightened": "fear",
    "astonished": "surprise",
    "astonishment": "surprise",
    "amazed": "surprise",
    "amazement": "surprise",
    "disgusting": "disgust",
    "sorrow": "sadness",
    "sorrowful": "sadness",
    "unhappy": "sadness",
}

COARSE_SYNONYMS: dict[str, str] = {
    "negative": "negative",
    "positive": "positive",
    "surprise": "surprise",
    "surprised": "surprise",
}


def au_name(au: int) -> str:
    try:
        return AU_NAMES[au]
    except KeyError:
        raise LabelError(f"unknown action unit AU{au}") from None


def au_from_name(name: str) -> int:
    """FACS name (any case, canonical or alias) -> AU number."""
    key = " ".join(re.sub(r"[^a-z ]", " ", name.lower()).split())
    if key in AU_BY_NAME:
        return AU_BY_NAME[key]
    if key.endswith("s") and key[:-1] in AU_BY_NAME:  # "lip corner pullers"
        return AU_BY_NAME[key[:-1]]
    raise LabelError(f"unknown action unit name {name!r}")


def normalize_emotion(text: str) -> str:
    """Fine emotion label from a dataset or an answer ("Happiness", "happy", "Others") -> canonical."""
    key = text.strip().lower()
    if key not in EMOTION_SYNONYMS:
        raise LabelError(f"unknown emotion {text!r} (known: {', '.join(FINE_EMOTIONS)})")
    return EMOTION_SYNONYMS[key]


def emotion_labels(text: str) -> tuple[str | None, str | None]:
    """A dataset's emotion cell -> (fine, coarse). Fine emotions map to their MEGC coarse class;
    a cell that only names a coarse class (SMIC, 4DME: "negative") gives (None, coarse)."""
    key = " ".join(str(text).strip().lower().split())
    if key in EMOTION_SYNONYMS:
        fine = EMOTION_SYNONYMS[key]
        return fine, COARSE_OF_FINE.get(fine)
    if key in COARSE_SYNONYMS:
        return None, COARSE_SYNONYMS[key]
    raise LabelError(f"unknown emotion {text!r} (known: {', '.join(FINE_EMOTIONS + COARSE_CLASSES[:2])})")


def coarse_of(fine: str) -> str | None:
    """MEGC coarse class of a fine emotion; None for "others"."""
    return COARSE_OF_FINE.get(normalize_emotion(fine))


@dataclass(frozen=True, order=True)
class AULabel:
    """One labelled Action Unit. side: "L"/"R" (subject's), or "both" when not lateralised."""

    au: int
    side: str = "both"
    static: bool = False

    @property
    def name(self) -> str:
        return au_name(self.au)

    def to_dict(self) -> dict:
        return {"au": self.au, "side": self.side, "static": self.static}

    @classmethod
    def from_dict(cls, d: dict) -> AULabel:
        return cls(int(d["au"]), d.get("side", "both"), bool(d.get("static", False)))


_AU_TOKEN = re.compile(
    r"^(?P<side>[LRBU])?\s*(?:AU)?\s*(?P<num>\d{1,2})\s*(?P<intensity>[A-E])?\s*(?P<static>\(k\))?$",
    re.IGNORECASE,
)


def parse_au_codes(text: str | int | float) -> list[AULabel]:
    """Parse an annotation cell such as "4+7", "R12+L15", "AU4", "12C", "AU1(k)+AU2".

    L/R prefixes are the subject's sides; B (bilateral) and U (unspecified) mean both.
    Intensity letters A-E are dropped; "(k)" marks a static AU (4DME). The same AU on both sides
    ("L12+R12") merges to side "both". An empty cell gives []; anything else unknown is an error.
    """
    if isinstance(text, float) and text.is_integer():
        text = int(text)
    raw = str(text).strip()
    if raw in ("", "-", "/", "nan", "None"):
        return []
    found: dict[int, AULabel] = {}
    for token in re.split(r"[+,;]", raw):
        token = token.strip()
        if not token:
            continue
        m = _AU_TOKEN.match(token)
        if not m:
            raise LabelError(f"cannot parse action unit {token!r} in {raw!r}")
        num = int(m["num"])
        if num not in AU_NAMES:
            raise LabelError(f"unknown action unit AU{num} in {raw!r}")
        side = {"L": "L", "R": "R"}.get((m["side"] or "").upper(), "both")
        label = AULabel(num, side, bool(m["static"]))
        if num in found and found[num].side != side:
            label = AULabel(num, "both", found[num].static and label.static)
        found[num] = label
    return sorted(found.values())


def format_au_list(aus: list[int] | list[AULabel]) -> str:
    """MEGC answer form: FACS names, comma-separated, in AU order ("brow lowerer, lid tightener")."""
    nums = sorted({a.au if isinstance(a, AULabel) else int(a) for a in aus})
    return ", ".join(AU_NAMES[n] for n in nums)
