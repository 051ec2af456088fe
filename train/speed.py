"""Step-time savings our recipe adds on top of trl's SFTTrainer, each exact (same gradients).

1. The frozen vision tower runs without autograd. With LoRA on the language model only, no
   gradient is ever needed inside the vision tower or projector. Yet a plain SFTTrainer with
   gradient checkpointing calls `enable_input_require_grads`, whose hook also marks the vision
   patch embedding's output as requiring grad (transformers hooks every sub-model's input
   embedding), so autograd records the whole tower, checkpointing recomputes it, and backward
   runs through it only to throw the result away. Under `torch.no_grad()` the tower runs once,
   stores no activations, and the LoRA gradients are bit-for-bit the same (tested).
2. The collator (train/collate.py) tokenizes each batch with one processor call and no
   assistant-mask bookkeeping: about half the CPU time of trl's vision collator per batch.
3. DDP does not search for unused parameters when the vision side is frozen: trl turns that
   search on for every vision-language model, and it walks the autograd graph on every step.
(Less padding, from length-grouped batches, is the data side's part: train/data.py, recipe.sft_args.)
"""

from __future__ import annotations

from mellm.train.lora import VISION_PARTS


def vision_modules(model) -> list[tuple[str, object]]:
    """The outermost vision-side sub-modules (tower, projector) of an image-text model."""
    found = []
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in VISION_PARTS and not any(name.startswith(prev + ".") for prev, _ in found):
            found.append((name, module))
    return found


def run_vision_without_grad(model) -> list[str]:
    """Make every frozen vision-side module run under torch.no_grad(); -> their names.

    Call only when the vision side has no trainable parameter (no vision LoRA): the check below
    refuses otherwise, since no_grad would silently stop those parameters from learning.
    """
    import torch

    wrapped = []
    for name, module in vision_modules(model):
        trainable = [n for n, p in module.named_parameters() if p.requires_grad]
        if trainable:
            raise RuntimeError(f"{name} has trainable parameters (e.g. {trainable[0]}); it cannot run without grad")
        if getattr(module, "_mellm_no_grad", False):
            continue
        # An instance attribute shadows the class's forward; nn.Module.__call__ picks it up,
        # hooks (and the checkpointing wrapper of the blocks inside) still run.
        module.forward = torch.no_grad()(module.forward)
        module._mellm_no_grad = True
        wrapped.append(name)
    return wrapped
