"""Pure sampling math for the torch engine: temperature, top-p, inverse-CDF draws, log-probs.

Tensors in, tensors out, no I/O. Randomness comes in as one uniform number per row (drawn
by the caller from that row's own seeded generator), so a row's samples depend only on its
seed and its own logits, never on what else shares the batch.

Log-probabilities reported for sampled tokens are ``log_softmax(logits / T)`` at the chosen
token — the distribution the trainer recomputes (logits divided by the sampling
temperature) — *without* renormalising over the top-p nucleus. Greedy (``T == 0``) reports
``log_softmax(logits)`` (temperature 1).
"""

from __future__ import annotations

import torch


def top_p_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean mask of the nucleus: the smallest set of top tokens whose mass reaches top_p.

    probs: (R, V) rows summing to 1. Returns (R, V) bool; the top token is always kept.
    """
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)  # (R, V)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (R, V) mass of better tokens
    keep_sorted = mass_before < top_p  # (R, V); position 0 has mass_before 0 -> kept
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(-1, sorted_idx, keep_sorted)
    return keep


def inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one index per row from unnormalised non-negative weights (R, V), uniforms (R,)."""
    cdf = weights.cumsum(dim=-1)  # (R, V)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)  # (R, 1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # (R,)
    idx = idx.clamp(max=weights.shape[-1] - 1)
    # a zero-weight index can only be hit through rounding at the top end: step back to the
    # last index with weight (the CDF is flat there).
    bad = weights.gather(-1, idx.unsqueeze(-1)).squeeze(-1) <= 0
    if bool(bad.any()):
        last_pos = (weights > 0).long().cumsum(-1).argmax(-1)  # (R,) last positive index
        idx = torch.where(bad, last_pos, idx)
    return idx


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row. logits (R, V), uniforms (R,) in [0, 1).

    Returns (tokens (R,) long, logprobs (R,) float32) where logprobs are
    log_softmax(logits / T) at the token (T = 1 for greedy), no top-p renormalisation.
    """
    logits = logits.float()
    if temperature == 0.0:
        logp = torch.log_softmax(logits, dim=-1)  # (R, V)
        tokens = logits.argmax(dim=-1)  # (R,)
    else:
        logp = torch.log_softmax(logits / temperature, dim=-1)  # (R, V)
        probs = logp.exp()
        if top_p < 1.0:
            probs = probs * top_p_mask(probs, top_p)
        tokens = inverse_cdf(probs, uniforms)
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (R,)
    return tokens, chosen
