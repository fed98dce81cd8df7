"""A run directory and its checkpoints, evaluated through freshly started services: the
library half of ``vineppo eval`` and ``vineppo analyze-values`` (``services.trainer.cli.eval``),
also used by the demo and bench scripts.

Evaluation and analysis start their own services (reward on loopback, ``local_replicas``
torch-engine workers; a private queue prefix when ``redis_url`` is set) serving the chosen
checkpoint as policy version 0, so sampling goes through the rollout queue and grading
through the reward service exactly as in training.

Checkpoint selection (`select_checkpoint`): candidates are the versions a run validated
(``acc/val`` rows of ``metrics.jsonl``) whose weights still exist: ``best/`` (the loop keeps
the best-by-validation policy there), the last two ``policies/policy-vN`` and the SFT model
(version 0). The highest ``acc/val`` wins (ties: the earlier version).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_config(run_dir: Path) -> Any:
    from services.trainer.config import RunConfig

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory?")
    return RunConfig.model_validate_json(path.read_text())


def select_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The best available checkpoint of a run by validation Pass@1 (see module docstring)."""
    from services.trainer.client.weights import list_policies, policy_dir

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    acc = {int(r["version"]): float(r["acc/val"]) for r in rows if "acc/val" in r}
    paths: dict[int, Path] = {
        v: policy_dir(run_dir / "policies", v) for v in list_policies(run_dir / "policies")
    }
    if Path(cfg.model.policy).is_dir():
        paths.setdefault(0, Path(cfg.model.policy))
    best_meta = run_dir / "best" / "best.json"
    if best_meta.is_file():
        paths[int(json.loads(best_meta.read_text())["version"])] = run_dir / "best"
    candidates = sorted((v for v in acc if v in paths), key=lambda v: (-acc[v], v))
    if not candidates:
        raise FileNotFoundError(f"{run_dir}: no validated version has weights left")
    chosen = candidates[0]
    overall = min(acc, key=lambda v: (-acc[v], v))
    return {
        "version": chosen,
        "path": str(paths[chosen]),
        "acc/val": acc[chosen],
        "best_validated_version": overall,
        "best_is_available": overall == chosen,
        "candidates": {str(v): acc[v] for v in sorted(paths) if v in acc},
    }


def prompts_for(tokenizer: Any, examples: list[Any], shots: Sequence[Any] = ()) -> list[str]:
    """Prompts exactly as the loop formats them (``shots``: its few-shot worked examples)."""
    from shared.prompts import format_prompt, style_for

    style = style_for(tokenizer)
    return [
        format_prompt(
            x.question, style=style, dataset=x.dataset, tokenizer=tokenizer, few_shot=shots
        )
        for x in examples
    ]


def _services(checkpoint: Path, svc: dict[str, Any]) -> Any:
    from services.trainer.client.local_services import run_services

    prefix = f"vineppo-eval-{uuid.uuid4().hex[:8]}:"
    return run_services(checkpoint, Path(checkpoint).parent, queue_prefix=prefix, **svc)


async def eval_checkpoint(
    checkpoint: Path,
    examples: list[Any],
    *,
    seeds: int,
    temperature: float,
    max_tokens: int,
    seed: int = 1234,
    top_p: float = 1.0,
    progress: bool = True,
    shots: Sequence[Any] = (),
    **svc: Any,
) -> Any:
    """Pass@1 (``evaluate.PassAt1``) of ``checkpoint`` through freshly started services;
    ``svc`` goes to ``run_services`` (redis_url, reward_url, local_replicas, device)."""
    from services.trainer.client.jobs import wait_for_replicas
    from services.trainer.evaluation.evaluate import evaluate
    from services.trainer.runtime.model import load_tokenizer

    prompts = prompts_for(load_tokenizer(checkpoint), examples, shots)
    async with _services(checkpoint, svc) as s:
        await wait_for_replicas(s.queue, 0, s.min_replicas, s.replica_timeout_s)
        return await evaluate(
            s.queue,
            s.grader,
            examples,
            prompts,
            version=0,
            seeds=seeds,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            top_p=top_p,
            progress=progress,
        )


def run_policy(run_dir: Path) -> tuple[Path, Path | None]:
    """(policy dir, critic.pt or None) of a run's newest state: the policy of the newest
    checkpoint when its critic exists (they belong together), else the newest policy."""
    from services.trainer.client.weights import list_policies, policy_dir
    from services.trainer.runtime.checkpoint import latest_checkpoint

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is not None and (ckpt / "critic.pt").is_file():
        pol = policy_dir(run_dir / "policies", int(ckpt.name.split("-")[1]))
        if pol.is_dir():
            return pol, ckpt / "critic.pt"
    versions = list_policies(run_dir / "policies")
    if not versions:
        raise FileNotFoundError(f"{run_dir}/policies holds no policy-vN directory")
    return policy_dir(run_dir / "policies", versions[-1]), None


def load_critic(policy: Path, critic_file: Path | None = None) -> Any:
    """The PPO critic: a ``Critic.save_pretrained`` dir, or a loop checkpoint's ``critic.pt``
    (engine state) on top of the policy's body."""
    import torch

    from services.trainer.runtime.model import Critic

    if critic_file is None or critic_file.is_dir():
        return Critic.from_pretrained(critic_file or policy).eval()
    critic = Critic.from_pretrained(policy)
    state = torch.load(critic_file, map_location="cpu", weights_only=False)
    critic.load_state_dict(state["module"])
    return critic.eval()


async def analyze_checkpoint(
    policy: Path,
    examples: list[Any],
    cfg: Any,
    out_dir: Path,
    *,
    critic: Any = None,
    shots: Sequence[Any] = (),
    **svc: Any,
) -> dict[str, Any]:
    """Probe values (``value_probe.probe_values``), summarize, write ``analysis.json`` and
    ``values-*.png`` into ``out_dir``; return the JSON document."""
    from services.trainer.client.jobs import wait_for_replicas
    from services.trainer.evaluation.analysis import plot_analysis, summarize
    from services.trainer.evaluation.value_probe import probe_values
    from services.trainer.runtime.model import load_tokenizer

    tok = load_tokenizer(policy)
    prompts = prompts_for(tok, examples, shots)
    async with _services(policy, svc) as s:
        await wait_for_replicas(s.queue, 0, s.min_replicas, s.replica_timeout_s)
        records = await probe_values(s, tok, examples, prompts, cfg, critic=critic)
    metrics = summarize(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"policy": str(policy), "metrics": metrics, "records": records}
    (out_dir / "analysis.json").write_text(json.dumps(doc, indent=1))
    plot_analysis(records, metrics, out_dir / "values-")
    return doc
