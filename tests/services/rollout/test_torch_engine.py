"""The torch engine: exact greedy vs transformers, forked-cache log-probs, seeds, stops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.rollout.engine import EngineInputError, Prefix, make_engine
from services.rollout.engine.torch_engine import TorchEngine
from shared.schemas import SamplingParams
from tests.services.rollout.tiny import save_weights

PROMPTS = ["Question: Tom has", "He buys 4 more, so 3 + 4 = 7 and then some more words", "#"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TorchEngine:
    return TorchEngine(tiny_model_dir, max_batch=8)


async def test_greedy_equals_transformers_generate(engine: TorchEngine) -> None:
    from transformers import AutoModelForCausalLM

    sp = SamplingParams(temperature=0.0, max_tokens=24)
    ours = await engine.generate(PROMPTS, 2, sp)  # one left-padded batch of 6 rows
    ref_model = AutoModelForCausalLM.from_pretrained(engine.model_dir)
    for prompt, comps in zip(PROMPTS, ours, strict=True):
        enc = engine.tokenizer(prompt, return_tensors="pt")
        gen = ref_model.generate(**enc, do_sample=False, max_new_tokens=24)
        ref = gen[0, enc["input_ids"].shape[1] :].tolist()
        for c in comps:
            assert c.token_ids == ref
            assert len(c.logprobs) == len(ref)


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


async def test_same_seed_same_samples_other_seed_differs(engine: TorchEngine) -> None:
    sp = SamplingParams(temperature=1.0, max_tokens=12, seed=123)
    a = await engine.generate(PROMPTS, 3, sp)
    b = await engine.generate(PROMPTS, 3, sp)
    c = await engine.generate(PROMPTS, 3, sp.model_copy(update={"seed": 124}))
    tokens = lambda res: [[x.token_ids for x in per] for per in res]  # noqa: E731
    assert tokens(a) == tokens(b)
    assert tokens(a) != tokens(c)
    assert len({tuple(x.token_ids) for x in a[0]}) > 1  # the k samples differ from each other
    # a row's samples do not depend on the rest of the batch
    alone = await engine.generate(PROMPTS[:1], 3, sp)
    assert tokens(alone)[0] == tokens(a)[0]


def _tokens(res):  # type: ignore[no-untyped-def]
    return [[x.token_ids for x in per] for per in res]


async def test_streams_are_keyed_by_global_position(engine: TorchEngine) -> None:
    """Sample j of prompt i draws from (seed, stream_offset + i, j): a prompt sent alone at
    its global position reproduces its samples from the whole batch."""
    sp = SamplingParams(temperature=1.0, max_tokens=12, seed=9)
    whole = await engine.generate(PROMPTS, 3, sp)
    tail = await engine.generate(PROMPTS[1:], 3, sp, stream_offset=1)
    assert _tokens(tail) == _tokens(whole)[1:]
    by_prefix = await engine.continue_from([Prefix(PROMPTS[2], stream=2)], 3, sp)
    assert _tokens(by_prefix) == _tokens(whole)[2:]
    assert _tokens(await engine.generate(PROMPTS[1:], 3, sp)) != _tokens(tail)  # offset 0


async def test_prefix_max_tokens_caps_only_its_own_rows(engine: TorchEngine) -> None:
    sp = SamplingParams(temperature=1.0, max_tokens=10, seed=4)
    free = await engine.continue_from([Prefix(PROMPTS[0]), Prefix(PROMPTS[1])], 4, sp)
    capped = await engine.continue_from(
        [Prefix(PROMPTS[0], max_tokens=3), Prefix(PROMPTS[1], max_tokens=50)], 4, sp
    )
    for f, c in zip(free[0], capped[0], strict=True):
        assert c.token_ids == f.token_ids[:3]  # the same stream, cut at its own budget
        assert c.finish_reason == ("length" if len(f.token_ids) > 3 else f.finish_reason)
    assert _tokens(capped)[1] == _tokens(free)[1]  # never above sampling.max_tokens
    assert all(len(c.token_ids) <= 10 for c in capped[1])
    with pytest.raises(EngineInputError, match="max_tokens"):
        await engine.continue_from([Prefix(PROMPTS[0], max_tokens=0)], 1, sp)
    # a prefix whose own budget fits the context is served though sampling.max_tokens would not
    long_prompt = "Tom " * 60
    room = engine.max_context() - len(engine.encode(Prefix(long_prompt)))
    assert 0 < room < 200
    big = SamplingParams(temperature=1.0, max_tokens=200, seed=4)
    with pytest.raises(EngineInputError, match="exceeds"):
        await engine.continue_from([Prefix(long_prompt)], 1, big)
    (per,) = await engine.continue_from([Prefix(long_prompt, max_tokens=room)], 1, big)
    assert len(per[0].token_ids) <= room


async def test_token_ids_prefix_is_continued_exactly(engine: TorchEngine) -> None:
    ids = engine.tokenizer("Question: Tom")["input_ids"] + [7, 8, 9]  # not a re-tokenisation
    sp = SamplingParams(temperature=0.0, max_tokens=6)
    (per,) = await engine.continue_from([Prefix("ignored", token_ids=tuple(ids))], 1, sp)
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(engine.model_dir).generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False, max_new_tokens=6,
    )  # fmt: skip
    assert per[0].token_ids == ref[0, len(ids) :].tolist()


async def test_stop_strings_eos_and_length(engine: TorchEngine) -> None:
    sp = SamplingParams(temperature=1.0, max_tokens=40, seed=3)
    free = (await engine.generate(PROMPTS[:1], 4, sp))[0]
    text = free[0].text
    stop = text[5:7]  # a string the sampled text contains, so the run must stop at it
    stopped = (await engine.generate(PROMPTS[:1], 4, sp.model_copy(update={"stop": [stop]})))[0]
    assert stopped[0].finish_reason == "stop"
    assert stop in stopped[0].text and len(stopped[0].token_ids) < len(free[0].token_ids)
    assert text.startswith(stopped[0].text)
    for c in free:
        assert (c.finish_reason == "length") == (len(c.token_ids) == 40)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] in engine.eos_ids


async def test_too_long_prompt_and_empty_prompt_refused(engine: TorchEngine) -> None:
    long_prompt = "Tom " * 400
    with pytest.raises(EngineInputError, match="exceeds"):
        await engine.generate([long_prompt], 1, SamplingParams(max_tokens=8))
    with pytest.raises(EngineInputError):
        await engine.continue_from([Prefix("", token_ids=())], 1, SamplingParams(max_tokens=8))


async def test_load_weights_changes_outputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    eng = make_engine("torch", tiny_model_dir)
    sp = SamplingParams(temperature=0.0, max_tokens=10)
    before = await eng.generate(PROMPTS, 1, sp)
    await eng.load_weights(3, str(save_weights(tiny_model_dir, tmp_path / "v3", seed=99)))
    after = await eng.generate(PROMPTS, 1, sp)
    assert eng.version == 3
    assert [c[0].token_ids for c in before] != [c[0].token_ids for c in after]
    assert eng.stats().sampled_tokens == 60 and eng.stats().tokens_per_s > 0


def test_make_engine_unknown_kind_lists_known(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="torch, vllm"):
        make_engine("tensorrt", tiny_model_dir)


def _other_arch(name: str, tok):  # type: ignore[no-untyped-def]
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if name == "gpt2":
        cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)  # fmt: skip
        return GPT2LMHeadModel(cfg)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, eos_token_id=tok.eos_token_id)  # fmt: skip
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
