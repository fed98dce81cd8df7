"""The torch engine's batched decode against a one-row-at-a-time reference.

The reference is the engine's algorithm written plainly: each (prefix, sample) row alone,
unpadded, a fresh ``DynamicCache``, the same ``sample_next`` fed from the row's own
``random.Random(f"{seed}/{stream}/{j}")``, stopping at EOS or the row's budget. The batched
engine (left padding, forked reserved caches, finished rows compacted out, chunks of
``max_batch``) must give the same tokens and log-probs (1e-5) — so no speed-up of the
batched path may change what a seed samples.

Batched and one-row forward passes differ by float rounding (~1e-7 in the logits), so a
uniform that lands within that of a CDF boundary may pick the neighbouring token. The
reference records each draw's margin (distance of the uniform's target to the nearest
boundary of the chosen token, as a fraction of the mass); a row may diverge only at a draw
whose margin is below ``TIE``, and is compared up to there.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from services.rollout.engine import Prefix
from services.rollout.engine.kv_cache import ReservedLayer, compact, swap_remove_order
from services.rollout.engine.sampling import sample_next, top_p_mask
from services.rollout.engine.torch_engine import TorchEngine
from shared.schemas import SamplingParams

PROMPTS = ["Question: Tom has", "He buys 4 more, so 3 + 4 = 7 and then some", "#", "Tom"]
TIE = 1e-5  # a draw this close to a CDF boundary may go either way under float rounding


def draw_margin(logits: torch.Tensor, sp: SamplingParams, u: float, token: int) -> float:
    """How far the draw that chose ``token`` was from choosing another (fraction of mass)."""
    logits = logits.float().view(-1)
    if sp.temperature == 0.0:  # greedy: the gap to the runner-up, as a probability
        top2 = torch.softmax(logits, -1).topk(2).values
        return float(top2[0] - top2[1])
    probs = torch.softmax(logits / sp.temperature, -1)
    weights = probs * top_p_mask(probs.view(1, -1), sp.top_p).view(-1)
    cdf = weights.double().cumsum(-1)
    target = u * float(cdf[-1])
    low = float(cdf[token - 1]) if token > 0 else 0.0
    return min(abs(target - low), abs(float(cdf[token]) - target)) / float(cdf[-1])


def reference_row(
    engine: TorchEngine, ids: list[int], budget: int, sp: SamplingParams, key: str
) -> tuple[list[int], list[float], str, list[float]]:
    """(tokens, logprobs, finish, margins) of one row decoded alone."""
    from transformers import DynamicCache

    rng = random.Random(key)
    cache = DynamicCache()
    kw = {engine._cache_kw: cache}
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids]), use_cache=True, **kw).logits[:, -1]
        tokens: list[int] = []
        logprobs: list[float] = []
        margins: list[float] = []
        while True:
            u = torch.tensor([rng.random()], dtype=torch.float64)
            tok, lp = sample_next(logits, sp.temperature, sp.top_p, u)
            tokens.append(int(tok))
            logprobs.append(float(lp))
            margins.append(draw_margin(logits, sp, float(u), int(tok)))
            if tokens[-1] in engine.eos_ids:
                return tokens, logprobs, "stop", margins
            if len(tokens) >= budget:
                return tokens, logprobs, "length", margins
            logits = engine.model(input_ids=tok.view(1, 1), use_cache=True, **kw).logits[:, -1]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TorchEngine:
    eng = TorchEngine(tiny_model_dir, max_batch=16)
    # a random model rarely samples EOS: let 12 more ids end a row (about 4 % per step) so
    # rows finish at scattered steps and the cache is compacted often
    vocab = int(eng.model.get_input_embeddings().weight.shape[0])
    eng.eos_ids = eng.eos_ids | set(range(vocab - 12, vocab))
    return eng


@pytest.mark.parametrize(
    ("temperature", "top_p", "k"), [(0.6, 1.0, 5), (1.0, 0.9, 3), (0.0, 1.0, 2)]
)
async def test_batched_decode_equals_one_row_reference(
    engine: TorchEngine, temperature: float, top_p: float, k: int
) -> None:
    sp = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=40, seed=11)
    prefixes = [
        Prefix(PROMPTS[0]),
        Prefix(PROMPTS[1], max_tokens=25),  # its own budget
        Prefix(PROMPTS[2], stream=7),  # a global stream position
        Prefix(PROMPTS[0]),  # a duplicate prefix: prefilled once, its own streams
        Prefix(PROMPTS[3], " 3 apples", max_tokens=9),
    ]
    out = await engine.continue_from(prefixes, k, sp)  # 5k rows > max_batch 16: chunks
    finished_early = near_ties = 0
    for i, (p, per) in enumerate(zip(prefixes, out, strict=True)):
        stream = i if p.stream is None else p.stream
        budget = min(p.max_tokens or sp.max_tokens, sp.max_tokens)
        for j, c in enumerate(per):
            tokens, logprobs, finish, margins = reference_row(
                engine, engine.encode(p), budget, sp, f"{sp.seed}/{stream}/{j}"
            )
            same = next(
                (n for n, (a, b) in enumerate(zip(c.token_ids, tokens, strict=False)) if a != b),
                min(len(c.token_ids), len(tokens)),
            )
            torch.testing.assert_close(
                torch.tensor(c.logprobs[:same]), torch.tensor(logprobs[:same]), atol=1e-5, rtol=0
            )
            if same < len(tokens) or len(c.token_ids) != len(tokens):
                assert same < len(tokens) and margins[same] < TIE, (i, j, same)
                near_ties += 1
                continue
            assert c.finish_reason == finish
            finished_early += finish == "stop"
    assert near_ties <= 1  # float ties are rare: more means the batched path drifted
    if temperature > 0:
        assert finished_early >= 2  # rows did leave the batch mid-way


def test_swap_remove_order_by_hand() -> None:
    # rows 1 and 3 finished: kept 4 and 5 (past the new end 4) move into slots 1 and 3
    assert swap_remove_order([0, 2, 4, 5]) == [0, 4, 2, 5]
    assert swap_remove_order([0, 1, 2]) == [0, 1, 2]  # only the tail finished: no moves
    assert swap_remove_order([3]) == [3]


def test_compact_equals_index_select() -> None:
    torch.manual_seed(0)
    keys, values = torch.randn(6, 2, 5, 4), torch.randn(6, 2, 5, 4)
    layer = ReservedLayer(keys, values, capacity=9)
    layer.update(torch.randn(6, 2, 1, 4), torch.randn(6, 2, 1, 4))
    full_k, full_v = layer.keys.clone(), layer.values.clone()

    order = swap_remove_order([0, 2, 4, 5])
    compact(SimpleNamespace(layers=[layer]), order)
    assert torch.equal(layer.keys, full_k[order]) and torch.equal(layer.values, full_v[order])
    new_k = torch.randn(4, 2, 1, 4)
    k, _ = layer.update(new_k, new_k)  # still writes in place after the compaction
    assert k.shape == (4, 2, 7, 4) and torch.equal(k[:, :, -1:], new_k)
