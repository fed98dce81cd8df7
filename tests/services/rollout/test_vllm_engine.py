"""The vLLM adapter without vLLM: parameter and output conversion, the import guard.

vLLM needs a CUDA GPU, so these tests feed the adapter a fake vLLM *output object* shaped
like ``vllm.RequestOutput`` (hence ``fake_vllm`` in their names).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import pytest

from services.rollout.engine import Prefix, make_engine
from services.rollout.engine.vllm_engine import (
    from_vllm_output,
    prefix_seed,
    request_kwargs,
    to_vllm_kwargs,
)
from shared.schemas import SamplingParams


@dataclass
class _FakeLogprob:  # vllm.sequence.Logprob: .logprob, .rank, .decoded_token
    logprob: float
    rank: int = 1


@dataclass
class _FakeCompletionOutput:  # vllm.outputs.CompletionOutput
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, _FakeLogprob]] | None
    finish_reason: str | None


@dataclass
class _FakeRequestOutput:  # vllm.outputs.RequestOutput
    outputs: list[_FakeCompletionOutput] = field(default_factory=list)


def test_sampling_params_to_vllm_kwargs() -> None:
    sp = SamplingParams(temperature=0.6, top_p=0.9, max_tokens=64, stop=["\n\n"], seed=5)
    kw = to_vllm_kwargs(sp, 9, prefix_seed(sp.seed, 2))
    assert kw == {
        "n": 9, "temperature": 0.6, "top_p": 0.9, "max_tokens": 64, "stop": ["\n\n"],
        "include_stop_str_in_output": True, "seed": prefix_seed(5, 2), "logprobs": 0,
        "skip_special_tokens": True,
    }  # fmt: skip
    assert to_vllm_kwargs(SamplingParams(), 1, None)["stop"] is None
    assert prefix_seed(None, 3) is None
    assert len({prefix_seed(5, i) for i in range(100)}) == 100  # distinct per prefix


def test_request_kwargs_seed_by_stream_and_cap_by_prefix_budget() -> None:
    sp = SamplingParams(temperature=1.0, max_tokens=64, seed=5)
    prefixes = [Prefix("a", stream=16), Prefix("b", max_tokens=10), Prefix("c", max_tokens=99)]
    kws = request_kwargs(prefixes, 4, sp)
    # a prefix's seed comes from its global stream (default: its position in the call)
    assert [kw["seed"] for kw in kws] == [prefix_seed(5, 16), prefix_seed(5, 1), prefix_seed(5, 2)]
    assert [kw["max_tokens"] for kw in kws] == [64, 10, 64]  # own budget, never above the request
    assert {kw["n"] for kw in kws} == {4}
    unseeded = sp.model_copy(update={"seed": None})
    assert request_kwargs([Prefix("a", stream=16)], 4, unseeded)[0]["seed"] is None


def test_fake_vllm_output_conversion() -> None:
    lp = _FakeLogprob
    first_out = _FakeCompletionOutput(
        "4 = 7\n", [11, 12], [{11: lp(-0.5)}, {12: lp(-0.25), 3: lp(-2.0)}], "stop"
    )
    second_out = _FakeCompletionOutput("abc", [5, 6], [{5: lp(-1.0)}, {6: lp(-3.0)}], "length")
    out = _FakeRequestOutput([first_out, second_out])
    first, second = from_vllm_output(out)
    assert first.text == "4 = 7\n" and first.token_ids == [11, 12]
    assert first.logprobs == [-0.5, -0.25] and first.finish_reason == "stop"
    assert second.finish_reason == "length" and second.logprobs == [-1.0, -3.0]


def test_fake_vllm_output_without_logprobs_is_an_error() -> None:
    out = _FakeRequestOutput([_FakeCompletionOutput("abc", [5], None, "stop")])
    with pytest.raises(RuntimeError, match="no log-prob"):
        from_vllm_output(out)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM installed")
def test_vllm_engine_without_vllm_says_what_to_install(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="pip install 'vineppo\\[gpu\\]'"):
        make_engine("vllm", tmp_path)
