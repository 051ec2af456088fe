"""Protocol splits, by subject so that no subject is in both training and testing.

- LOSO: one fold per subject (over every dataset in the build: with CASME II, SAMM and SMIC this is
  the MEGC 2019 composite protocol's 68 folds).
- Holdout: subjects shuffled (seeded) into train / val / test (default 70/15/15 %).
- MEGC 2019 composite: clips the composite's coarse-class protocol leaves out (no coarse class,
  and CASME II's fear, sadness and others) are listed, so its scores can be reproduced.
Subjects are `dataset/subject` keys, unique across datasets (the `subject` column of the data).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from mellm.data_builders.records import ClipRecord

COMPOSITE_DROPPED_CASME2 = {"fear", "sadness", "others"}


@dataclass
class Splits:
    loso: list[dict]  # [{"fold": 0, "test_subjects": ["casme2/sub01"]}, ...]
    holdout: dict[str, list[str]]  # {"train": [...], "val": [...], "test": [...]}
    composite_excluded: list[str]  # clip keys outside the MEGC 2019 composite coarse protocol
    seed: int

    def split_of(self) -> dict[str, str]:
        return {s: name for name, subjects in self.holdout.items() for s in subjects}

    def to_dict(self) -> dict:
        return asdict(self)


def in_composite(record: ClipRecord) -> bool:
    if record.coarse is None:
        return False
    return not (record.dataset == "casme2" and record.fine in COMPOSITE_DROPPED_CASME2)


def make_splits(records: list[ClipRecord], seed: int = 0, val: float = 0.15, test: float = 0.15) -> Splits:
    subjects = sorted({r.subject_key for r in records})
    loso = [{"fold": i, "test_subjects": [s]} for i, s in enumerate(subjects)]
    shuffled = subjects[:]
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    if n >= 3:
        n_test = max(1, round(test * n))
        n_val = max(1, round(val * n))
    else:  # too few subjects to hold any out
        n_test = n_val = 0
    holdout = {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test:n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val:]),
    }
    excluded = sorted(r.key for r in records if not in_composite(r))
    return Splits(loso, holdout, excluded, seed)
