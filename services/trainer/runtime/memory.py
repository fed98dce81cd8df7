"""Memory report of a training process: peak host RSS, and peak CUDA memory when on a GPU.

`memory_stats(device)` is what the loop puts in each metrics row:
``mem/peak_mb`` (the process's peak resident set size, MiB) always, and on CUDA also
``mem/cuda_peak_mb`` (peak memory held by tensors since the last `reset_peak`),
``mem/cuda_reserved_peak_mb`` (peak held by the caching allocator) and
``mem/cuda_total_mb`` (the card's capacity), so a run shows how full the card was.
"""

from __future__ import annotations

import resource

import torch

MIB = 1024 * 1024


def host_peak_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak window (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_stats(device: torch.device) -> dict[str, float]:
    """The ``mem/*`` metrics for ``device`` (see the module docstring)."""
    stats = {"mem/peak_mb": host_peak_mb()}
    if device.type == "cuda":
        stats["mem/cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / MIB
        stats["mem/cuda_reserved_peak_mb"] = torch.cuda.max_memory_reserved(device) / MIB
        total = torch.cuda.get_device_properties(device).total_memory
        stats["mem/cuda_total_mb"] = total / MIB
    return stats
