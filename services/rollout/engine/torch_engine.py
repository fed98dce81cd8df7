"""The ``torch`` engine: any transformers causal LM from a local directory, own sampler.

How a call runs (``continue_from`` and ``generate`` share it):
  1) tokenise every prefix (or take its ``token_ids`` as given) and deduplicate them;
  2) lay out rows = (prefix, sample j) and cut them into chunks of at most ``max_batch``;
  3) per chunk, *prefill* each distinct prefix once (left-padded batch, attention mask and
     position ids from the mask), then *fork* its KV cache to its rows by index-select;
  4) decode one token per step for all live rows; rows that finish (EOS, stop string,
     their own max tokens: ``min(sampling.max_tokens, Prefix.max_tokens)``) leave the
     cache so later steps cost less: rows kept past the new end move into the freed slots
     (``kv_cache.compact``), one row copy per finished row.

Every row draws its uniforms from its own ``random.Random`` seeded by
(request seed, stream, sample index), where ``stream`` is ``Prefix.stream`` (the item's
global position in the caller's batch) or else its index in the call; so the same seed
gives the same samples whatever else is in the batch and however the batch was split
into requests. Log-probs: see ``services.rollout.engine.sampling``.

Blocking torch work runs in ``asyncio.to_thread`` under a lock, so the event loop stays
free. Runs on CPU (float32 by default) and CUDA (bfloat16 by default, SDPA attention).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from services.rollout.engine.base import (
    EngineBase,
    EngineStats,
    Prefix,
    check_context,
    row_budget,
)
from services.rollout.engine.kv_cache import compact, fork_reserved, swap_remove_order
from services.rollout.engine.sampling import sample_next
from services.rollout.engine.weights import VerifiedWeights, load_safetensors_into
from shared.schemas import Completion, SamplingParams

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _Row:
    """One sequence being sampled: which prefix it continues and where its output goes."""

    prefix: int  # index into the chunk's distinct prefixes
    item: int
    sample: int
    rng: random.Random
    max_tokens: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None


T = TypeVar("T")


def _rng(seed: int, stream: int, sample: int) -> random.Random:
    """The row's own uniform stream, keyed by (seed, stream, sample) only."""
    return random.Random(f"{seed}/{stream}/{sample}")


class TorchEngine(EngineBase):
    """Engine over a transformers model; see the module docstring for the algorithm."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        max_batch: int = 64,
        version: int = 0,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        dtype = dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(_DTYPES)}")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=_DTYPES[dtype], attn_implementation="sdpa"
        ).to(self.device)  # type: ignore[arg-type]  # transformers' typing of `to` drops `self`
        self.model.eval()
        self.max_batch = max_batch
        self._version = version
        self._lock = threading.Lock()
        self._stats = EngineStats()
        self.waiting = 0
        self.eos_ids = self._eos_ids()
        self.pad_id = self._pad_id()
        # transformers >= 5.2x names the KV-cache argument ``cache``; older ones past_key_values
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # -- Engine protocol (version, model_name, eos_text, tokenize, stats, generate: base) ----
    def max_context(self) -> int:
        """Most tokens (prompt + sampled) one sequence may hold."""
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)

    async def _continue(
        self, prefixes: list[Prefix], ids: list[list[int]], k: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        budgets = [row_budget(p, sampling) for p in prefixes]
        streams = [i if p.stream is None else p.stream for i, p in enumerate(prefixes)]
        return await self._run_locked(self._continue_sync, ids, k, sampling, budgets, streams)

    async def load_weights(self, version: int, path: str | VerifiedWeights) -> None:
        def _load() -> None:
            load_safetensors_into(
                self.model, path if isinstance(path, VerifiedWeights) else Path(path)
            )
            self._version = version

        await self._run_locked(_load)

    async def close(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- helpers -----------------------------------------------------------------------
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    async def _run_locked(self, fn: Callable[..., T], *args: object) -> T:
        self.waiting += 1
        try:
            return await asyncio.to_thread(self._call_locked, fn, *args)
        finally:
            self.waiting -= 1

    def _call_locked(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self._stats.busy_s += time.perf_counter() - start

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, list | tuple):
                ids.update(int(x) for x in src)
        return ids

    def _pad_id(self) -> int:
        for cand in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if isinstance(cand, int):
                return cand
        return 0

    # -- the sampler (runs in a worker thread, under the lock) --------------------------
    def _continue_sync(
        self,
        ids: list[list[int]],
        k: int,
        sampling: SamplingParams,
        budgets: list[int],
        streams: list[int],
    ) -> list[list[Completion]]:
        check_context(ids, budgets, self.max_context())
        self._stats.requests += 1
        base_seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8))
        distinct: dict[tuple[int, ...], int] = {}
        rows: list[tuple[int, int, int]] = []  # (distinct prefix, item, sample)
        for item, x in enumerate(ids):
            d = distinct.setdefault(tuple(x), len(distinct))
            rows.extend((d, item, j) for j in range(k))
        rows.sort(key=lambda r: r[0])  # rows of one prefix stay together in a chunk
        keys = list(distinct)
        out: list[list[Completion | None]] = [[None] * k for _ in ids]
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start : start + self.max_batch]
            used = sorted({d for d, _, _ in chunk})
            local = {d: i for i, d in enumerate(used)}
            live = [
                _Row(local[d], item, j, _rng(base_seed, streams[item], j), budgets[item])
                for d, item, j in chunk
            ]
            self._sample_chunk([list(keys[d]) for d in used], live, sampling)
            for r in live:
                out[r.item][r.sample] = self._to_completion(r)
        return [[c for c in per if c is not None] for per in out]

    def _to_completion(self, r: _Row) -> Completion:
        text = self.tokenizer.decode(r.tokens, skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence in, one string out
        return Completion(
            text=text,
            token_ids=r.tokens,
            logprobs=r.logprobs,
            finish_reason="stop" if r.finish == "stop" else "length",
        )

    def _prefill(self, prefixes: list[list[int]]) -> tuple[object, torch.Tensor, torch.Tensor]:
        """Left-padded forward over distinct prefixes: (cache, last logits (U, V), mask (U, L))."""
        from transformers import DynamicCache

        width = max(len(p) for p in prefixes)
        input_ids = torch.full((len(prefixes), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for i, p in enumerate(prefixes):
            input_ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (U, L) 0 at the first real token
        cache = DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: cache},
        )
        self._stats.prompt_tokens += int(mask.sum())
        return cache, out.logits[:, -1, :], mask

    def _sample_chunk(
        self, prefixes: list[list[int]], live: list[_Row], sp: SamplingParams
    ) -> None:
        cache, last_logits, mask = self._prefill(prefixes)
        # fork: row r gets a copy of prefix live[r].prefix's KV, with room for the longest
        # row budget
        longest = max(r.max_tokens for r in live)
        fork = torch.tensor([r.prefix for r in live], device=self.device)
        fork_reserved(cache, fork, longest)
        logits = last_logits[fork]  # (R, V)
        width = mask.shape[1]
        # step t attends to masks[:, : width + t + 1]: the prefix mask, then ones
        masks = torch.cat([mask[fork], mask.new_ones((len(live), longest))], dim=-1)
        next_pos = masks[:, :width].sum(-1)  # (R,) position id of the next token
        stop_tail = max((len(s) for s in sp.stop), default=0)
        eos = self.eos_ids
        for step in range(longest):
            uniforms = torch.tensor([r.rng.random() for r in live], dtype=torch.float64)
            tokens, logps = sample_next(
                logits, sp.temperature, sp.top_p, uniforms.to(logits.device)
            )
            tok_list, lp_list = tokens.tolist(), logps.tolist()
            keep: list[int] = []
            for i, r in enumerate(live):
                tok = tok_list[i]
                r.tokens.append(tok)
                r.logprobs.append(lp_list[i])
                if tok in eos or self._hit_stop(r, sp.stop, stop_tail):
                    r.finish = "stop"
                elif len(r.tokens) >= r.max_tokens:
                    r.finish = "length"
                else:
                    keep.append(i)
            self._stats.sampled_tokens += len(live)
            if not keep:
                return
            if len(keep) < len(live):  # finished rows leave; kept rows fill their slots
                order = swap_remove_order(keep)
                compact(cache, order)
                sel = torch.tensor(order, device=self.device)
                tokens, masks, next_pos = tokens[sel], masks[sel], next_pos[sel]
                live = [live[i] for i in order]
            out = self.model(
                input_ids=tokens.unsqueeze(-1),
                attention_mask=masks[:, : width + step + 1],
                position_ids=next_pos.unsqueeze(-1),
                use_cache=True,
                **{self._cache_kw: cache},
            )
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1

    def _hit_stop(self, r: _Row, stops: list[str], tail: int) -> bool:
        if not stops:
            return False
        text = self.tokenizer.decode(r.tokens[-(tail + 1) :], skip_special_tokens=True)
        return any(s in text for s in stops)
