"""Models of the trainer: the tiny from-scratch Llama for the built-in task, policy loading,
and the PPO critic (the LM with a scalar value head).

`build_tiny_model(out_dir, texts)` trains a byte-level BPE tokenizer on the task's text
(digits always split one per token so arithmetic is learnable; bos/eos/pad special tokens),
sizes a `LlamaConfig` by a preset, and saves both with ``save_pretrained`` (safetensors).
Dropout is off in every model this module returns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import (
        LlamaConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

log = logging.getLogger(__name__)
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
PRESETS: dict[str, dict[str, int]] = {
    "micro": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 192, "vocab_size": 512},
    "tiny": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
             "intermediate_size": 384, "vocab_size": 512},
    "small": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8,
              "intermediate_size": 768, "vocab_size": 1024},
}  # fmt: skip
"""Model sizes; ``vocab_size`` is the tokenizer's target size (the model uses the real one)."""
MAX_POSITIONS = 1024
VALUE_HEAD_FILE = "value_head.safetensors"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with one token per digit; adds ``<s>`` in front of encoded text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )


def tiny_config(preset: str, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """A `LlamaConfig` of ``preset`` size for ``tokenizer`` (dropout 0, tied embeddings)."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_hidden_layers"],
        num_attention_heads=p["num_attention_heads"],
        num_key_value_heads=p["num_attention_heads"],
        max_position_embeddings=MAX_POSITIONS,
        attention_dropout=0.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(
    out_dir: Path, texts: Iterable[str], *, preset: str = "tiny", seed: int = 0
) -> Path:
    """Train a tokenizer on ``texts``, init a Llama of ``preset`` size, save both to ``out_dir``."""
    from transformers import LlamaForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(PRESETS)}")
    tokenizer = train_tokenizer(texts, PRESETS[preset]["vocab_size"])
    config = tiny_config(preset, tokenizer)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability (modules and config) to 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop"):
        if config is not None and isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)
    return model


def load_tokenizer(model_dir: Path | str) -> PreTrainedTokenizerBase:
    """The tokenizer saved next to a model (pad token set, left padding for generation)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (AVX-512 BF16 or AMX, as oneDNN
    reports it). Without it torch emulates bfloat16 on CPU, slower than float32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """How the trainer's models hold weights and compute (`precision` picks one).

    ``weights``: the dtype of parameters, gradients and the optimizer's state. ``autocast``:
    when set, forward and backward run under ``torch.autocast`` in that dtype while the
    weights stay float32: mixed precision with a float32 master copy, so an update smaller
    than bfloat16's resolution (8 mantissa bits, e.g. lr 1e-6 on a weight of 0.02) is kept.
    """

    weights: torch.dtype = torch.float32
    autocast: torch.dtype | None = None

    @property
    def compute(self) -> str:
        """The dtype matmuls run in, by name: what the rollout replicas should serve in."""
        return str(self.autocast or self.weights).removeprefix("torch.")

    def apply(self, model: nn.Module) -> nn.Module:
        """``model`` with its forward run under autocast (when this precision has one)."""
        if self.autocast is not None:
            forward = torch.autocast(device_type="cpu", dtype=self.autocast)(model.forward)
            model.forward = forward
        return model


def precision(name: str, device: torch.device) -> Precision:
    """The `Precision` of ``model.dtype`` on ``device``.

    ``auto``: bfloat16 weights on CUDA, float32 on CPU. ``bfloat16``: bfloat16 weights on
    CUDA (DeepSpeed's bf16 mode); on a CPU with native bfloat16, float32 weights with bfloat16
    autocast; on a CPU without it, float32 (with a warning: emulated bfloat16 is slower than
    float32). ``float32``: float32 everywhere.
    """
    if name == "float32" or (name == "auto" and device.type != "cuda"):
        return Precision()
    if device.type == "cuda":
        return Precision(torch.bfloat16)
    if not cpu_has_native_bf16():
        log.warning(
            "model.dtype=bfloat16: this CPU has no native bfloat16 (AVX-512 BF16 or AMX), "
            "training in float32 instead"
        )
        return Precision()
    return Precision(torch.float32, autocast=torch.bfloat16)


FP32 = Precision()


def load_policy(
    model_dir: Path | str, device: str | torch.device = "cpu", precision: Precision = FP32
) -> PreTrainedModel:
    """A causal LM from ``model_dir`` on ``device`` in ``precision``, dropout off."""
    from transformers import AutoModelForCausalLM

    # SDPA attention (flash/memory-efficient kernels on CUDA), like the rollout engine
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=precision.weights, attn_implementation="sdpa"
    )
    return cast("PreTrainedModel", precision.apply(disable_dropout(model).to(device)))


def init_value_head(head: nn.Linear) -> nn.Linear:
    """The authors' value-head init: weight ~ N(0, 1/(H+1)) (std 1/√(H+1), H = hidden size),
    bias 0, so the initial V(s) has a spread about the RMS of the last hidden state."""
    nn.init.normal_(head.weight, std=(head.in_features + 1) ** -0.5)
    nn.init.zeros_(head.bias)
    return head


def constant_value_head(head: nn.Linear, value: float) -> nn.Linear:
    """Weights 0 and bias ``value``: V(s) = ``value`` for every state until the first update
    (e.g. 0.5, the middle of a [0, 1] reward range). The weights still get gradients
    (∂V/∂w = hidden state), and the body's follow once the weights move off zero."""
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, value)
    return head


class Critic(nn.Module):
    """PPO value network: the LM's transformer body + a scalar head on each position."""

    def __init__(self, backbone: nn.Module, hidden_size: int, init: float | None = None) -> None:
        super().__init__()
        self.backbone: Any = disable_dropout(backbone)  # a transformers base model
        self.value_head = nn.Linear(hidden_size, 1)
        if init is None:
            init_value_head(self.value_head)
        else:
            constant_value_head(self.value_head, init)

    @classmethod
    def from_pretrained(
        cls, model_dir: Path | str, precision: Precision = FP32, init: float | None = None
    ) -> Critic:
        """Body from a causal-LM (or critic) dir; the head from ``value_head.safetensors`` if
        saved there, else freshly initialised (``init``: see `Critic.__init__`); ``precision``:
        see `precision`."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(
            str(model_dir), dtype=precision.weights, attn_implementation="sdpa"
        )
        critic = cls(backbone, backbone.config.hidden_size, init).to(precision.weights)
        precision.apply(critic)
        head = Path(model_dir) / VALUE_HEAD_FILE
        if head.is_file():
            critic.value_head.load_state_dict(load_file(str(head)))
        return critic

    def save_pretrained(self, out_dir: Path | str) -> None:
        """Body with ``save_pretrained`` + the head as ``value_head.safetensors``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        self.backbone.save_pretrained(out, safe_serialization=True)
        state = {k: v.detach().contiguous() for k, v in self.value_head.state_dict().items()}
        save_file(state, str(out / VALUE_HEAD_FILE))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B, T) -> values (B, T), float32."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        values: torch.Tensor = self.value_head(hidden).squeeze(-1).float()  # (B, T)
        return values
