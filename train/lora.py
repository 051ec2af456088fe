"""Which modules get LoRA, and a check of where it actually landed.

By default LoRA goes on the language model only, through a regex that requires a
`language_model.` / `text_model.` path component and refuses any path through the vision side.
Matching by suffix alone ("gate_proj") is not enough: Qwen2.5-VL's vision blocks have
`gate_proj`/`up_proj`/`down_proj` too, and vLLM silently ignores LoRA weights on the vision
tower unless started with `--enable-tower-connector-lora`, so the served model would not be
the trained one. `lora.vision=true` adds the vision tower's and projector's linear layers on
purpose (the patch-embedding convolution is left out: vLLM has no LoRA for it).
"""

from __future__ import annotations

import re

# Path components that belong to the vision side in the architectures we support
# (Qwen2-VL / 2.5-VL / 3-VL: `visual`, LLaVA-style: `vision_tower` + `multi_modal_projector`,
# Idefics/SmolVLM: `vision_model` + `connector`).
VISION_PARTS = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "connector")
LM_PARTS = ("language_model", "text_model")
# Linear layers of vision blocks and projectors: attention (qkv, proj, q/k/v/out_proj), MLPs
# (fc1/fc2, linear_fc1/2, gate/up/down_proj, linear_1/2) and Qwen's `merger.mlp.0/2`.
VISION_LINEARS = ("qkv", "proj", "q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "fc1", "fc2",
                  "linear_fc1", "linear_fc2", "gate_proj", "up_proj", "down_proj", "linear_1", "linear_2",
                  r"mlp\.0", r"mlp\.2")

_VISION_RE = re.compile(r"(?:^|.*\.)(?:" + "|".join(VISION_PARTS) + r")\.")


def is_vision_module(name: str) -> bool:
    return bool(_VISION_RE.match(name))


def target_regex(modules: list[str], vision: bool = False, text_only: bool = False) -> str:
    """The regex peft full-matches against module names (e.g. `model.language_model.layers.0.mlp.up_proj`)."""
    mods = "|".join(re.escape(m) for m in modules)
    if text_only:  # a causal LM has no vision side; any decoder layer projection will do
        return rf".*\.(?:{mods})"
    no_vision = r"(?!(?:.*\.)?(?:" + "|".join(VISION_PARTS) + r")\.)"
    lm = rf"{no_vision}(?:.*\.)?(?:{'|'.join(LM_PARTS)})\..*\.(?:{mods})"
    if not vision:
        return lm
    vis = (r"(?:.*\.)?(?:" + "|".join(VISION_PARTS) + r")\.(?!.*patch_embed)(?:.*\.)?(?:"
           + "|".join(VISION_LINEARS) + ")")
    return rf"(?:{lm})|(?:{vis})"


def peft_config(cfg):
    from peft import LoraConfig

    regex = cfg.lora.target_regex or target_regex(cfg.lora.modules, cfg.lora.vision, cfg.model.text_only)
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=regex, bias="none", task_type="CAUSAL_LM")


def lora_modules(model) -> list[str]:
    """Names of the modules that carry a LoRA adapter."""
    return sorted({name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith(".lora_A")})


def check_lora_placement(model, vision_allowed: bool) -> dict:
    """Fail loudly if LoRA landed on the vision side without `lora.vision`; -> a summary."""
    names = lora_modules(model)
    on_vision = [n for n in names if is_vision_module(n)]
    if on_vision and not vision_allowed:
        raise RuntimeError(f"LoRA landed on {len(on_vision)} vision modules (e.g. {on_vision[0]}) although "
                           "lora.vision=false; check lora.target_regex")
    return {"lora_modules": len(names), "on_vision": len(on_vision), "example": names[:3]}
