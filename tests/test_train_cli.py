"""The training commands as users type them: `mellm tiny-model`, `mellm train` (under `accelerate
launch`, as the README's multi-GPU line, here with one CPU process), `--dry-run`, a bad key,
`mellm merge` and `mellm export`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytestmark = pytest.mark.slow  # real subprocesses under accelerate launch: about 1 min on 2 cores
REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "train" / "tiny_cpu.yaml"


def mellm(*args: str, launcher: list[str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + ["-m", "mellm.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def run(tmp_path_factory, meu_instruct):
    root = tmp_path_factory.mktemp("train_cli")
    made = mellm("tiny-model", "--out", str(root / "tiny"))
    assert made.returncode == 0, made.stderr
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    trained = mellm("train", "--config", str(CONFIG), f"data.dir={meu_instruct}", f"model.name_or_path={root / 'tiny'}",
                    f"output_dir={root / 'run'}", "train.max_steps=3", "train.save_steps=3", "data.eval_split=null",
                    "train.report_to=[]", "--quiet", launcher=accelerate)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    assert f"adapter: {root / 'run' / 'adapter'}" in trained.stdout
    return root


def test_train_under_accelerate_launch_writes_the_run(run):
    assert (run / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "run" / "metrics.json").read_text())["global_step"] == 3
    assert (run / "run" / "config.yaml").is_file() and (run / "run" / "versions.json").is_file()


def test_dry_run_and_fold(run, meu_instruct):
    dry = mellm("train", "--config", str(CONFIG), f"data.dir={meu_instruct}", f"model.name_or_path={run / 'tiny'}",
                f"output_dir={run / 'dry'}", "--fold", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "fold: 1" in dry.stdout and "preflight ok" in dry.stderr
    assert not (run / "dry").exists()  # nothing loaded, nothing written


def test_a_misspelt_key_stops_with_a_suggestion(run, meu_instruct):
    bad = mellm("train", "--config", str(CONFIG), f"data.dir={meu_instruct}", "train.lrr=1e-3")
    assert bad.returncode == 2
    assert "train.lrr" in bad.stderr and "train.lr" in bad.stderr and "Traceback" not in bad.stderr


def test_merge_and_export(run):
    merged = mellm("merge", "--adapter", str(run / "run" / "adapter"), "--out", str(run / "merged"), "--dtype", "float32")
    assert merged.returncode == 0, merged.stderr
    assert (run / "merged" / "config.json").is_file() and list((run / "merged").glob("*.safetensors"))
    exported = mellm("export", "--adapter", str(run / "run" / "adapter"), "--out", str(run / "export"))
    assert exported.returncode == 0, exported.stderr
    assert "vllm.entrypoints.openai.api_server" in exported.stdout and "--lora-modules" in exported.stdout
    notes = json.loads((run / "export" / "serving.json").read_text())
    assert notes["prompt"]["image_roles"] == ["onset", "apex", "flow"]
