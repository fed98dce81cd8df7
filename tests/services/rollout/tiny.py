"""Tiny Llama-style models built inside tests (no downloads), loadable by directory.

- ``make_tiny_model_dir(path, vocab_texts=..., seed=0)``: byte-level BPE tokenizer trained
  on ``vocab_texts`` with ``tokenizers`` + a randomly initialised tiny ``LlamaForCausalLM``,
  both saved to ``path`` (``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained(path)``).
- ``train_tiny_model_dir(path, texts, steps=...)``: the same, then Adam on ``texts`` (each
  wrapped as ``<s> text </s>``) so it learns to write them — seconds on CPU.
- ``save_weights(model_dir, out_dir, seed)``: a fresh random init's weights as safetensors.
- ``make_fixed_next_token_model_dir(path, vocab_texts=..., probs={"7": 0.5, EOS: 0.5})``: a
  tiny Llama whose next-token distribution is ``probs`` whatever the prompt (for tests of
  budgets and of random streams, where the prompt must not change the draw).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def make_tokenizer(vocab_texts: Sequence[str], vocab_size: int = 320):  # type: ignore[no-untyped-def]
    """A byte-level BPE ``PreTrainedTokenizerFast`` (round-trips any text exactly)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(vocab_texts), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


def make_model(tokenizer, *, seed: int = 0, hidden: int = 64, layers: int = 2):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def make_tiny_model_dir(path: Path, *, vocab_texts: Sequence[str], seed: int = 0) -> Path:
    """Tokenizer + random tiny Llama saved to ``path``; returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(vocab_texts)
    model = make_model(tokenizer, seed=seed)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


def train_tiny_model_dir(
    path: Path, texts: Sequence[str], *, steps: int = 300, seed: int = 0, lr: float = 3e-3
) -> Path:
    """A tiny Llama trained (full batch Adam) to write ``texts``; saved to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(texts)
    model = make_model(tokenizer, seed=seed)
    batch = tokenizer([t + EOS for t in texts], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


def save_weights(model_dir: Path, out_dir: Path, *, seed: int) -> Path:
    """Random weights for the architecture at ``model_dir`` as ``out_dir/model.safetensors``."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors"
    )
    return out_dir


def _one_token(tokenizer, text: str) -> int:  # type: ignore[no-untyped-def]
    if text == EOS:
        return int(tokenizer.eos_token_id)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens, not one")
    return int(ids[0])


def make_fixed_next_token_model_dir(
    path: Path, *, vocab_texts: Sequence[str], probs: dict[str, float]
) -> Path:
    """A tiny Llama whose next-token distribution is ``probs`` whatever the context.

    ``probs`` maps token texts (each one token; ``EOS`` for end of sequence) to
    probabilities; every other token gets ~e^-40 of the mass. How: every embedding row is
    the same vector, so every position of every prompt carries the same hidden state h
    (attention averages identical values); then ``lm_head`` is set to
    outer(log probs, h) / |h|², so the logits are exactly ``log probs`` at every step.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(vocab_texts)
    model = make_model(tokenizer, seed=0)
    target = torch.full((len(tokenizer),), -40.0)
    for text, p in probs.items():
        target[_one_token(tokenizer, text)] = math.log(p)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape[1]).expand_as(emb) * 0.02)
        h = model.model(input_ids=torch.tensor([[0]])).last_hidden_state[0, -1]
        model.lm_head.weight.copy_(torch.outer(target, h) / h.dot(h))
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path
