"""TrainConfig: one YAML file plus dotted `key=value` overrides -> a typed, validated config.

Only the shape and types are checked here (unknown keys, wrong types, impossible values); what
the config says about the disk (dataset, model, processor) is checked by `train.preflight`.
Neither imports torch or transformers, so a bad config fails in well under a second.

    cfg = load_config("configs/train/tiny_cpu.yaml", ["train.lr=1e-3", "output_dir=runs/x"])

A config is a YAML path, or the name of a packaged one ("qwen2_5_vl_7b_lora"), so the commands in
the README work from any folder, with or without a checkout.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from mellm.errors import ConfigError

# LoRA on these projections of the language model: every linear layer of a Qwen decoder block.
LM_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Section(BaseModel):
    # extra="forbid" makes a misspelt key an error instead of a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # hub id (GPU users) or a local model directory
    processor: Optional[str] = None  # processor/tokenizer location; None: same as name_or_path
    revision: Optional[str] = None
    # A LoRA adapter to start from (RUN/adapter of an SFT run): GRPO goes on training its weights.
    adapter: Optional[str] = None
    text_only: bool = False  # AutoModelForCausalLM on the text variant of the data (DIR/hf_text)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "sdpa"
    # Image resolution limits, in pixels per image (Qwen-VL processors resize into this range).
    min_pixels: Optional[int] = 56 * 56
    max_pixels: Optional[int] = 256 * 256
    trust_remote_code: bool = False


class DataConfig(_Section):
    dir: Optional[Path] = None  # the MEU-Instruct directory written by `mellm build-data --out DIR`
    train_split: str = "train"
    eval_split: Optional[str] = "val"  # None: no evaluation
    fold: Optional[int] = None  # LOSO fold of DIR/splits.json: train on every subject but the fold's
    qtypes: Optional[list[str]] = None  # keep only these question types (mellm.vqa.QType values)
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None

    @field_validator("qtypes")
    @classmethod
    def _known_qtypes(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        from mellm.vqa import QType

        known = [q.value for q in QType if q is not QType.UNKNOWN]
        bad = [q for q in v or [] if q not in known]
        if bad:
            raise ValueError(f"unknown question type(s) {bad}; known: {', '.join(known)}")
        return v


class LoraConfig(_Section):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    modules: list[str] = LM_MODULES  # projection names inside the language model
    # Also put LoRA on the vision tower and its projector. vLLM serves such an adapter only with
    # `--enable-tower-connector-lora`; without it vLLM silently drops those weights.
    vision: bool = False
    target_regex: Optional[str] = None  # full override of the target regex (expert use)


class QuantConfig(_Section):
    """QLoRA: the base model's language layers in 4-bit (bitsandbytes), LoRA on top."""

    load_in_4bit: bool = False
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # Kept in full precision: the vision tower and projector (small, and what vLLM serves them as)
    # and the LM head. Names of module-path components, matched at any depth.
    skip_modules: list[str] = ["visual", "vision_tower", "multi_modal_projector", "lm_head"]


class TrainSection(_Section):
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 2  # per device
    grad_accum: int = 8
    lr: float = 2e-4
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    max_length: Optional[int] = 4096  # tokens; longer answers are cut, a longer prompt is an error
    mixed_precision: Literal["bf16", "fp16", "no"] = "bf16"
    gradient_checkpointing: bool = True
    # Text-only path, with flash attention: pack several samples per row (trl, best-fit
    # decreasing), or flatten each batch into one row without padding.
    packing: bool = False
    padding_free: bool = False
    # Batch samples of similar length together (transformers' LengthGroupedSampler): MEU-Instruct
    # mixes one-word answers with reasoning chains, so random batches are ~30% padding.
    group_by_length: bool = True
    num_workers: int = 4  # dataloader worker processes (image decoding and processing run there)
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: Optional[int] = 3
    eval_steps: Optional[int] = None  # None: evaluate once per epoch
    report_to: list[str] = ["tensorboard"]
    # "auto": continue from the newest checkpoint in output_dir if there is one; "never": start
    # fresh (an output_dir holding checkpoints is then an error); or the path of a checkpoint.
    resume: str = "auto"

    @field_validator("warmup_ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("must be in [0, 1): the share of the training steps spent warming up")
        return v

    @field_validator("batch_size", "grad_accum", "logging_steps", "save_steps")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class GRPOSection(_Section):
    """Reinforcement fine-tuning with trl's GRPOTrainer (method: grpo). train.batch_size counts
    completions, as in trl: batch_size * grad_accum must be a multiple of num_generations."""

    num_generations: int = 8  # answers sampled per prompt; the rewards are compared within the group
    max_completion_length: int = 128  # tokens per sampled answer
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0  # KL to the starting policy; 0 needs no reference model
    epsilon: float = 0.2  # clipping of the policy ratio
    # Upper clip (DAPO's clip-higher): above epsilon, unlikely answers that paid can grow faster,
    # which keeps a group's answers from collapsing into one. None: epsilon on both sides.
    epsilon_high: Optional[float] = None
    num_iterations: int = 1  # optimisation passes per generated batch
    loss_type: str = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    # Generation on GPUs: vLLM inside the training process (colocate) or a `trl vllm-serve` server.
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    vllm_tensor_parallel_size: int = 1
    vllm_server_base_url: Optional[str] = None  # server mode; None: vllm_server_host:port
    vllm_server_host: str = "127.0.0.1"
    vllm_server_port: int = 8000
    # Every image is resized to this square before it reaches the processor. vLLM colocate mode
    # gets prompt ids with the image tokens already expanded plus the raw images; images of
    # different sizes then crash M-RoPE or silently corrupt prompts (trl issues 6401, 6294). One
    # fixed size avoids it. None: keep the dataset's sizes (plain generation; also with vLLM when
    # they are all one size, which preflight checks).
    image_size: Optional[int] = None
    log_completions: bool = False

    @field_validator("num_generations")
    @classmethod
    def _group(cls, v: int) -> int:
        if v < 2:
            raise ValueError("must be >= 2: GRPO compares each answer with the others of its group")
        return v


class RewardsSection(_Section):
    """Reward weights (name -> weight; a reward left out is not computed) and their settings
    (train/rewards.py)."""

    weights: dict[str, float] = {"format": 0.5, "emotion": 1.0, "au": 0.5, "evidence": 0.5, "degenerate": 1.0}
    class_balanced: bool = False  # emotion reward: inverse class frequency of the training rows
    strong_px: float = 0.5  # evidence reward: a region moving at least this much must be explained
    max_words: int = 60  # degenerate guard: longest ordinary answer (words)
    analysis_max_words: int = 250
    max_repeat: float = 0.5  # degenerate guard: largest share of repeated word 3-grams

    @field_validator("weights")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        from mellm.train.rewards import REWARD_NAMES

        bad = [k for k in v if k not in REWARD_NAMES]
        if bad:
            hint = [difflib.get_close_matches(k, REWARD_NAMES, n=1) for k in bad]
            hint = "; ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in zip(bad, hint))
            raise ValueError(f"unknown reward(s) {hint}; known: {', '.join(REWARD_NAMES)}")
        if not v:
            raise ValueError(f"needs at least one reward; known: {', '.join(REWARD_NAMES)}")
        if not any(w != 0 for w in v.values()):
            raise ValueError("every reward weight is 0: nothing would be learnt")
        return v


class TrainConfig(_Section):
    output_dir: Path = Path("runs/train")  # the run directory
    seed: int = 42
    method: Literal["sft", "grpo"] = "sft"  # supervised fine-tuning, or GRPO with the rewards below
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    lora: LoraConfig = LoraConfig()
    quant: QuantConfig = QuantConfig()
    train: TrainSection = TrainSection()
    grpo: GRPOSection = GRPOSection()
    rewards: RewardsSection = RewardsSection()

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.train.packing and not self.model.text_only:
            raise ValueError("train.packing needs model.text_only=true: trl cannot pack image-text samples")
        if self.train.padding_free and not self.model.text_only:
            raise ValueError("train.padding_free needs model.text_only=true (image-text batches are padded)")
        if (self.train.packing or self.train.padding_free) and not self.model.attn_implementation.startswith("flash"):
            # Measured (transformers 5.19, sdpa): a flattened batch lets each sample attend to the
            # ones before it. Only flash attention's variable-length kernels keep them apart.
            key = "train.packing" if self.train.packing else "train.padding_free"
            raise ValueError(f"{key}=true needs model.attn_implementation=flash_attention_2 (or _3): with "
                             f"{self.model.attn_implementation}, packed samples would attend to each other")
        if self.lora.vision and self.model.text_only:
            raise ValueError("lora.vision=true needs an image-text model, but model.text_only=true")
        if self.method == "grpo":
            per_step = self.train.batch_size * self.train.grad_accum
            if per_step % self.grpo.num_generations:
                raise ValueError(f"train.batch_size * train.grad_accum ({per_step}) must be a multiple of "
                                 f"grpo.num_generations ({self.grpo.num_generations}): each prompt's answers "
                                 "are generated together")
            if self.train.packing or self.train.padding_free:
                raise ValueError("method=grpo does not pack: set train.packing=false and train.padding_free=false")
        elif self.model.adapter:
            raise ValueError("model.adapter (start from an adapter) is read by method=grpo only")
        if (self.model.min_pixels and self.model.max_pixels and self.model.min_pixels > self.model.max_pixels):
            raise ValueError(f"model.min_pixels ({self.model.min_pixels}) > model.max_pixels ({self.model.max_pixels})")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _known_keys(section: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in section.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _apply_override(tree: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    known = _known_keys(TrainConfig)
    sections = {k.split(".")[0] for k in known if "." in k}
    mappings = ("rewards.weights.",)  # dict-valued keys: rewards.weights.au=0.5 sets one entry
    if key not in known and key not in sections and not key.startswith(mappings):
        hint = difflib.get_close_matches(key, known, n=1)
        raise ConfigError(f"unknown config key {key!r} in override {item!r}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    node = tree
    parts = key.split(".")
    if key.startswith(mappings) and "weights" not in tree.get("rewards", {}):
        # One weight changed: the others keep their defaults.
        tree.setdefault("rewards", {})["weights"] = dict(RewardsSection().weights)
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _explain(err: ValidationError, source: str) -> ConfigError:
    known = _known_keys(TrainConfig)
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(key, known, n=1)
            lines.append(f"unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        elif not e["loc"]:  # a cross-field rule of TrainConfig._consistent; its message names the keys
            lines.append(e["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"{key}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})")
    return ConfigError(f"{source}: " + "; ".join(lines))


def _config_path(path: Path) -> Path:
    """`path` itself, else the packaged training config of that name (mellm.resources)."""
    if path.is_file():
        return path
    from mellm.resources import packaged_configs

    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    if f"train/{name}" in packaged_configs():
        from mellm.resources import config_file

        return config_file(f"train/{name}")
    known = ", ".join(p.removeprefix("train/").removesuffix(".yaml") for p in packaged_configs() if p.startswith("train/"))
    raise ConfigError(f"config file {path} does not exist (nor is it a packaged config: {known})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read YAML `path` (None: defaults only), apply `key=value` overrides, validate."""
    tree: dict = {}
    source = "config"
    if path is not None:
        path = _config_path(Path(path))
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(tree).__name__}")
        source = str(path)
    for item in overrides:
        _apply_override(tree, item)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        raise _explain(e, source) from None
