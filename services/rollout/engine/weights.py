"""Loading policy weights safely: safetensors only, and only from under the checkpoint root.

``read_weights`` is the one resolver both weight-push paths use (``POST /v1/weights`` and
the queue's weights announcement): it resolves the path (symlinks followed) and confines it
to the checkpoint root, refuses pickle formats and anything that is neither a regular file
nor a directory, then opens each shard ONCE (``O_NOFOLLOW | O_NONBLOCK``: a FIFO or device
named ``*.safetensors`` cannot block the open), checks that the opened file itself is a
regular ``*.safetensors`` file under the root before reading a byte, caps the total size,
reads the bytes from that descriptor and checks each shard's SHA-256 against the digest the
trainer announced. Engines load from those bytes, never from the path again, so nothing can
be swapped between the checks and the load. ``check_finite`` refuses a NaN or an infinity in
any floating-point tensor of those bytes (zero-copy views, chunk by chunk).

``load_safetensors_into`` copies the tensors of a safetensors dir/file into a live model in
place (no pickle is ever unpickled: ``.bin``/``.pt``/``.pkl`` are refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from services.rollout.engine.base import WeightsError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class WeightsRefused(WeightsError):
    """A refused push: nothing was loaded; ``status`` is the HTTP status to answer with and
    ``code`` the ``ErrorBody.error``."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class WeightsPathError(WeightsRefused):
    """A refused weights path (outside the root, not safetensors, missing, ...)."""


def resolve_weights_path(root: Path, path: str) -> Path:
    """The real path of ``path`` (relative paths are under ``root``) after checking it.

    Refuses (WeightsPathError): anything resolving outside ``root`` (symlinks followed),
    a pickle-format file, a missing path, a directory without ``*.safetensors``.
    """
    root_real = root.expanduser().resolve()
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = root_real / candidate
    real = candidate.resolve()
    if real != root_real and root_real not in real.parents:
        raise WeightsPathError(
            f"path {path!r} is outside the checkpoint root {str(root_real)!r}", 403, "forbidden"
        )
    if real.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsPathError(
            f"{real.name}: pickle checkpoints are refused; save weights as .safetensors",
            415,
            "unsupported_weights_format",
        )
    if not real.exists():
        raise WeightsPathError(f"path {path!r} does not exist", 404, "not_found")
    if not (real.is_file() or real.is_dir()):  # a FIFO, socket or device: never opened
        raise WeightsPathError(
            f"{real.name}: not a regular file or a directory", 415, "unsupported_weights_format"
        )
    if real.is_file() and real.suffix != ".safetensors":
        raise WeightsPathError(
            f"{real.name}: only .safetensors files are loaded", 415, "unsupported_weights_format"
        )
    if real.is_dir() and not any(real.glob("*.safetensors")):
        raise WeightsPathError(
            f"{path!r} holds no *.safetensors file (pickle checkpoints are refused)",
            415,
            "unsupported_weights_format",
        )
    return real


@dataclass(frozen=True)
class VerifiedWeights:
    """Shard bytes read once from descriptors opened under the checkpoint root.

    ``shards`` maps file name -> content; ``sha256`` maps file name -> hex digest of it.
    """

    path: Path
    shards: dict[str, bytes]
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for b in self.shards.values())


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _opened_path(fd: int, fallback: Path) -> Path:
    """The real path of the file behind ``fd`` (Linux: /proc/self/fd), else ``fallback``."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # pragma: no cover - non-Linux
        return fallback.resolve()


def _read_shard(file: Path, root_real: Path, budget: int) -> tuple[bytes, str]:
    """Open ``file`` once, check what was opened, read it; (content, sha256 hex).

    ``O_NONBLOCK``: opening a FIFO for reading would otherwise wait for a writer forever
    (holding the replica's weights lock); it is refused by the ``S_ISREG`` check instead."""
    flags = os.O_RDONLY | os.O_NONBLOCK
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(file, flags)
    except FileNotFoundError as exc:
        raise WeightsPathError(f"shard {file.name!r} does not exist", 404, "not_found") from exc
    except OSError as exc:  # ELOOP: the shard itself is a symlink
        raise WeightsPathError(
            f"shard {file.name!r} cannot be opened: {exc}", 403, "forbidden"
        ) from exc
    with os.fdopen(fd, "rb") as fh:
        opened = _opened_path(fd, file)
        if not _is_under(opened, root_real):
            raise WeightsPathError(
                f"shard {file.name!r} is outside the checkpoint root", 403, "forbidden"
            )
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or opened.suffix != ".safetensors":
            raise WeightsPathError(
                f"{file.name}: not a regular .safetensors file", 415, "unsupported_weights_format"
            )
        if st.st_size > budget:
            raise WeightsPathError(
                "weights exceed this replica's size limit", 413, "weights_too_large"
            )
        data = fh.read(st.st_size + 1)
    if len(data) != st.st_size:
        raise WeightsPathError(
            f"shard {file.name!r} changed while being read", 409, "digest_mismatch"
        )
    return data, hashlib.sha256(data).hexdigest()


def read_weights(
    root: Path | None,
    path: str,
    *,
    max_bytes: int,
    sha256: Mapping[str, str] | None = None,
) -> VerifiedWeights:
    """Resolve ``path`` under ``root`` and read its shards once (see the module docstring).

    With ``sha256`` (file name -> hex digest) exactly those shards are read and each must
    match its digest (409 ``digest_mismatch``); without it every ``*.safetensors`` of the
    directory is read. Refusals are ``WeightsPathError`` with the HTTP status to answer.
    """
    if root is None:
        raise WeightsPathError(
            "no checkpoint root configured: refusing to load weights", 403, "forbidden"
        )
    real = resolve_weights_path(root, path)
    root_real = root.expanduser().resolve()
    if real.is_file():
        names = [real.name]
        base = real.parent
    else:
        base = real
        names = sorted(sha256) if sha256 else sorted(p.name for p in real.glob("*.safetensors"))
    if sha256 is not None and sha256 and sorted(sha256) != names:
        raise WeightsPathError(
            f"announced shards {sorted(sha256)} do not match {names}", 409, "digest_mismatch"
        )
    for name in names:
        if Path(name).name != name or not name.endswith(".safetensors"):
            raise WeightsPathError(f"bad shard name {name!r}", 403, "forbidden")
    shards: dict[str, bytes] = {}
    digests: dict[str, str] = {}
    budget = max_bytes
    for name in names:
        data, digest = _read_shard(base / name, root_real, budget)
        budget -= len(data)
        if sha256 and digest != sha256[name].lower():
            raise WeightsPathError(
                f"shard {name!r}: SHA-256 does not match the announcement", 409, "digest_mismatch"
            )
        shards[name], digests[name] = data, digest
    return VerifiedWeights(path=real, shards=shards, sha256=digests)


_FLOAT_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
_FINITE_CHUNK = 1 << 22  # elements checked at once (bounds the temporary mask)


def _header(name: str, data: bytes) -> tuple[int, dict[str, object]]:
    """(offset of the data, header) of one safetensors shard; ``WeightsError`` if unreadable."""
    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or size > len(data) - 8:
            raise ValueError("header length past the end of the file")
        header = json.loads(data[8 : 8 + size])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WeightsError(f"{name}: not a readable safetensors file ({exc})") from exc
    return 8 + size, header


def _float_view(
    name: str, tensor: str, meta: object, data: bytes, base: int
) -> torch.Tensor | None:
    """The floating-point tensor ``tensor`` of a shard as a flat zero-copy view (None: not a
    float tensor, or empty); ``WeightsError`` for metadata that does not fit the bytes."""
    if not isinstance(meta, dict) or _FLOAT_DTYPES.get(str(meta.get("dtype"))) is None:
        return None
    dtype = _FLOAT_DTYPES[str(meta["dtype"])]
    try:
        start, end = (base + int(x) for x in meta["data_offsets"])
        if not base <= start <= end <= len(data) or (end - start) % dtype.itemsize:
            raise ValueError("data offsets do not fit the file")
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{name}: tensor {tensor!r}: bad safetensors header ({exc})") from exc
    if end == start:
        return None
    with warnings.catch_warnings():  # read-only bytes: the view is never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(memoryview(data)[start:end], dtype=dtype)


def check_finite(weights: VerifiedWeights) -> None:
    """Refuse (``WeightsRefused`` 400 ``non_finite_weights``) a NaN or ±inf anywhere in the
    floating-point tensors of ``weights``: one bad trainer step must not poison a replica.

    Reads each tensor as a zero-copy view of the shard bytes, ``_FINITE_CHUNK`` elements at
    a time, so the check allocates a small mask, not a copy of the model."""
    for name, data in weights.shards.items():
        base, header = _header(name, data)
        for tensor, meta in header.items():
            flat = None if tensor == "__metadata__" else _float_view(name, tensor, meta, data, base)
            if flat is None:
                continue
            for i in range(0, flat.numel(), _FINITE_CHUNK):
                part = flat[i : i + _FINITE_CHUNK]
                if part.dtype.itemsize == 1:  # float8: isfinite wants a wider type
                    part = part.float()
                if not bool(torch.isfinite(part).all()):
                    raise WeightsRefused(
                        f"{name}: tensor {tensor!r} holds NaN or infinite values: refused",
                        400,
                        "non_finite_weights",
                    )


def tensors_of(weights: VerifiedWeights) -> dict[str, torch.Tensor]:
    """Every tensor of the verified shards (parsed from their bytes, never from disk)."""
    from safetensors.torch import load

    out: dict[str, torch.Tensor] = {}
    for name, data in weights.shards.items():
        try:
            out.update(load(data))
        except Exception as exc:  # safetensors raises its own error types on bad headers
            raise WeightsError(f"{name}: not a readable safetensors file ({exc})") from exc
    return out


def safetensors_shards(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(f"{path.name}: only .safetensors files are loaded")
        return [path]
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise WeightsError(f"{path} holds no *.safetensors file")
    return shards


def load_safetensors_into(model: torch.nn.Module, path: Path | VerifiedWeights) -> int:
    """Copy every tensor of the safetensors file(s) at ``path`` (or of already verified
    shard bytes) into ``model``; returns the count.

    Every tensor must name a parameter/buffer of the model with the same shape; every
    parameter must be covered (tied weights count as covered). Nothing is copied unless
    all checks pass.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if isinstance(path, VerifiedWeights):
        return load_tensors_into(model, tensors_of(path))
    loaded: dict[str, torch.Tensor] = {}
    for shard in safetensors_shards(path):
        try:
            loaded.update(load_file(str(shard), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{shard.name}: not a readable safetensors file ({exc})") from exc
    return load_tensors_into(model, loaded)


def check_tensors(state: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse (``WeightsError``) tensors that do not fit a model's ``state`` exactly.

    ``state`` is ``model.state_dict(keep_vars=True)`` (tied weights are one object under
    two names; a meta-device model works too); ``shapes`` maps each tensor to load to its
    shape. Every name must be the model's, with its shape, and every tensor of the model
    must be covered (a tied tensor by any of its names).
    """
    unknown = sorted(set(shapes) - set(state))
    if unknown:
        raise WeightsError(f"unknown tensors (not in the model): {unknown[:5]}")
    bad = [n for n, shape in shapes.items() if tuple(shape) != tuple(state[n].shape)]
    if bad:
        raise WeightsError(f"shape mismatch for {bad[:5]}")
    covered = {id(state[n]) for n in shapes}
    missing = [n for n, t in state.items() if n not in shapes and id(t) not in covered]
    if missing:
        raise WeightsError(f"weights missing for {missing[:5]}")


def load_tensors_into(model: torch.nn.Module, loaded: dict[str, torch.Tensor]) -> int:
    """Copy ``loaded`` into ``model`` in place after checking names, shapes and coverage."""
    state = model.state_dict(keep_vars=True)
    check_tensors(state, {n: tuple(t.shape) for n, t in loaded.items()})
    with torch.no_grad():
        for name, tensor in loaded.items():
            state[name].copy_(tensor.to(dtype=state[name].dtype))
    return len(loaded)


def shard_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the safetensors ``files`` (headers only)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as fh:
                for name in fh.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    shapes[name] = tuple(fh.get_slice(name).get_shape())
        except Exception as exc:  # safetensors raises its own error types on bad headers
            raise WeightsError(f"{file.name}: not a readable safetensors file ({exc})") from exc
    return shapes


def meta_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """The state (``keep_vars``) of the model at ``model_dir`` built on the meta device:
    names, shapes and tied weights without allocating a byte of weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return dict(model.state_dict(keep_vars=True))
