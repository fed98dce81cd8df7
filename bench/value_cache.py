"""The rollout replica's value cache, timed: a repeated ``/v1/value`` request, then a push.

    .venv/bin/python -m bench.value_cache     # SmolLM2 SFT'd by bench.real_lm; value_cache.md

Starts the reward service and one rollout replica (real uvicorn servers on 127.0.0.1, engine
``--engine``) on ``--model``, and asks ``/v1/value`` for the states of ``--problems`` built-in
test problems (the prompt, then the gold solution cut after each of its lines), ``--k``
continuations each, seeded (only seeded requests are cached):

1. the first request: every state is sampled (misses);
2. ``--repeats`` identical requests: answered from the cache (hits, no token sampled);
3. a weight push (version 1, the same weights copied under the checkpoint root): the cache
   is emptied, so the same request samples again (misses), and its returns differ from the
   cached ones only where the version's sampling streams do.

Prints and writes the median latency of each, tokens sampled and the ``/metrics`` counters.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.runs import DOCS, RUNS, machine, write_doc

TOKEN = "bench-value-cache-token-0123"
COUNTERS = ("hits", "misses", "entries", "evictions")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=RUNS / "real_lm" / "sft" / "best")
    p.add_argument("--engine", default="vllm", help="vllm | torch")
    p.add_argument("--dtype", default=None, help="the replica's dtype (default: the engine's)")
    p.add_argument("--problems", type=int, default=4)
    p.add_argument("--k", type=int, default=9)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--doc", type=Path, default=DOCS / "value_cache.md")
    return p.parse_args(argv)


def request_body(model: Path, problems: int, k: int, max_tokens: int) -> dict[str, Any]:
    """Every state of ``problems`` built-in test problems' gold solutions, seeded sampling."""
    from services.trainer.runtime.model import load_tokenizer
    from services.trainer.sft.train import prompt_for
    from shared.datasets import load_examples

    tokenizer = load_tokenizer(model)
    items = []
    for ex in load_examples("arithmetic", "test", n=problems, seed=0):
        lines = ex.solution.splitlines(keepends=True)
        for cut in range(len(lines)):  # the empty response, then after each line but the last
            partial = "".join(lines[:cut])
            items.append({"prompt": prompt_for(tokenizer, ex), "partial_response": partial,
                          "gold": ex.answer})  # fmt: skip
    sampling = {"temperature": 0.6, "top_p": 1.0, "max_tokens": max_tokens, "seed": 11}
    return {"items": items, "k": k, "sampling": sampling}


def counters(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    found = {}
    for line in text.splitlines():
        for name in COUNTERS:
            if line.startswith(f"rollout_value_cache_{name} "):
                found[name] = float(line.split()[1])
    return found


def timed(client: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    resp = client.post("/v1/value", json=body)
    resp.raise_for_status()
    return time.perf_counter() - start, resp.json()


def summary(seconds: list[float], result: dict[str, Any]) -> dict[str, Any]:
    values = result["values"]
    return {
        "seconds (median)": statistics.median(seconds),
        "requests": len(seconds),
        "states cached": sum(v["cached"] for v in values),
        "tokens sampled": sum(v["num_tokens"] for v in values),
        "policy version": result["policy_version"],
    }


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from services.reward.app import create_app as reward_app
    from services.reward.settings import RewardSettings
    from services.rollout.app import create_app as rollout_app
    from services.rollout.settings import RolloutSettings
    from shared.serve import serve_in_thread

    body = request_body(args.model, args.problems, args.k, args.max_tokens)
    with serve_in_thread(reward_app(RewardSettings())) as reward_url:
        settings = RolloutSettings(
            model_dir=args.model,
            checkpoint_root=root,
            api_token=TOKEN,
            reward_url=reward_url,
            engine=args.engine,
            dtype=args.dtype,
        )
        with serve_in_thread(rollout_app(settings), timeout=900) as url:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=url, headers=headers, timeout=1800) as client:
                t, first = timed(client, body)
                rows = {"first request (misses)": summary([t], first)}
                runs = [timed(client, body) for _ in range(args.repeats)]
                rows["same request again (hits)"] = summary([s for s, _ in runs], runs[-1][1])
                returns = [v["returns"] for v in first["values"]]
                same = all([v["returns"] for v in r["values"]] == returns for _, r in runs)
                before = counters(client)
                shutil.copytree(args.model, root / "policy-v1")
                pushed = client.post("/v1/weights", json={"version": 1, "path": "policy-v1"})
                pushed.raise_for_status()
                after_push = counters(client)
                t, again = timed(client, body)
                rows["after a push (misses)"] = summary([t], again)
                end = counters(client)
    return {
        "states": len(body["items"]),
        "k": args.k,
        "rows": rows,
        "hits return the first returns": same,
        "counters": {"before push": before, "after push": after_push, "end": end},
    }


def report(args: argparse.Namespace, res: dict[str, Any]) -> list[str]:
    rows = res["rows"]
    miss = rows["first request (misses)"]["seconds (median)"]
    hit = rows["same request again (hits)"]["seconds (median)"]
    c = res["counters"]
    lines = [
        "# The rollout replica's value cache: a repeated request, then a push",
        "",
        f"Command: `.venv/bin/python -m bench.value_cache --model {args.model} --engine "
        f"{args.engine}{f' --dtype {args.dtype}' if args.dtype else ''} --problems "
        f"{args.problems} --k {args.k}`",
        "",
        f"{machine('the engine on every core')}. One replica (engine `{args.engine}`, dtype "
        f"{args.dtype or 'default'}) "
        "and the reward service, real uvicorn servers on 127.0.0.1; one `/v1/value` request "
        f"of {res['states']} states (the prompt "
        f"and each line of {args.problems} built-in test problems' gold solutions) × K = "
        f"{res['k']}, seeded, T = 0.6, up to {args.max_tokens} tokens.",
        "",
        "| request | latency (s, median) | requests | states from the cache | tokens sampled "
        "| policy version |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {r['seconds (median)']:.3f} | {r['requests']} | {r['states cached']} | "
            f"{r['tokens sampled']} | {r['policy version']} |"
            for name, r in rows.items()
        ),
        "",
        f"A hit is {miss / max(hit, 1e-9):.0f}× faster than sampling (the hits return the first "
        f"request's returns: {res['hits return the first returns']}). `/metrics` "
        f"(`rollout_value_cache_*`): before the push {_fmt(c['before push'])}; right after it "
        f"{_fmt(c['after push'])}; at the end {_fmt(c['end'])}.",
    ]
    return lines


def _fmt(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in counts.items())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no model there (run bench.real_lm first)")
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(args, Path(tmp))
    write_doc(args.doc, report(args, res))
    args.doc.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
