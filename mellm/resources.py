"""Files MELLM ships inside its package: the training and accelerate configs (`mellm.configs`,
the repository's `configs/`) and the MEGC question files (`mellm.data`, the repository's `data/`).

They are found through importlib.resources, so a command finds them the same way in a checkout, an
editable install or a wheel installed on its own.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mellm.errors import ConfigError


def _packaged(package: str, relative: str) -> Path:
    # Installed packages live on the file system (wheels are unpacked), so the Traversable is a Path.
    return Path(str(resources.files(package).joinpath(relative)))


def config_file(relative: str) -> Path:
    """A packaged config, e.g. config_file("train/tiny_cpu.yaml")."""
    path = _packaged("mellm.configs", relative)
    if not path.is_file():
        raise ConfigError(f"no packaged config {relative!r}; known: {', '.join(packaged_configs())}")
    return path


def packaged_configs() -> list[str]:
    """Every packaged config, as the relative names config_file() takes."""
    root = _packaged("mellm.configs", "")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml"))


def megc_file(name: str) -> Path:
    """A packaged MEGC question file, e.g. megc_file("me_vqa_samm_casme2_smic.jsonl")."""
    path = _packaged("mellm.data", f"megc2025/{name}")
    if not path.is_file():
        raise ConfigError(f"no packaged MEGC file {name!r}")
    return path
