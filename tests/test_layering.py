"""The layering holds itself: data flows one way, and stages meet through files and public contracts.

The rules, written once, here:

1. The core (`mellm/*.py`: vocabularies, perception, prompts, parsing) imports no stage. Every stage
   builds on the core; a core module that reached into a stage would depend on what depends on it,
   and importing perception would drag in training or serving. The exceptions are the wiring that
   mounts the stages' commands and runs them in order (WIRING).
2. A stage imports another stage only through that stage's public interface (PUBLIC). Stages hand
   each other files on disk with documented formats (docs/formats.md), so each can be run, cached
   and tested alone. The one interface that is code is the ME gateway's HTTP contract and its
   client, which `mellm eval run --gateway` uses to talk to a running gateway.
3. The LOSO protocol runner (`loso/`) sits above the stages: like the demo, it runs training,
   prediction and scoring in order for each fold, so it may use their library functions
   (ORCHESTRATORS). No stage, and no core module but the CLI wiring, imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = {"data_builders": "mellm.data_builders", "train": "mellm.train", "serve": "mellm.serve",
          "eval": "mellm.eval", "loso": "mellm.loso"}
WIRING = {"mellm/cli.py", "mellm/demo.py"}
ORCHESTRATORS = {"mellm.loso"}
PUBLIC = {"mellm.serve.contract", "mellm.serve.client"}


def _unit(module: str) -> str | None:
    """'mellm.train.recipe' -> 'mellm.train'; core modules -> 'mellm'; other packages -> None."""
    parts = module.split(".")
    if parts[0] != "mellm":
        return None
    if len(parts) > 1 and f"mellm.{parts[1]}" in STAGES.values():
        return f"mellm.{parts[1]}"
    return "mellm"


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file of `package`; relative ones resolved."""
    packages = {"mellm", *STAGES.values()}
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from mellm.serve import gateway` imports the module mellm.serve.gateway
            out += [(node.lineno, f"{base}.{a.name}" if base in packages else base) for a in node.names]
    return out


def violations(root: Path) -> list[str]:
    """Every import under `root` that breaks a rule, as 'file:line: module (why)'."""
    found = []
    for folder, top in {"mellm": "mellm", **STAGES}.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root)
            package = ".".join([top, *rel.parts[1:-1]])
            here = _unit(package)
            for line, module in _imports(path, package):
                target = _unit(module)
                if target is None or target == here:
                    continue
                if here == "mellm" and rel.as_posix() not in WIRING:
                    found.append(f"{rel.as_posix()}:{line}: {module} (the core imports no stage)")
                elif target in ORCHESTRATORS and rel.as_posix() != "mellm/cli.py":
                    found.append(f"{rel.as_posix()}:{line}: {module} (only the CLI mounts the protocol runner)")
                elif here in ORCHESTRATORS:
                    continue
                elif here != "mellm" and target != "mellm" and not any(
                        module == p or module.startswith(p + ".") for p in PUBLIC):
                    found.append(f"{rel.as_posix()}:{line}: {module} (another stage's internals)")
    return found


def test_the_tree_keeps_its_layers():
    assert violations(REPO) == []


def test_a_planted_bad_import_is_caught(tmp_path):
    for folder in ("mellm", *STAGES):
        (tmp_path / folder).mkdir()
    (tmp_path / "mellm" / "aus.py").write_text("from mellm.train.recipe import train\n")
    (tmp_path / "mellm" / "cli.py").write_text("from mellm.train.cli import train\n")  # wiring: allowed
    (tmp_path / "eval" / "run.py").write_text("from mellm.serve.client import ask\nfrom mellm.serve import gateway\n")
    (tmp_path / "train" / "data.py").write_text("import mellm.data_builders.instruct\nfrom mellm.labels import au_name\n")
    (tmp_path / "serve" / "clips.py").write_text("from ..eval.metrics import f1\nfrom .contract import AnalyzeReply\n")
    (tmp_path / "loso" / "fold.py").write_text("from mellm.train.recipe import train\n")  # the runner: allowed
    (tmp_path / "eval" / "score.py").write_text("from mellm.loso.plan import load_plan\n")
    assert sorted(violations(tmp_path)) == [
        "eval/run.py:2: mellm.serve.gateway (another stage's internals)",
        "eval/score.py:1: mellm.loso.plan (only the CLI mounts the protocol runner)",
        "mellm/aus.py:1: mellm.train.recipe (the core imports no stage)",
        "serve/clips.py:1: mellm.eval.metrics (another stage's internals)",
        "train/data.py:1: mellm.data_builders.instruct (another stage's internals)",
    ]
