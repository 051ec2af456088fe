"""A small synthetic MEU-Instruct dataset in exactly the on-disk format of docs/formats.md, for the
training tests and benchmarks until `mellm build-data` output replaces it.

The task is learnable: the coarse classes are balanced, each clip's evidence text names Action
Units drawn from its fine class's typical AUs (positive: cheek raiser / lip corner puller; surprise: brow and lid raisers, jaw
drop; negative: brow lowerer, nose wrinkler, ...), and the flow colour map's hue follows the
class. Prompts come from `mellm.prompts.build_messages`, so they are the prompts serving sends.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# Fine emotion -> the AUs its clips show (a subset is drawn per clip).
_CLASS_AUS = {
    "happiness": [6, 12, 25],
    "surprise": [1, 2, 5, 26],
    "disgust": [4, 9, 10],
    "repression": [14, 15, 17, 24],
    "anger": [4, 7, 23],
    "sadness": [1, 4, 15],
}
_HUE = {"positive": (230, 180, 40), "surprise": (40, 200, 230), "negative": (200, 40, 160)}
_SIDES = ("on the left", "on the right", "on both sides")


def write_meu_instruct(out_dir: str | Path, n_clips: int = 48, n_subjects: int = 6, seed: int = 0,
                       qtypes: tuple[str, ...] = ("coarse", "fine", "au_list"), image_size: int = 56) -> Path:
    """Write DIR/hf, DIR/hf_text (DatasetDicts with train/val/test) and DIR/splits.json.

    Subjects s01..sNN; the holdout split puts the last two subjects in val and test, every other
    subject in train; LOSO has one fold per subject. Returns DIR.
    """
    import datasets
    import numpy as np
    from PIL import Image

    from mellm.labels import AU_NAMES, COARSE_OF_FINE, format_au_list
    from mellm.prompts import build_messages
    from mellm.vqa import QType, question_text

    rng = random.Random(seed)
    out = Path(out_dir)
    subjects = [f"s{i + 1:02d}" for i in range(n_subjects)]
    holdout = {"train": subjects[:-2], "val": [subjects[-2]], "test": [subjects[-1]]}
    split_of = {s: k for k, subs in holdout.items() for s in subs}
    rows = {"hf": {k: [] for k in holdout}, "hf_text": {k: [] for k in holdout}}

    for c in range(n_clips):
        subject = subjects[c % n_subjects]
        # Balanced coarse classes (chance = 1/3 = the majority class), then a fine class within.
        coarse = rng.choice(sorted(_HUE))
        fine = rng.choice([f for f in _CLASS_AUS if COARSE_OF_FINE[f] == coarse])
        aus = sorted(rng.sample(_CLASS_AUS[fine], rng.randint(1, 2)))
        evidence = "; ".join(f"{AU_NAMES[a]} {rng.choice(_SIDES)}" for a in aus)
        evidence = f"Significant motion suggests {evidence}."
        noise = np.random.default_rng(seed * 1000 + c)
        face = noise.integers(90, 160, (image_size, image_size, 3), dtype=np.uint8)
        flow = np.clip(np.array(_HUE[coarse])[None, None] + noise.integers(-30, 30, (image_size, image_size, 3)), 0, 255)
        images = [Image.fromarray(face), Image.fromarray(np.clip(face.astype(int) + 8, 0, 255).astype(np.uint8)),
                  Image.fromarray(flow.astype(np.uint8))]
        answers = {"coarse": coarse, "fine": fine, "au_list": format_au_list(aus)}
        for qtype in qtypes:
            question = question_text(QType(qtype), n_aus=len(aus))
            common = {
                "id": f"syn_{c:04d}_{qtype}", "dataset": "synthetic", "subject": subject,
                "clip_id": f"syn_{c:04d}", "qtype": qtype, "question": question, "answer": answers[qtype],
                "coarse": coarse, "fine": fine, "aus": aus,
            }
            vlm = build_messages(question, ("onset", "apex", "flow"), evidence, answers[qtype])
            txt = build_messages(question, (), evidence, answers[qtype], text_only=True)
            rows["hf"][split_of[subject]].append({**common, "messages": vlm, "images": images})
            rows["hf_text"][split_of[subject]].append({**common, "messages": txt})

    for variant, splits in rows.items():
        features = None
        dd = datasets.DatasetDict()
        for split, items in splits.items():
            ds = datasets.Dataset.from_list(items, features=features)
            if variant == "hf":
                ds = ds.cast_column("images", datasets.Sequence(datasets.Image()))
            features = ds.features  # every split gets the same schema, even an empty one
            dd[split] = ds
        dd.save_to_disk(str(out / variant))
    splits = {"loso": [{"fold": i, "test_subjects": [s]} for i, s in enumerate(subjects)], "holdout": holdout}
    (out / "splits.json").write_text(json.dumps(splits, indent=2))
    return out
