"""Fine-tuning: LoRA / QLoRA supervised fine-tuning of vision-language (and text) models on
MEU-Instruct, merging and export for vLLM, and tiny local models for tests and the demo.

Modules, one job each:
  config.py       TrainConfig: YAML + dotted overrides -> typed, validated config (no model loads)
  preflight.py    checks a config against the disk (dataset, model, processor) before any load
  data.py         MEU-Instruct on disk -> train/eval datasets (splits, LOSO folds, filters)
  collate.py      examples -> batches, with loss on the assistant turn only
  lora.py         which modules get LoRA (language model only by default) and where it landed
  speed.py        the step-time optimisations our recipe applies on top of SFTTrainer
  rundir.py       the run directory: resolved config, versions, fingerprint, metrics, resume point
  recipe.py       the one SFT recipe: data, model, LoRA/QLoRA, SFTTrainer, run directory
  rewards.py      GRPO rewards: pure functions of an answer, its labels and the clip's measured motion
  grpo.py         the GRPO recipe (method: grpo): GRPOTrainer, from an SFT adapter or a fresh LoRA
  merge.py        adapter -> merged full model; export of what vLLM needs
  tiny_models.py  tiny random Qwen2.5-VL / Qwen2-VL / Qwen3-VL / Qwen2 models, built offline
  cli.py          the `mellm train|merge|export|tiny-model` commands
"""
