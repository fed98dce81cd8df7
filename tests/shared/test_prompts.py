"""Prompt formats: plain for base/tiny models, the chat template for instruct models."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from shared.example import Example
from shared.prompts import format_prompt, style_for

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(chat: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a b c"], trainers.BpeTrainer(special_tokens=["<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    if chat:
        fast.chat_template = TEMPLATE
    return fast


def test_plain_prompt_and_few_shot() -> None:
    assert format_prompt("How many?") == "Question: How many?\nAnswer:\n"
    shot = Example("x", "1 + 1?", "1 + 1 = 2\n#### 2", "2", "gsm8k")
    assert format_prompt("How many?", few_shot=[shot]) == (
        "Question: 1 + 1?\nAnswer:\n1 + 1 = 2\n#### 2\n\nQuestion: How many?\nAnswer:\n"
    )


def test_chat_prompt_uses_the_template_and_the_dataset_instruction() -> None:
    tok = tiny_tokenizer(chat=True)
    assert style_for(tok) == "chat" and style_for(tiny_tokenizer(chat=False)) == "plain"
    assert style_for(None) == "plain"
    got = format_prompt("What is 2+2?", style="chat", tokenizer=tok)
    assert got.startswith("<|user|>Solve the problem step by step.")
    assert "after ####.\n\nWhat is 2+2?\n" in got and got.endswith("<|assistant|>")
    math = format_prompt("Find $x$.", style="chat", dataset="math", tokenizer=tok)
    assert "\\boxed{}" in math
    shot = Example("x", "1 + 1?", "1 + 1 = 2\n#### 2", "2", "gsm8k")
    few = format_prompt("Q?", style="chat", tokenizer=tok, few_shot=[shot])
    assert few.index("<|assistant|>1 + 1 = 2") < few.index("Q?")


def test_chat_without_a_template_is_refused() -> None:
    with pytest.raises(ValueError, match="chat template"):
        format_prompt("q", style="chat", tokenizer=tiny_tokenizer(chat=False))
    with pytest.raises(ValueError, match="prompt style"):
        format_prompt("q", style="fancy")  # type: ignore[arg-type]
