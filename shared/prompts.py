"""The one place that decides how a question becomes a prompt.

Two styles:

- ``plain`` (base and tiny models): ``"Question: {question}\\nAnswer:\\n"``. The prompt ends
  right after ``"Answer:\\n"``; the response is the solution text itself (for GSM8K and the
  arithmetic task: one step per line, then ``#### answer``), followed by EOS. Few-shot
  examples come first, each as ``"Question: …\\nAnswer:\\n{solution}\\n\\n"``.
- ``chat`` (instruct models): the tokenizer's chat template over a user turn holding an
  instruction and the question, with the generation prompt added; the response is what the
  assistant writes. Few-shot examples become earlier user/assistant turns.

`style_for` picks ``chat`` when the tokenizer has a chat template, else ``plain``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from shared.example import Example

INSTRUCTIONS = {
    "gsm8k": "Solve the problem step by step. Put the final answer after ####.",
    "math": "Solve the problem step by step. Put the final answer in \\boxed{}.",
}
"""The instruction a chat prompt puts before the question, per dataset."""


def plain_prompt(question: str) -> str:
    """``Question: …\\nAnswer:\\n`` — the response starts right after the last newline."""
    return f"Question: {question}\nAnswer:\n"


def format_prompt(
    question: str,
    *,
    style: Literal["plain", "chat"] = "plain",
    dataset: str = "gsm8k",
    tokenizer: object | None = None,
    few_shot: Sequence[Example] = (),
) -> str:
    """The prompt text for ``question``; the model's response is appended right after it.

    ``plain`` needs no tokenizer; ``chat`` needs one with a chat template
    (``tokenizer.apply_chat_template``). ``dataset`` (gsm8k | math | arithmetic) picks the
    chat instruction (arithmetic uses GSM8K's).
    """
    if style == "plain":
        shots = "".join(f"{plain_prompt(ex.question)}{ex.solution}\n\n" for ex in few_shot)
        return shots + plain_prompt(question)
    if style != "chat":
        raise ValueError(f"unknown prompt style {style!r}; known: plain, chat")
    key = "math" if dataset == "math" else "gsm8k"
    if dataset not in ("gsm8k", "math", "arithmetic"):
        raise ValueError(f"unknown dataset {dataset!r}; known: gsm8k, math, arithmetic")
    if tokenizer is None or style_for(tokenizer) != "chat":
        raise ValueError("style='chat' needs a tokenizer with a chat template")
    messages: list[dict[str, str]] = []
    for ex in few_shot:
        messages.append({"role": "user", "content": f"{INSTRUCTIONS[key]}\n\n{ex.question}"})
        messages.append({"role": "assistant", "content": ex.solution})
    messages.append({"role": "user", "content": f"{INSTRUCTIONS[key]}\n\n{question}"})
    apply = getattr(tokenizer, "apply_chat_template")  # noqa: B009
    text = apply(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def style_for(tokenizer: object | None) -> Literal["plain", "chat"]:
    """``chat`` when ``tokenizer`` has a chat template, else ``plain``."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return "chat"
    return "plain"
