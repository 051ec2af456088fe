"""GRPO configs and preflight: a reward or weight that does not exist, a dataset without the columns
a reward needs, a start adapter that is not one: clear errors before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mellm.errors import ConfigError
from mellm.train.config import load_config

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, meu_instruct):
    from mellm.train.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("grpo_cfg")
    return {"data": meu_instruct, "text": build_tiny_model(root / "qwen2", "qwen2"), "root": root}


def _cfg(assets, *overrides):
    base = [f"data.dir={assets['data']}", f"model.name_or_path={assets['text']}", "model.text_only=true",
            f"output_dir={assets['root'] / 'run'}"]
    return load_config("tiny_cpu_grpo", base + list(overrides))


def _error(*overrides) -> str:
    with pytest.raises(ConfigError) as err:
        load_config("tiny_cpu_grpo", list(overrides))
    return str(err.value)


def test_unknown_reward_and_bad_weight_are_named():
    assert "unknown reward(s) 'formt' (did you mean 'format'?)" in _error("rewards.weights.formt=1")
    assert "rewards.weights.au: Input should be a valid number" in _error("rewards.weights.au=high")
    assert "every reward weight is 0" in _error("rewards.weights={format: 0, au: 0}")
    assert "grpo.num_generations (3)" in _error("grpo.num_generations=3")
    assert "must be >= 2" in _error("grpo.num_generations=1", "train.batch_size=1")
    assert "read by method=grpo only" in _error("method=sft", "model.adapter=/x")


def test_one_weight_override_keeps_the_others():
    cfg = load_config("tiny_cpu_grpo", ["rewards.weights.evidence=2"])
    assert cfg.rewards.weights == {"format": 0.5, "emotion": 1.0, "au": 0.5, "evidence": 2.0, "degenerate": 1.0}
    assert cfg.method == "grpo"


def test_dataset_without_a_rewards_column_fails_before_any_model_loads(assets, tmp_path, monkeypatch):
    import datasets
    import transformers

    from mellm.train import recipe

    loads = []
    for cls in (transformers.AutoModelForImageTextToText, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda c, *a, **k: loads.append(a)))
    # An MEU-Instruct copy whose rows lack the labelled AUs (as a dataset from elsewhere might).
    data = tmp_path / "meu"
    dd = datasets.load_from_disk(str(assets["data"] / "hf_text"))
    datasets.DatasetDict({k: v.remove_columns(["aus"]) for k, v in dd.items()}).save_to_disk(str(data / "hf_text"))
    with pytest.raises(ConfigError, match=r"rewards.weights.au: the reward needs column\(s\) \['aus'\]"):
        recipe.train(_cfg(assets, f"data.dir={data}", f"output_dir={tmp_path / 'r'}"))
    # Dropping that reward makes the same data usable; then the evidence reward wants DATA/evidence.
    with pytest.raises(ConfigError, match="rewards.weights.evidence needs the clips' evidence"):
        recipe.train(_cfg(assets, f"data.dir={data}", "rewards.weights={format: 1, evidence: 1}"))
    assert loads == [] and not (tmp_path / "r").exists()


def test_start_adapter_is_checked(assets, tmp_path):
    from mellm.train.grpo import check_grpo

    with pytest.raises(ConfigError, match="is not a LoRA adapter directory"):
        check_grpo(_cfg(assets, f"model.adapter={tmp_path}"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/elsewhere/other", "r": 8}))
    with pytest.raises(ConfigError, match="was trained on '/elsewhere/other'"):
        check_grpo(_cfg(assets, f"model.adapter={tmp_path}"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(assets["text"]), "r": 8}))
    report = check_grpo(_cfg(assets, f"model.adapter={tmp_path}"))
    assert report["start_adapter"]["r"] == 8
    assert report["reward_columns"] == ["question", "coarse", "fine", "answer", "aus", "motion", "present_aus"]


def test_grpo_dataset_carries_the_reward_columns_and_each_clips_motion(assets):
    from mellm.train.grpo import grpo_dataset

    ds, fp, settings = grpo_dataset(_cfg(assets, "rewards.class_balanced=true"))
    assert {"prompt", "qtype", "question", "answer", "coarse", "fine", "aus", "au_sides", "motion",
            "present_aus"} <= set(ds.column_names)
    row = ds[0]
    assert row["prompt"][-1]["role"] == "user"  # the reference answer is not in the prompt
    assert row["answer"] not in row["prompt"][-1]["content"].split("Question:")[-1]
    motion = json.loads(row["motion"])
    assert len(motion) == 31 and all(v >= 0 for v in motion.values())
    # the AUs a clip's perception found, exactly as the gateway reads them from the evidence record
    from mellm.aus import present_aus

    found = [present_aus(json.loads(p.read_text())) for p in (assets["data"] / "evidence").glob("*.json")]
    assert all({int(k): v for k, v in json.loads(p).items()} in found for p in ds["present_aus"])
    assert any(json.loads(p) for p in ds["present_aus"])  # synthetic clips show AUs: some are found
    assert fp["train_rows"] == len(ds)
    weights = settings.class_weights["coarse"]
    counts = {c: list(ds["coarse"]).count(c) for c in weights}
    assert sum(weights[c] * n for c, n in counts.items()) / sum(counts.values()) == pytest.approx(1.0)
