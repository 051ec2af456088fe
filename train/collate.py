"""Examples -> token ids and labels, with the loss on the assistant's answer only.

How the answer is found (the same for every model, with or without `{% generation %}` markers):
render the conversation twice with the model's own chat template, once whole and once without the
final assistant turn but with the generation prompt (`<|im_start|>assistant\\n`). The first must
start with the second (the template is then "prefix-preserving", which preflight checks once per
run); what follows is the completion: the answer and its end-of-turn tokens. The prompt and the
completion are tokenized separately and concatenated, so the model trains on exactly the token
sequence it will see when vLLM renders the same prompt and the model generates the answer. Labels
are -100 on the prompt and on padding.

MEU-Instruct rows are single-turn (system, user, assistant), so "the final assistant turn" is
the whole supervised part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mellm.errors import ConfigError, MellmError

IGNORE = -100


def split_prompt_completion(renderer, messages: list[dict]) -> tuple[str, str]:
    """(prompt text, completion text) of a conversation ending in an assistant turn. `renderer`
    is a processor or tokenizer with the chat template to train (and serve) with."""
    if not messages or messages[-1]["role"] != "assistant":
        raise MellmError("a training conversation must end with an assistant turn")
    full = renderer.apply_chat_template(messages, tokenize=False)
    prompt = renderer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise ConfigError(
            "the chat template is not prefix-preserving: the conversation rendered without its answer "
            "(plus the generation prompt) is not the start of the whole conversation, so the answer "
            f"tokens cannot be located.\nprompt ends: {prompt[-80:]!r}\nfull text there: "
            f"{full[len(prompt) - 80:len(prompt) + 20]!r}"
        )
    completion = full[len(prompt):]
    if not completion.strip():
        raise MellmError("the assistant turn renders to nothing; is its content empty?")
    return prompt, completion


def _fit(prompt_len: int, completion: list[int], max_length: int | None) -> list[int]:
    if max_length is None:
        return completion
    if prompt_len >= max_length:
        raise MellmError(
            f"a prompt is {prompt_len} tokens, not shorter than train.max_length={max_length}; raise "
            "train.max_length or lower model.max_pixels (image tokens dominate the prompt)"
        )
    return completion[: max_length - prompt_len]


def tokenize_text_example(tokenizer, messages: list[dict], max_length: int | None) -> dict:
    """Text-only path: one row -> {"input_ids", "labels"} (trl pads, packs and batches these)."""
    prompt, completion = split_prompt_completion(tokenizer, messages)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    comp_ids = _fit(len(prompt_ids), tokenizer(completion, add_special_tokens=False)["input_ids"], max_length)
    return {"input_ids": prompt_ids + comp_ids, "labels": [IGNORE] * len(prompt_ids) + comp_ids}


@dataclass
class VisionCollator:
    """Image-text path: rows with `messages` and `images` -> a padded batch for the model.

    The processor expands each image placeholder into its image tokens and turns the images into
    pixel values. Outputs with one value per token (input_ids, attention_mask, mm_token_type_ids,
    token_type_ids) are padded on the right; per-image outputs (pixel_values, image_grid_thw, ...)
    come concatenated in example order from the processor.
    """

    processor: Any
    max_length: int | None = None

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        tok = self.processor.tokenizer
        prompts, completions, images = [], [], []
        for ex in examples:
            prompt, completion = split_prompt_completion(self.processor, ex["messages"])
            prompts.append(prompt)
            completions.append(tok(completion, add_special_tokens=False)["input_ids"])
            images.append(ex.get("images") or [])
        # One processor call for the batch, unpadded: it expands the image placeholders and
        # processes all images together (per-example calls cost several times more on CPU).
        enc = self.processor(text=prompts, images=images if any(images) else None, padding=False)
        prompt_ids = enc["input_ids"]
        per_token = [k for k, v in enc.items()
                     if isinstance(v, list) and all(len(v[i]) == len(prompt_ids[i]) for i in range(len(v)))]
        rows = []
        for i, comp in enumerate(completions):
            n = len(prompt_ids[i])
            comp = _fit(n, comp, self.max_length)
            row = {"labels": [IGNORE] * n + comp}
            for key in per_token:
                # The completion is text: its own ids, attention 1, modality/token type 0.
                fill = comp if key == "input_ids" else [1] * len(comp) if key == "attention_mask" else [0] * len(comp)
                row[key] = list(enc[key][i]) + fill
            rows.append(row)

        longest = max(len(r["labels"]) for r in rows)
        pads = {"input_ids": tok.pad_token_id, "labels": IGNORE}
        batch = {key: torch.tensor([r[key] + [pads.get(key, 0)] * (longest - len(r[key])) for r in rows])
                 for key in rows[0]}
        for key, value in enc.items():
            if key not in per_token:  # per-image outputs, already concatenated in example order
                batch[key] = value if torch.is_tensor(value) else torch.as_tensor(value)
        return batch
