"""Decode speed of the torch engine vs a bare transformers KV-cache loop, on the demo's model.

The model is the demo's from-scratch Llama ("tiny" preset: hidden 128, 4 layers, its BPE
tokenizer trained on the built-in arithmetic task's text), randomly initialised (speed does
not depend on the weights; ``--model-dir`` runs a trained one instead). Work, one torch
thread as the demo runs it:

(a) ``TorchEngine.generate``: P arithmetic prompts x 4 samples = batch 8, 32, 64, 128, 256
    (``max_batch`` = the batch), 96 tokens, T = 0.6, top_p 1, seed 0;
(b) the bare loop: the same rows prefilled left-padded, then per step
    ``model(tok, past_key_values=DynamicCache) + softmax(logits / T) + multinomial``;
(a') the same with rows that end early (10 token ids act as EOS: ~9 rows in 10 end before
    96 tokens, as a trained policy's rows do), batch 32 and 128;
(c) MC values: ``continue_from`` on step-boundary prefixes (the gold solutions cut at every
    line) x K = 3 continuations with each state's remaining budget: the engine part of
    ``estimate_values`` (grading excluded).

EOS is off in (a) and (c) (``engine.eos_ids = set()``) so every row samples its full budget,
as the bare loop does. Each ``--roots`` entry is a checkout whose ``services/rollout/engine``
is measured (before/after in one run: ``git worktree add /tmp/engine-old <rev>``); every
measurement runs in a fresh subprocess, the roots alternating, ``--repeats`` times; the
table keeps each cell's best run (by tokens per CPU second: with one torch thread the
process's CPU time is the work done, little affected by other jobs on a shared machine),
with its wall-clock rate and the load average next to it.

    .venv/bin/python -m bench.engine_speed          # ~2 min per root and repeat, loaded 2 cores
    .venv/bin/python -m bench.engine_speed --roots /tmp/engine-old,. --profile
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (8, 32, 64, 128, 256)
EARLY_BATCHES = (32, 128)
PROFILE_BATCH = 128
SAMPLES = 4


def build_model(out: Path, preset: str) -> Path:
    """The demo's from-scratch model (random init) and tokenizer, saved to ``out``."""
    sys.path.insert(0, str(ROOT))
    from services.trainer.runtime.model import build_tiny_model
    from shared.datasets import load_examples
    from shared.prompts import format_prompt

    train = load_examples("arithmetic", "train", n=2000, arithmetic={"max_steps": 4})
    texts = [format_prompt(e.question) + e.solution for e in train]
    return build_tiny_model(out, texts, preset=preset, seed=0)


# -- the worker: one subprocess per (root, repeat); prints one JSON line -----------------
def _load() -> float:
    return os.getloadavg()[0]


def bare_loop(model, rows: list[list[int]], steps: int, temperature: float, pad: int):  # type: ignore[no-untyped-def]
    """(tokens, seconds) of a plain transformers decode loop over ``rows`` (all distinct)."""
    import inspect

    import torch
    from transformers import DynamicCache

    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    cache = DynamicCache()
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
        **{kw: cache},
    )
    pos = mask.sum(-1, keepdim=True)  # (B, 1)
    ones = mask.new_ones((len(rows), 1))
    for _ in range(steps):
        probs = torch.softmax(out.logits[:, -1, :].float() / temperature, dim=-1)
        tok = torch.multinomial(probs, 1, generator=gen)  # (B, 1)
        mask = torch.cat([mask, ones], dim=-1)
        out = model(
            input_ids=tok, attention_mask=mask, position_ids=pos, use_cache=True, **{kw: cache}
        )
        pos = pos + 1
    return len(rows) * steps, time.perf_counter() - start


def value_prefixes(tokenizer, n: int, budget: int):  # type: ignore[no-untyped-def]
    """Step-boundary states of ``n`` gold solutions: (prompt, partial, remaining budget)."""
    from shared.datasets import load_examples
    from shared.prompts import format_prompt

    states = []
    for e in load_examples("arithmetic", "test", n=n, arithmetic={"max_steps": 4}):
        prompt = format_prompt(e.question)
        lines = e.solution.splitlines(keepends=True)
        for i in range(len(lines)):
            partial = "".join(lines[:i])
            used = len(tokenizer(prompt + partial)["input_ids"]) - len(
                tokenizer(prompt)["input_ids"]
            )
            if budget - used >= 1:
                states.append((prompt, partial, budget - used))
    return states


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(args.engine_root).resolve()))
    import torch

    torch.set_num_threads(args.threads)
    from services.rollout.engine import Prefix
    from services.rollout.engine.torch_engine import TorchEngine
    from shared.datasets import load_examples
    from shared.prompts import format_prompt
    from shared.schemas import SamplingParams

    engine = TorchEngine(args.model_dir, max_batch=max(BATCHES))
    engine.eos_ids = set()  # every row samples its full budget, as the bare loop does
    tok = engine.tokenizer
    prompts = [
        format_prompt(e.question)
        for e in load_examples(
            "arithmetic", "test", n=max(BATCHES) // SAMPLES, arithmetic={"max_steps": 4}
        )
    ]
    sp = SamplingParams(temperature=args.temperature, top_p=1.0, max_tokens=args.max_tokens, seed=0)
    result: dict[str, object] = {"root": args.engine_root, "rows": []}

    def gen(batch: int) -> tuple[int, float, float]:
        engine.max_batch = batch
        start, cpu = time.perf_counter(), time.process_time()
        out = asyncio.run(engine.generate(prompts[: batch // SAMPLES], SAMPLES, sp))
        tokens = sum(len(c.token_ids) for per in out for c in per)
        return tokens, time.perf_counter() - start, time.process_time() - cpu

    gen(8)  # warm-up
    for batch in BATCHES:
        tokens, secs, cpu = gen(batch)
        result["rows"].append(
            {
                "what": "engine",
                "batch": batch,
                "tokens": tokens,
                "s": secs,  # type: ignore[union-attr]
                "cpu": cpu,
                "load": _load(),
            }
        )
        if args.bare:
            ids = [tok(p)["input_ids"] for p in prompts[: batch // SAMPLES] for _ in range(SAMPLES)]
            cpu = time.process_time()
            with torch.inference_mode():
                tokens, secs = bare_loop(
                    engine.model, ids, args.max_tokens, args.temperature, engine.pad_id
                )
            result["rows"].append(
                {
                    "what": "bare",
                    "batch": batch,
                    "tokens": tokens,
                    "s": secs,  # type: ignore[union-attr]
                    "cpu": time.process_time() - cpu,
                    "load": _load(),
                }
            )
    # rows that end early, as a trained policy's do: 10 ids act as EOS (a random model's
    # next-token distribution is near uniform: ~2.5 % per step, about 9 in 10 rows end early)
    vocab = int(engine.model.get_input_embeddings().weight.shape[0])
    engine.eos_ids = set(range(vocab - 10, vocab))
    for batch in EARLY_BATCHES:
        tokens, secs, cpu = gen(batch)
        result["rows"].append(
            {
                "what": "early",
                "batch": batch,
                "tokens": tokens,
                "s": secs,  # type: ignore[union-attr]
                "cpu": cpu,
                "load": _load(),
            }
        )
    engine.eos_ids = set()
    states = value_prefixes(tok, args.value_problems, args.max_tokens)
    prefixes = [Prefix(p, q, max_tokens=b, stream=i) for i, (p, q, b) in enumerate(states)]
    engine.max_batch = max(BATCHES)
    start, cpu = time.perf_counter(), time.process_time()
    out = asyncio.run(engine.continue_from(prefixes, 3, sp))
    result["rows"].append(
        {
            "what": "values",
            "batch": len(prefixes) * 3,  # type: ignore[union-attr]
            "tokens": sum(len(c.token_ids) for per in out for c in per),
            "s": time.perf_counter() - start,
            "cpu": time.process_time() - cpu,
            "load": _load(),
        }
    )
    if args.profile:
        import cProfile
        import io
        import pstats

        engine.max_batch = PROFILE_BATCH
        engine.eos_ids = set(range(vocab - 10, vocab))  # rows end early, as in a real run
        prompts = prompts[: PROFILE_BATCH // SAMPLES]
        prof = cProfile.Profile()
        prof.enable()
        ids = [engine.encode(Prefix(p)) for p in prompts]
        # in this thread (cProfile sees one thread): what generate runs in its worker thread
        engine._call_locked(
            engine._continue_sync,
            ids,
            SAMPLES,
            sp,
            [sp.max_tokens] * len(ids),
            list(range(len(ids))),
        )
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.profile_top)
        result["profile"] = buf.getvalue().replace(str(Path(torch.__file__).parents[1]), "…")
    print(json.dumps(result))


# -- the driver --------------------------------------------------------------------------
def run_worker(args: argparse.Namespace, model_dir: Path, root: str, bare: bool) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "engine_speed.py"),
        "--worker",
        "--engine-root",
        root,
        "--model-dir",
        str(model_dir),
        "--threads",
        str(args.threads),
        "--max-tokens",
        str(args.max_tokens),
        "--temperature",
        str(args.temperature),
        "--value-problems",
        str(args.value_problems),
    ]
    cmd += ["--bare"] if bare else []
    cmd += ["--profile", "--profile-top", str(args.profile_top)] if args.profile else []
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--roots", default=".", help="comma-separated checkouts whose engine to time")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--model-dir", type=Path, default=None, help="a trained model instead")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--value-problems", type=int, default=8)
    p.add_argument(
        "--profile",
        action="store_true",
        help="cProfile one batch-128 generate whose rows end early",
    )
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/engine_speed.md")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine-root", default=".", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    roots = [str(Path(r).resolve()) for r in args.roots.split(",")]
    with tempfile.TemporaryDirectory(prefix="vineppo-engine-speed-") as d:
        model_dir = args.model_dir or build_model(Path(d) / "model", args.preset)
        from safetensors import safe_open

        with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
        results = []
        for rep in range(args.repeats):
            for root in roots:
                res = run_worker(args, Path(model_dir), root, bare=(root == roots[-1]))
                if rep or not args.profile:
                    res.pop("profile", None)
                results.append(res)
                print(
                    f"repeat {rep} {root}: "
                    + ", ".join(
                        f"{r['what']}@{r['batch']} {r['tokens'] / r['cpu']:.0f}"
                        for r in res["rows"]
                    ),
                    flush=True,
                )
    from bench.engine_speed_report import report, write_doc  # the driver only (the workers
    # run this file by path, where the bench package is not importable)

    text = report(args, results, roots, params, BATCHES, EARLY_BATCHES)
    for res in results:
        if "profile" in res:
            text += (
                f"\n### cProfile of one batch-{PROFILE_BATCH} generate, rows ending early, "
                f"`{res['root']}`\n\n```\n"
            )
            text += res["profile"].strip() + "\n```\n"
    print(text)
    write_doc(args.out, text)


if __name__ == "__main__":
    main()
