"""The torch engine's own behaviour: forked-cache log-probs under top-p (no nucleus
renormalisation), other architectures. The interface tests both engines share are in
test_engines.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.rollout.engine import Prefix
from services.rollout.engine.torch_engine import TorchEngine
from shared.schemas import SamplingParams

PROMPTS = ["Question: Tom has", "He buys 4 more, so 3 + 4 = 7 and then some more words", "#"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TorchEngine:
    return TorchEngine(tiny_model_dir, max_batch=8)


def _full_logprobs(
    engine: TorchEngine, prefix: list[int], cont: list[int], t: float
) -> list[float]:
    """Recompute log_softmax(logits / T) of ``cont`` from one unpadded full forward pass."""
    ids = torch.tensor([prefix + cont])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0].float()  # (L, V)
    logp = torch.log_softmax(logits / t, dim=-1)
    pos = torch.arange(len(prefix) - 1, len(prefix) + len(cont) - 1)
    return logp[pos, torch.tensor(cont)].tolist()


async def test_forked_cache_logprobs_equal_full_recompute(engine: TorchEngine) -> None:
    """Under top-p the torch engine reports log_softmax(logits / T), not renormalised over
    the nucleus (vLLM's are: the shared tests compare both at top_p = 1)."""
    sp = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=16, seed=7)
    prefixes = [
        Prefix(PROMPTS[0], " 3 apples"),
        Prefix(PROMPTS[1]),
        Prefix(PROMPTS[0], " 3 apples"),
    ]
    out = await engine.continue_from(prefixes, 5, sp)  # 15 rows > max_batch: chunked
    assert [len(per) for per in out] == [5, 5, 5]
    for p, per in zip(prefixes, out, strict=True):
        ids = engine.encode(p)
        for c in per:
            full = _full_logprobs(engine, ids, c.token_ids, 0.8)
            assert max(abs(a - b) for a, b in zip(full, c.logprobs, strict=True)) < 1e-4


def _other_arch(name: str, tok):  # type: ignore[no-untyped-def]
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if name == "gpt2":
        cfg = GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=128,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )
        return GPT2LMHeadModel(cfg)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tok.eos_token_id,
    )
    return Qwen2ForCausalLM(cfg)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
async def test_other_architectures_greedy_equals_transformers(
    arch: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    _other_arch(arch, tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    eng = TorchEngine(tmp_path)
    ours = await eng.generate(PROMPTS[:2], 2, SamplingParams(temperature=0.0, max_tokens=12))
    ref_model = AutoModelForCausalLM.from_pretrained(tmp_path)
    for prompt, comps in zip(PROMPTS[:2], ours, strict=True):
        # AutoTokenizer picks a model-specific class (Qwen2Tokenizer) on reload: use the engine's
        enc = eng.tokenizer(prompt, return_tensors="pt")
        gen = ref_model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=0)
        assert all(c.token_ids == gen[0, enc["input_ids"].shape[1] :].tolist() for c in comps)
