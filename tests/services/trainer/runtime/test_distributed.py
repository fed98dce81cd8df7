"""DeepSpeed wrapping on CPU/gloo: 2 ranks under ZeRO-2 take the same steps as plain torch
(AdamW + grad-norm clip + LR schedule) on the whole batch in one process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from services.trainer.algos.schedule import lr_multiplier
from tests.support import free_port

STEPS, LR, CLIP, TOTAL = 2, 0.05, 0.5, 4


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _run(rank: int, world: int, port: int, stage: int, x: torch.Tensor, out: dict) -> None:
    env = {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": rank, "MASTER_PORT": port}
    os.environ.update({k: str(v) for k, v in env.items()}, MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from services.trainer.runtime.distributed import all_reduce_mean, is_main, wrap

    per = x.shape[0] // world
    engine = wrap(
        _model(),
        lr=LR,
        grad_clip=CLIP,
        zero_stage=stage,
        total_steps=TOTAL,
        warmup_steps=0,
        micro_batch_size=per,
    )
    mine = x[rank * per : (rank + 1) * per]
    for _ in range(STEPS):
        loss = engine(mine).pow(2).mean()
        engine.backward(loss)
        engine.step()
    params = torch.cat([p.detach().flatten() for p in engine.module.parameters()])
    out[rank] = (params.clone(), is_main(), float(all_reduce_mean(loss.detach())))
    dist.destroy_process_group()


def _reference(x: torch.Tensor) -> torch.Tensor:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = LR * lr_multiplier(step, total_steps=TOTAL, warmup_steps=0)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.slow
@pytest.mark.server
def test_two_ranks_zero2_match_plain_torch_on_one_process() -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)) * 3
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_run, args=(2, free_port(), 2, x, out), nprocs=2, join=True)
        res = dict(out)
    (p0, main0, loss0), (p1, main1, loss1) = res[0], res[1]
    assert main0 and not main1
    assert loss0 == pytest.approx(loss1)  # all_reduce_mean gives every rank the same number
    torch.testing.assert_close(p0, p1)  # ranks stay in sync
    ref = _reference(x)
    assert not torch.equal(ref, torch.cat([p.detach().flatten() for p in _model().parameters()]))
    torch.testing.assert_close(p0, ref, rtol=1e-5, atol=1e-6)  # grads averaged, clipped, AdamW


# ----------------------------------------------------------------------------- ppo_epochs
# One PPO update (2 epochs × 2 mini-batches of 4 episodes, micro-batch 2) of a tiny Llama on
# 2 ranks (each trains its own half of every mini-batch) must equal the same update in one
# process, for PPO (policy + critic, GAE) and VinePPO (precomputed advantages), ZeRO 0, 2, 3.
B, L, MINI, MICRO, TEMP, STAGES = 8, 12, 4, 2, 0.7, (0, 2, 3)


def _tiny_llama():  # -> LlamaConfig
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _batch():  # -> Batch: 8 right-padded prompt+response rows, 2-token reasoning steps
    from services.trainer.data.episodes import Batch

    g = torch.Generator().manual_seed(7)
    ids = torch.zeros(B, L, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    resp = torch.zeros(B, L - 1)
    steps = torch.full((B, L - 1), -1, dtype=torch.long)
    for row in range(B):
        p = 3 + row % 3  # prompt 3..5 tokens, response 3..6 tokens
        r = 3 + (row * 5) % 4
        ids[row, : p + r] = torch.randint(3, 40, (p + r,), generator=g)
        attn[row, : p + r] = 1
        resp[row, p - 1 : p + r - 1] = 1.0
        steps[row, p - 1 : p + r - 1] = torch.arange(r) // 2
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    return Batch(ids, attn, resp, steps, rewards, torch.arange(B) // 4)


def _engines(algo: str, stage: int, world: int) -> tuple:
    """(policy engine, critic engine or None, π_ref) from the same seeded initialisation."""
    import copy

    from transformers import LlamaForCausalLM, LlamaModel

    from services.trainer.runtime.distributed import wrap
    from services.trainer.runtime.model import Critic

    torch.manual_seed(0)
    policy = LlamaForCausalLM(_tiny_llama())
    ref = copy.deepcopy(policy).eval()
    with torch.no_grad():  # π_ref ≠ π_θ so the KL term has a gradient from the first step
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    critic = Critic(LlamaModel(_tiny_llama()), 16) if algo == "ppo" else None
    common = dict(
        lr=1e-2,
        grad_clip=1.0,
        zero_stage=stage,
        total_steps=8,
        warmup_steps=0,
        micro_batch_size=MICRO,
        grad_accum_steps=MINI // (MICRO * world),
        zero_extra={"stage3_param_persistence_threshold": 0},
    )
    # (threshold 0: ZeRO-3 partitions even this tiny model's parameters)
    crit = wrap(critic, **common) if critic is not None else None
    return wrap(policy, **common), crit, ref


def _flat(engine: object, stage: int) -> torch.Tensor:
    from services.trainer.runtime.distributed import gathered_params

    with gathered_params(engine.module, stage):  # type: ignore[attr-defined]
        return torch.cat([p.detach().flatten().clone() for p in engine.parameters()])  # type: ignore[attr-defined]


def _update(algo: str, stage: int, rank: int, world: int, root: str) -> dict:
    """Build the models, compute advantages, run `ppo_epochs`; the parameters afterwards,
    the policy saved by `save_policy` (every rank calls it) under ``root``, and for ``ppo``
    a checkpoint round trip (`save_checkpoint`, `load_checkpoint` into fresh engines, one
    more update on both)."""
    from services.trainer.algos.advantages import AdvantageInputs, compute_advantages
    from services.trainer.client.weights import save_policy
    from services.trainer.config import PPOConfig
    from services.trainer.rl.ppo import UpdateInputs, critic_values, policy_logprobs, ppo_epochs

    engine, crit, ref = _engines(algo, stage, world)
    batch = _batch()
    old = policy_logprobs(engine, batch, TEMP, MICRO)
    ref_lp = policy_logprobs(ref, batch, TEMP, MICRO)
    inputs = AdvantageInputs(
        rewards=batch.rewards,
        response_mask=batch.response_mask,
        step_ids=batch.step_ids.clamp(min=0),
    )
    old_values = returns = None
    if crit is not None:
        old_values = inputs.values = critic_values(crit, batch, MICRO)
        adv, extra = compute_advantages("gae", inputs)
        returns = extra["returns"]
    else:
        inputs.step_values = torch.rand(B, 3, generator=torch.Generator().manual_seed(3))
        adv, _ = compute_advantages("vine", inputs)
    cfg = PPOConfig(
        mini_batch_size=MINI, micro_batch_size=MICRO, epochs=2, kl_coef=0.05, whiten_advantages=True
    )
    upd = UpdateInputs(batch, adv, old, ref_lp, old_values=old_values, returns=returns)
    stats = ppo_epochs(
        engine, crit, upd, cfg, TEMP, torch.Generator().manual_seed(1), rank=rank, world_size=world
    )
    out = {
        "partitioned": all(p.numel() == 0 for p in engine.module.parameters()),
        "steps": engine.global_steps,
        "stats": stats,
        "saved": str(save_policy(engine.module, None, Path(root) / f"{algo}-{stage}", 1)),
        "policy": _flat(engine, stage),
    }
    if crit is None:
        return out
    out["critic"] = _flat(crit, stage)
    out["resume"] = _resume(engine, crit, upd, cfg, stage, rank, world, Path(root) / f"ck{stage}")
    return out


def _resume(engine, crit, upd, cfg, stage: int, rank: int, world: int, root: Path) -> object:
    """Checkpoint, restore into fresh engines, train both once more: (params, params, state)
    — or the error a ZeRO-3 checkpoint raises."""
    from services.trainer.rl.ppo import ppo_epochs
    from services.trainer.runtime.checkpoint import load_checkpoint, save_checkpoint

    try:
        path = save_checkpoint(root, 1, {"policy": engine, "critic": crit}, {"mark": 7})
    except NotImplementedError as e:
        return str(e)
    fresh, fresh_crit, _ = _engines("ppo", stage, world)
    state = load_checkpoint(path, {"policy": fresh, "critic": fresh_crit})
    for eng, c in ((engine, crit), (fresh, fresh_crit)):
        ppo_epochs(
            eng, c, upd, cfg, TEMP, torch.Generator().manual_seed(2), rank=rank, world_size=world
        )
    return _flat(engine, stage), _flat(fresh, stage), fresh.global_steps, state["mark"]


def _update_worker(index: int, ports: tuple[int, int], root: str, out: dict) -> None:
    """Processes 0 and 1: a 2-rank group running ZeRO 0, 2, 3; process 2: one process alone
    (ZeRO 0), the reference. One spawn, so the slow imports happen once, in parallel."""
    alone = index == 2
    rank, world = (0, 1) if alone else (index, 2)
    env = {
        "RANK": rank,
        "WORLD_SIZE": world,
        "LOCAL_RANK": rank,
        "MASTER_PORT": ports[1] if alone else ports[0],
    }
    os.environ.update({k: str(v) for k, v in env.items()}, MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    stages = (0,) if alone else STAGES
    root = f"{root}/{'alone' if alone else 'ranks'}"
    out[index] = {(a, s): _update(a, s, rank, world, root) for s in stages for a in ("ppo", "vine")}
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def updates(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """index -> (algo, stage) -> result; 0 and 1 are the two ranks, 2 the lone process."""
    root = str(tmp_path_factory.mktemp("policies"))
    with mp.Manager() as manager:
        out = manager.dict()
        args = ((free_port(), free_port()), root, out)
        mp.spawn(_update_worker, args=args, nprocs=3, join=True)
        return dict(out)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("algo", ["ppo", "vine"])
def test_ppo_epochs_two_ranks_equal_one_process(updates: dict, algo: str, stage: int) -> None:
    r0, r1, ref = updates[0][(algo, stage)], updates[1][(algo, stage)], updates[2][(algo, 0)]
    # one optimizer step per mini-batch whatever the world size: 2 epochs × 8/4 = 4
    assert ref["steps"] == r0["steps"] == r1["steps"] == 4
    assert r0["partitioned"] == (stage == 3)  # ZeRO-3 really holds slices of the parameters
    init = _initial_policy()
    assert (ref["policy"] - init).abs().max() > 1e-3  # the update did move the policy
    names = ["policy", "critic"] if algo == "ppo" else ["policy"]
    for name in names:
        torch.testing.assert_close(r0[name], r1[name])  # ranks stay in sync
        torch.testing.assert_close(r0[name], ref[name], rtol=1e-4, atol=2e-5)
    for key in ("loss/policy", "kl/ref", "clipfrac", *(["loss/value"] if algo == "ppo" else [])):
        assert r0["stats"][key] == pytest.approx(ref["stats"][key], rel=1e-4, abs=1e-6), key
        assert r0["stats"][key] == r1["stats"][key]  # averaged over ranks
    # the pushed policy is the full model (ZeRO-3 gathers its partitions), written once
    from transformers import LlamaForCausalLM

    assert r0["saved"] == r1["saved"]
    saved = LlamaForCausalLM.from_pretrained(r0["saved"]).parameters()
    torch.testing.assert_close(torch.cat([p.detach().flatten() for p in saved]), r0["policy"])


def _initial_policy() -> torch.Tensor:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return torch.cat([p.detach().flatten() for p in LlamaForCausalLM(_tiny_llama()).parameters()])


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("stage", STAGES)
def test_checkpoint_round_trip_on_two_ranks(updates: dict, stage: int) -> None:
    # after save_checkpoint → load_checkpoint into fresh engines, one more update gives the
    # same parameters as continuing the original (weights, AdamW moments, LR schedule, step)
    for index in (0, 1):
        got = updates[index][("ppo", stage)]["resume"]
        if stage == 3:
            assert "ZeRO-3" in got  # refused, not silently saved empty
            continue
        original, restored, steps, mark = got
        assert (steps, mark) == (8, 7)
        assert not torch.equal(original, updates[index][("ppo", stage)]["policy"])
        torch.testing.assert_close(restored, original, rtol=0, atol=0)


def _rank_zero_work(rank: int, world: int, port: int, out: dict) -> None:
    env = {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": rank, "MASTER_PORT": port}
    os.environ.update({k: str(v) for k, v in env.items()}, MASTER_ADDR="127.0.0.1")
    import asyncio

    import torch.distributed as dist

    from services.trainer.client.local_services import run_services
    from services.trainer.runtime.distributed import (
        RankFailed,
        check_same_on_every_rank,
        init_distributed,
        on_main,
    )

    init_distributed()
    calls: list[int] = []

    async def answer() -> int:
        calls.append(rank)
        return 42

    async def fail() -> int:
        raise TimeoutError("0/1 replicas ready with v1")

    async def services_of_rank_1() -> str:
        if rank != 1:
            return ""
        async with run_services("no-model-loads-here", Path("unused")) as svc:
            try:
                await svc.queue.list_replicas()
            except RuntimeError as e:
                return str(e)
        return "no error"

    res: dict[str, object] = {"value": asyncio.run(on_main(answer)), "calls": calls}
    try:
        asyncio.run(on_main(fail))
    except (TimeoutError, RankFailed) as e:
        res["failure"] = f"{type(e).__name__}: {e}"
    try:
        check_same_on_every_rank("the run config", {"seed": 1 + rank, "algo": "vine"})
    except ValueError as e:
        res["mismatch"] = str(e)
    check_same_on_every_rank("the run config", {"seed": 1})  # agreeing ranks pass
    res["queue"] = asyncio.run(services_of_rank_1())
    out[rank] = res
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.server
def test_rank_zero_work_reaches_every_rank_and_so_do_its_failures() -> None:
    """`on_main`: rank 0 alone does the work, both ranks get its value, and its exception is
    raised on both (rank 1 as `RankFailed` naming it) instead of rank 1 waiting in a
    collective; `check_same_on_every_rank` fails on both ranks naming the key; a rank > 0's
    services (`run_services`) start nothing and raise at first use."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_zero_work, args=(2, free_port(), out), nprocs=2, join=True)
        r0, r1 = out[0], out[1]
    assert r0["value"] == r1["value"] == 42
    assert r0["calls"] == [0] and r1["calls"] == []
    assert r0["failure"] == "TimeoutError: 0/1 replicas ready with v1"
    assert r1["failure"] == "RankFailed: rank 0 failed: TimeoutError: 0/1 replicas ready with v1"
    want = (
        "rank 1 disagrees with rank 0 about the run config (seed=2 vs 1): every rank must run "
        "the same command on the same files"
    )
    assert r0["mismatch"] == r1["mismatch"] == want
    assert r1["queue"].startswith("rank 1 used the queue.list_replicas: only rank 0 talks")
