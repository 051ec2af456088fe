"""MELLM as the package its pyproject.toml says it is: a wheel that installs one top-level name,
`mellm`, carries its configs and MEGC files, and works on its own, from any folder.

The wheel goes into a fresh virtual environment that sees the project's site-packages for the
heavy dependencies (torch, datasets, ...) but not the project's checkout or its editable install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["mellm", "data_builders", "train", "serve", "eval", "loso", "configs", "data", "pyproject.toml", "README.md", "LICENSE"]


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh venv's python, its site-packages) with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a clean copy: an in-tree build/ folder could carry stale modules into the wheel
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
          "--quiet"], cwd=src)
    (wheel,) = (root / "dist").glob("mellm-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)], cwd=root)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip())
    # After the install, so pip never saw the project's own (editable) mellm: the heavy dependencies,
    # from every site-packages folder this interpreter sees (a venv can chain to another's).
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "project_deps.pth").write_text("\n".join(deps) + "\n")
    return python, site


def test_the_wheel_installs_only_mellm(wheel_env):
    python, site = wheel_env
    (record,) = site.glob("mellm-*.dist-info/RECORD")
    tops = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines()}
    tops = {t for t in tops if not t.endswith(".dist-info") and t != ".."}  # ../../bin/mellm is the script
    assert tops == {"mellm"}
    assert sorted(p.name for p in site.iterdir() if p.name != "__pycache__" and not p.name.endswith((".pth", ".dist-info"))) == ["mellm"]
    for sub in ("train", "serve", "eval", "data_builders", "configs", "data"):
        assert (site / "mellm" / sub).is_dir(), sub
    assert (site / "mellm" / "configs" / "train" / "tiny_cpu.yaml").is_file()
    assert (site / "mellm" / "data" / "megc2025" / "me_vqa_samm_casme2_smic.jsonl").is_file()
    for name in ("index.html", "app.js", "style.css"):  # the gateway's web page
        assert (site / "mellm" / "serve" / "web" / name).is_file(), name


def test_the_wheel_works_from_a_folder_with_train_py_and_eval(wheel_env, tmp_path):
    python, site = wheel_env
    work = tmp_path / "project"  # the kind of folder ML projects have: it used to shadow our packages
    (work / "eval").mkdir(parents=True)
    (work / "train.py").write_text("raise SystemExit('the local train.py was imported')\n")
    (work / "eval" / "__init__.py").write_text("raise SystemExit('the local eval/ was imported')\n")
    mellm = python.parent / "mellm"
    assert "Commands" in _run([str(mellm), "--help"], cwd=work).stdout
    assert "train" in _run([str(python), "-m", "mellm.cli", "--help"], cwd=work).stdout
    assert "--config" in _run([str(python), "-m", "mellm.cli", "train", "--help"], cwd=work).stdout

    where = _run([str(python), "-c", "import mellm, mellm.train.recipe, mellm.eval.score as s; from mellm.resources "
                  "import megc_file; print(mellm.__file__); print(s.__file__); "
                  "print(megc_file('me_vqa_samm_casme2_smic.jsonl'))"], cwd=work).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    train_file = where[2]
    _run([str(mellm), "eval", "score", "--questions", train_file, "--predictions", train_file, "--out", "score"], cwd=work)
    report = json.loads((work / "score" / "report.json").read_text())
    assert report["coarse"]["overall"]["uf1"] == 1.0 and report["fine"]["overall"]["uf1"] == 1.0

    # A packaged training config by name, from a folder without configs/ (the README's commands).
    r = subprocess.run([str(mellm), "train", "--config", "tiny_cpu", "--dry-run", "data.dir=nowhere"], cwd=work,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "data.dir=nowhere does not exist" in r.stderr, r.stderr[-2000:]
