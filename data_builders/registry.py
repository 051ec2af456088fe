"""Dataset names -> adapters."""

from __future__ import annotations

from pathlib import Path

from mellm.data_builders import casme2, casme3, dfme, fourdme, megc_vqa, samm, smic, synthetic
from mellm.data_builders.records import Loaded
from mellm.errors import MellmError

ADAPTERS = {
    "casme2": casme2.load,
    "samm": samm.load,
    "smic": smic.load,
    "casme3": casme3.load,
    "dfme": dfme.load,
    "4dme": fourdme.load,
    "synth": synthetic.load,
}
DATASETS = sorted([*ADAPTERS, "megc"])


def load_dataset(name: str, root: Path, questions: Path | None = None) -> Loaded:
    """Records and annotation failures of one dataset under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise MellmError(f"dataset root {root} is not a folder")
    if name == "megc":
        return megc_vqa.load(root, questions)
    if questions is not None:
        raise MellmError(f"--questions only applies to --dataset megc, not {name}")
    if name not in ADAPTERS:
        raise MellmError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return ADAPTERS[name](root)
