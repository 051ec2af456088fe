"""The one prompt builder. Training data (data_builders) and serving (serve) both call
`build_messages`, so the model sees at serving time exactly the prompt it was tuned on.

Messages use the Hugging Face multimodal chat format, which trl, transformers' chat templates and
(after `to_openai_messages`) vLLM's OpenAI server all accept:

    [{"role": "system", "content": [{"type": "text", "text": ...}]},
     {"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": ...}]},
     {"role": "assistant", "content": [{"type": "text", "text": ...}]}]

Images are placeholders; the images themselves travel beside the messages, in order.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

SYSTEM_PROMPT = (
    "You are an expert in facial micro-expressions and the Facial Action Coding System (FACS). "
    "Micro-expressions are brief (under half a second), subtle facial movements. Answer the "
    "question about the clip concisely. Left and right always mean the subject's own left and right."
)

# What each image role is called in the prompt text.
IMAGE_ROLE_TEXT = {
    "onset": "the onset frame (neutral face)",
    "apex": "the apex frame (peak of the expression)",
    "flow": "an optical-flow colour map from onset to apex (hue = direction, brightness = magnitude)",
}
IMAGE_ROLES = tuple(IMAGE_ROLE_TEXT)  # the default images of a sample, in order


def user_text(question: str, image_roles: Sequence[str] = (), evidence_text: str | None = None) -> str:
    parts = []
    if image_roles:
        named = "; ".join(f"image {i + 1} is {IMAGE_ROLE_TEXT[r]}" for i, r in enumerate(image_roles))
        parts.append(f"The images show a micro-expression clip: {named}.")
    if evidence_text:
        parts.append(f"Measured facial motion (onset to apex): {evidence_text}")
    parts.append(f"Question: {question}")
    return "\n".join(parts)


def build_messages(
    question: str,
    image_roles: Sequence[str] = IMAGE_ROLES,
    evidence_text: str | None = None,
    answer: str | None = None,
    text_only: bool = False,
) -> list[dict]:
    """Chat messages for one ME question.

    image_roles: which images accompany the question, in order ("onset", "apex", "flow").
    evidence_text: the motion description (flow-guided variant); None leaves it out.
    answer: the assistant turn, for training data; None for a request.
    text_only: plain-string contents and no images, for text LLMs (MELLM v3 style).
    """
    unknown = [r for r in image_roles if r not in IMAGE_ROLE_TEXT]
    if unknown:
        raise ValueError(f"unknown image role(s) {unknown}; known: {sorted(IMAGE_ROLE_TEXT)}")
    if text_only:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_text(question, (), evidence_text)},
        ]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return messages
    user = [{"type": "image"} for _ in image_roles]
    user.append({"type": "text", "text": user_text(question, image_roles, evidence_text)})
    messages = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": user},
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def png_data_url(image) -> str:
    """PIL image or PNG bytes -> data URL for an OpenAI `image_url` part."""
    if not isinstance(image, (bytes, bytearray)):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        image = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def to_openai_messages(messages: list[dict], images: Sequence) -> list[dict]:
    """Replace image placeholders, in order, by OpenAI `image_url` parts carrying the images."""
    images = list(images)
    n_slots = sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image")
    if n_slots != len(images):
        raise ValueError(f"messages have {n_slots} image placeholders but {len(images)} images were given")
    it = iter(images)
    out = []
    for m in messages:
        if isinstance(m["content"], str):
            out.append(dict(m))
            continue
        parts = []
        for p in m["content"]:
            if p["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": png_data_url(next(it))}})
            else:
                parts.append({"type": "text", "text": p["text"]})
        out.append({"role": m["role"], "content": parts})
    return out
