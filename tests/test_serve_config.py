"""How vLLM is started for an adapter, from the serving.json training writes (no server needed)."""

import json
from pathlib import Path

import pytest

from mellm.errors import ConfigError
from mellm.serve.gateway import as_trained
from mellm.serve.vllm_server import ServerConfig, vllm_command


def adapter(folder: Path, rank: int = 8, notes: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "base_model_name_or_path": "base"}))
    if notes is not None:
        (folder / "serving.json").write_text(json.dumps(notes))
    return folder


def test_command_carries_rank_image_limits_and_tower_lora(tmp_path):
    a = adapter(tmp_path / "a", 12, {"mm_processor_kwargs": {"min_pixels": 784, "max_pixels": 12544}})
    b = adapter(tmp_path / "b", 8, {"lora_on_vision_modules": 4, "mm_processor_kwargs": {"min_pixels": 784, "max_pixels": 12544}})
    cmd, env = vllm_command(ServerConfig(model="Qwen/Qwen2.5-VL-7B-Instruct", adapters={"a": a, "b": b}, api_key="k"), gpu=False)
    line = " ".join(cmd)
    assert "--max-lora-rank 16" in line and "--max-loras 2" in line  # rank 12 rounds up to vLLM's 16
    assert "--enable-tower-connector-lora" in cmd
    assert cmd[cmd.index("--mm-processor-kwargs") + 1] == '{"min_pixels": 784, "max_pixels": 12544}'
    assert cmd[cmd.index("--dtype") + 1] == "float32" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--api-key") + 1] == "k"
    gpu, _ = vllm_command(ServerConfig(model="m", tensor_parallel=4), gpu=True)
    assert gpu[gpu.index("--tensor-parallel-size") + 1] == "4" and gpu[gpu.index("--dtype") + 1] == "auto"
    assert "--enable-lora" not in gpu
    # vLLM fetches no remote media unless hosts are allowed (issue 11, item 7)
    assert cmd[cmd.index("--allowed-media-domains") + 1:][:1] == ["no-remote-media.invalid"]
    some, _ = vllm_command(ServerConfig(model="m", allowed_media_domains=("a.org", "b.org")), gpu=True)
    assert some[some.index("--allowed-media-domains") + 1:][:2] == ["a.org", "b.org"]


def test_adapters_with_different_image_limits_are_refused(tmp_path):
    a = adapter(tmp_path / "a", notes={"mm_processor_kwargs": {"max_pixels": 12544}})
    b = adapter(tmp_path / "b", notes={"mm_processor_kwargs": {"max_pixels": 50176}})
    with pytest.raises(ConfigError, match="different image limits"):
        vllm_command(ServerConfig(model="m", adapters={"a": a, "b": b}), gpu=False)
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        vllm_command(ServerConfig(model="m", adapters={"x": tmp_path}), gpu=False)


def test_gateway_asks_as_the_adapter_was_trained(tmp_path):
    a = adapter(tmp_path / "a", notes={"prompt": {"image_roles": ["flow"], "evidence_in_prompt": False},
                                       "perception": {"flow": "dis", "crop_size": 256, "key": "abc"}})
    trained = as_trained(a, None, None)
    assert trained["image_roles"] == ("flow",) and trained["evidence_in_prompt"] is False
    assert trained["perception"].flow == "dis"
    overridden = as_trained(a, "onset,apex", True)
    assert overridden["image_roles"] == ("onset", "apex") and overridden["evidence_in_prompt"] is True
    assert as_trained(None, None, None)["image_roles"] == ("onset", "apex", "flow")


def test_gateway_perceives_and_calibrates_as_the_adapter_was_trained(tmp_path):
    """serving.json from before the nuisance defences -> legacy perception; from after -> as
    recorded, calibration thresholds included; --calibration replaces them."""
    from mellm.analyze import PerceptionSettings

    old = adapter(tmp_path / "old", notes={"perception": {"flow": "dis", "crop_size": 256}})
    assert as_trained(old, None, None)["perception"] == PerceptionSettings.legacy(flow="dis")
    built = {**PerceptionSettings(au_thresholds=((12, 0.3),), calibration="c.json@1").to_dict(), "key": "x"}
    new = adapter(tmp_path / "new", notes={"perception": json.loads(json.dumps(built))})
    p = as_trained(new, None, None)["perception"]
    assert p.au_thresholds == ((12, 0.3),) and p.calibration == "c.json@1" and p.noise_floor > 0
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"format": "mellm-calibration/1", "thresholds": {"4": 0.2, "12": 0.1}}))
    p = as_trained(new, None, None, cal)["perception"]
    assert p.au_thresholds == ((4, 0.2), (12, 0.1)) and p.calibration.startswith("cal.json@")
