"""DeepSpeed wrapping on CPU/gloo: 2 ranks under ZeRO-2 take the same steps as plain torch
(AdamW + grad-norm clip + LR schedule) on the whole batch in one process."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from services.trainer.config import lr_multiplier
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

    from services.trainer.distributed import all_reduce_mean, is_main, wrap

    per = x.shape[0] // world
    engine = wrap(_model(), lr=LR, grad_clip=CLIP, zero_stage=stage, total_steps=TOTAL,
                  warmup_steps=0, micro_batch_size=per)  # fmt: skip
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
