"""Bad configs stop before any model is loaded, with a message that names the key, file or value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mellm.errors import ConfigError
from mellm.train.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, meu_instruct):
    from mellm.train.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("cfg")
    return {
        "data": meu_instruct,
        "vlm": build_tiny_model(root / "qwen2_5_vl", "qwen2_5_vl"),
        "qwen3": build_tiny_model(root / "qwen3_vl", "qwen3_vl"),
        "text": build_tiny_model(root / "qwen2", "qwen2"),
        "root": root,
    }


def _cfg(assets, *overrides):
    base = [f"data.dir={assets['data']}", f"model.name_or_path={assets['vlm']}",
            f"output_dir={assets['root'] / 'run'}"]
    return load_config(REPO / "configs/train/tiny_cpu.yaml", base + list(overrides))


def _preflight_error(cfg) -> str:
    from mellm.train.preflight import preflight

    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    return str(err.value)


# --- shape and types (config.py): no file is read beyond the YAML --------------------------

def test_unknown_key_in_yaml_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_pth": "x"}, "train": {"lr": 1e-4}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'model.name_or_pth' \(did you mean "
                                          r"'model.name_or_path'\?\)"):
        load_config(path)


def test_unknown_override_key_and_bad_value_are_named():
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'"):
        load_config(None, ["train.learning_rate=1e-4"])
    with pytest.raises(ConfigError, match=r"train.batch_size: .*integer.*'four'"):
        load_config(None, ["train.batch_size=four"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="train.packing needs model.text_only=true"):
        load_config(None, ["train.packing=true"])
    with pytest.raises(ConfigError, match="train.padding_free=true needs model.attn_implementation=flash_attention_2"):
        load_config(None, ["model.text_only=true", "train.padding_free=true"])


def test_overrides_are_typed_and_yaml_numbers_without_dot_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n")  # PyYAML reads 1e-4 as a string; it must still be a float
    cfg = load_config(path, ["train.max_steps=7", "data.qtypes=[coarse, fine]", "output_dir=runs/x"])
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.max_steps == 7
    assert cfg.data.qtypes == ["coarse", "fine"] and cfg.output_dir == Path("runs/x")


def test_missing_config_file_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "configs/train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_train_configs_validate(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.lora.target_regex is None  # the shipped configs use the language-model-only default


@pytest.mark.parametrize("path", sorted((REPO / "configs/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    load_config_from_file(str(path))  # accelerate's own reader accepts it
    data = yaml.safe_load(path.read_text())
    assert data["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}
    assert data["num_processes"] >= 1 and data["mixed_precision"] in {"bf16", "no", "fp16"}
    if data["distributed_type"] == "DEEPSPEED":
        assert data["deepspeed_config"]["zero_stage"] in (2, 3)


# --- against the disk (preflight.py) ----------------------------------------------------------

def test_missing_dataset_is_named(assets, tmp_path):
    assert "data.dir is not set" in _preflight_error(load_config(None, [f"model.name_or_path={assets['vlm']}"]))
    assert f"data.dir={tmp_path / 'none'} does not exist" in _preflight_error(_cfg(assets, f"data.dir={tmp_path / 'none'}"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "hf/dataset_dict.json is missing" in _preflight_error(_cfg(assets, f"data.dir={empty}"))


def test_bad_split_and_fold_are_named(assets):
    assert "data.eval_split='dev' is not a split" in _preflight_error(_cfg(assets, "data.eval_split=dev"))
    assert "data.fold=17 is not in" in _preflight_error(_cfg(assets, "data.fold=17"))


def test_model_processor_mismatch_is_named(assets):
    msg = _preflight_error(_cfg(assets, f"model.processor={assets['qwen3']}"))
    assert "model/processor mismatch" in msg and "model.processor=" in msg
    assert "Qwen3VLProcessor" in msg and "Qwen2_5_VLProcessor" in msg


def test_text_model_on_the_image_path_and_back(assets):
    msg = _preflight_error(_cfg(assets, f"model.name_or_path={assets['text']}"))
    assert "is a 'qwen2' model, not an image-text model; set model.text_only=true" in msg
    msg = _preflight_error(_cfg(assets, "model.text_only=true"))
    assert "AutoModelForCausalLM cannot load" in msg


def test_missing_model_dir_is_named(assets, tmp_path):
    assert "no config.json" in _preflight_error(_cfg(assets, f"model.name_or_path={tmp_path}"))


def test_tokenizer_bigger_than_embedding_is_a_mismatch(assets, tmp_path):
    from transformers import AutoTokenizer

    small = tmp_path / "small"
    shutil.copytree(assets["vlm"], small)
    config = json.loads((small / "config.json").read_text())
    config["text_config"]["vocab_size"] = 500
    (small / "config.json").write_text(json.dumps(config))
    n_tokens = len(AutoTokenizer.from_pretrained(small))
    msg = _preflight_error(_cfg(assets, f"model.name_or_path={small}"))
    assert f"has {n_tokens} tokens, the model's embedding only 500" in msg


def test_non_prefix_preserving_template_is_refused(assets, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(assets["vlm"], odd)
    # A template that renders the generation prompt differently from an answered turn.
    template = (odd / "chat_template.jinja").read_text().replace(
        "{{- '<|im_start|>assistant\\n' -}}{%- endif -%}", "{{- '<|im_start|>assistant:' -}}{%- endif -%}")
    (odd / "chat_template.jinja").write_text(template)
    assert "not prefix-preserving" in _preflight_error(_cfg(assets, f"model.name_or_path={odd}"))


def test_runtime_checks_name_their_keys(assets):
    assert "lora.target_regex is not a valid regex" in _preflight_error(_cfg(assets, "lora.target_regex='(['"))
    assert "needs the flash-attn package" in _preflight_error(_cfg(assets, "model.attn_implementation=flash_attention_2"))
    assert "train.resume='/no/such' is not a checkpoint" in _preflight_error(_cfg(assets, "train.resume=/no/such"))


def test_resume_never_refuses_an_output_dir_with_checkpoints(assets, tmp_path):
    (tmp_path / "run" / "checkpoint-4").mkdir(parents=True)
    msg = _preflight_error(_cfg(assets, f"output_dir={tmp_path / 'run'}", "train.resume=never"))
    assert "already holds checkpoints and train.resume=never" in msg


def test_bad_config_fails_before_any_model_is_loaded(assets, monkeypatch, tmp_path):
    """The recipe itself must stop in preflight: spy on every way it could load weights."""
    import transformers

    from mellm.train import recipe

    loads = []
    for cls in (transformers.AutoModelForImageTextToText, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda c, *a, **k: loads.append(a)))
    with pytest.raises(ConfigError, match="model/processor mismatch"):
        recipe.train(_cfg(assets, f"model.processor={assets['qwen3']}", f"output_dir={tmp_path / 'r'}"))
    with pytest.raises(ConfigError, match="does not exist"):
        recipe.train(_cfg(assets, f"data.dir={tmp_path / 'none'}"))
    assert loads == []
    assert not (tmp_path / "r").exists()  # no run directory either


def test_good_config_passes_preflight(assets):
    from mellm.train.preflight import preflight

    assert preflight(_cfg(assets)) == {"model_type": "qwen2_5_vl", "processor_class": "Qwen2_5_VLProcessor"}
    assert preflight(_cfg(assets, "data.fold=1"))["model_type"] == "qwen2_5_vl"
    assert preflight(_cfg(assets, f"model.name_or_path={assets['text']}", "model.text_only=true")) == {
        "model_type": "qwen2"}
