"""The ``vllm`` engine: a thin adapter over vLLM's offline ``LLM`` API (production, GPUs).

NOTE: vLLM needs a CUDA GPU; this engine cannot run on our CPU-only CI machines. Its unit
tests cover everything that does not need vLLM itself (parameter and output conversion,
the import guard); ``vllm`` is imported only when a ``VllmEngine`` is built (extra ``gpu``).

- Prefix caching is on (``enable_prefix_caching=True``): the K continuations of a state and
  states sharing a prompt reuse cached KV blocks; one ``SamplingParams(n=K, seed=...)`` per
  prefix asks for K samples. The seed is derived from (request seed, ``Prefix.stream``) —
  the prefix's global position in the caller's batch — so two jobs of one batch never share
  a random stream, and ``max_tokens`` is the prefix's own budget (``Prefix.max_tokens``).
- Log-probs: ``logprobs=0`` returns the sampled token's log-prob; the engine is built with
  ``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10.2) so they are taken after the
  temperature, like the torch engine's log_softmax(logits / T). vLLM's processed log-probs
  are also after top-p; with top_p = 1 (our default) both engines report the same thing.
- Stop strings are kept in the output (``include_stop_str_in_output=True``), as in the
  torch engine, so ``prefix + text`` is what the policy wrote.
- ``load_weights`` reloads a safetensors directory in place through ``collective_rpc`` on
  every worker (``model.load_weights``) and resets the prefix cache — no process restart.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from services.rollout.engine.base import EngineInputError, EngineStats, Prefix, row_budget
from shared.schemas import Completion, SamplingParams


def import_vllm() -> Any:
    """``import vllm`` with an error that says what to install."""
    try:
        import vllm
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise RuntimeError(
            "the 'vllm' engine needs vLLM and a CUDA GPU: pip install 'vineppo[gpu]', "
            "or use --engine torch"
        ) from exc
    return vllm


def to_vllm_kwargs(
    sampling: SamplingParams, n: int, seed: int | None, max_tokens: int | None = None
) -> dict[str, Any]:
    """Our SamplingParams -> keyword arguments of ``vllm.SamplingParams``."""
    return {
        "n": n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens if max_tokens is None else max_tokens,
        "stop": list(sampling.stop) or None,
        "include_stop_str_in_output": True,
        "seed": seed,
        "logprobs": 0,
        "skip_special_tokens": True,
    }


def prefix_seed(seed: int | None, index: int) -> int | None:
    """Per-prefix seed so each prefix's K samples reproduce independently of the batch.

    ``index`` is the prefix's stream (its global position in the caller's batch)."""
    return None if seed is None else (seed * 1_000_003 + index) % (2**31 - 1)


def request_kwargs(
    prefixes: list[Prefix], k: int, sampling: SamplingParams
) -> list[dict[str, Any]]:
    """``vllm.SamplingParams`` keyword arguments of each prefix: its own seed and budget."""
    return [
        to_vllm_kwargs(
            sampling,
            k,
            prefix_seed(sampling.seed, i if p.stream is None else p.stream),
            row_budget(p, sampling),
        )
        for i, p in enumerate(prefixes)
    ]


def _chosen_logprob(step: Any, token_id: int) -> float:
    """The sampled token's log-prob from one vLLM per-position dict {token_id: Logprob}."""
    entry = step.get(token_id) if isinstance(step, dict) else None
    if entry is None:
        raise RuntimeError(f"vLLM returned no log-prob for sampled token {token_id}")
    return float(getattr(entry, "logprob", entry))


def from_vllm_output(request_output: Any) -> list[Completion]:
    """One vLLM ``RequestOutput`` -> our Completions (one per ``outputs[j]``)."""
    completions = []
    for out in request_output.outputs:
        token_ids = [int(t) for t in out.token_ids]
        steps = out.logprobs or [None] * len(token_ids)
        logprobs = [_chosen_logprob(s, t) for s, t in zip(steps, token_ids, strict=True)]
        reason = "length" if out.finish_reason == "length" else "stop"
        completions.append(
            Completion(text=out.text, token_ids=token_ids, logprobs=logprobs, finish_reason=reason)
        )
    return completions


def _reload_worker(worker: Any, path: str | dict[str, bytes]) -> int:  # in each vLLM worker
    """Load a safetensors dir (trusted local path) or verified shard bytes (name -> content)."""
    from safetensors.torch import load, load_file

    from services.rollout.engine.weights import safetensors_shards

    model = worker.model_runner.model
    count = 0
    if isinstance(path, dict):
        for data in path.values():
            tensors = load(data)
            model.load_weights(weights=tensors.items())
            count += len(tensors)
        return count
    for shard in safetensors_shards(Path(path)):
        tensors = load_file(str(shard), device="cpu")
        model.load_weights(weights=tensors.items())
        count += len(tensors)
    return count


class VllmEngine:
    """Engine over ``vllm.LLM``; calls run in a thread under a lock (see module docstring)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str | None = None,
        max_batch: int = 256,
        version: int = 0,
        gpu_memory_utilization: float = 0.85,
        **_: Any,
    ) -> None:
        vllm = import_vllm()
        self.model_dir = Path(model_dir)
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=str(self.model_dir),
            dtype=dtype or "auto",
            enable_prefix_caching=True,
            max_num_seqs=max_batch,
            gpu_memory_utilization=gpu_memory_utilization,
            logprobs_mode="processed_logprobs",
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._version = version
        self._lock = threading.Lock()
        self._stats = EngineStats()
        self.waiting = 0

    @property
    def version(self) -> int:
        return self._version

    @property
    def model_name(self) -> str:
        return self.model_dir.name

    @property
    def eos_text(self) -> str | None:
        return getattr(self.tokenizer, "eos_token", None)

    def max_context(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer(text)["input_ids"]]

    async def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams, *, stream_offset: int = 0
    ) -> list[list[Completion]]:
        prefixes = [Prefix(prompt=p, stream=stream_offset + i) for i, p in enumerate(prompts)]
        return await self.continue_from(prefixes, n, sampling)

    async def continue_from(
        self, prefixes: list[Prefix], k: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        kwargs = request_kwargs(prefixes, k, sampling)
        inputs = []
        for p, kw in zip(prefixes, kwargs, strict=True):
            ids = list(p.token_ids or self.tokenize(p.prompt + p.partial))
            if len(ids) + kw["max_tokens"] > self.max_context():
                raise EngineInputError("prompt + max_tokens exceed the context", "prompt_too_long")
            inputs.append({"prompt_token_ids": ids})
        params = [self._vllm.SamplingParams(**kw) for kw in kwargs]
        outputs = await self._locked(self.llm.generate, inputs, params, use_tqdm=False)
        result = [from_vllm_output(o) for o in outputs]
        self._stats.requests += 1
        self._stats.prompt_tokens += sum(len(i["prompt_token_ids"]) for i in inputs)
        self._stats.sampled_tokens += sum(len(c.token_ids) for per in result for c in per)
        return result

    async def load_weights(self, version: int, path: Any) -> None:
        """``path``: a safetensors dir, or ``VerifiedWeights`` (loaded from their bytes)."""
        arg = path.shards if hasattr(path, "shards") else str(path)
        await self._locked(self.llm.collective_rpc, _reload_worker, args=(arg,))
        await self._locked(self.llm.reset_prefix_cache)
        self._version = version

    def stats(self) -> EngineStats:
        return self._stats

    async def close(self) -> None:
        return None

    async def _locked(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            with self._lock:
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._stats.busy_s += time.perf_counter() - start

        self.waiting += 1
        try:
            return await asyncio.to_thread(call)
        finally:
            self.waiting -= 1
