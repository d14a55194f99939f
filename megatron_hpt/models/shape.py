"""The shape of a decoder-only transformer, independent of where it came from.

A ``ModelShape`` is built either from Megatron-LM flags (``arguments.py``) or from a Hugging Face
``config.json`` (``hf_config.py``), and is all that ``provider.py`` needs to build a megatron-core
``GPTModel``. It is also written next to converted checkpoints so users never retype a model shape.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional


@dataclass
class ModelShape:
    # ---------------- transformer body ----------------
    num_layers: int
    """Number of transformer layers (Megatron ``--num-layers``)."""
    hidden_size: int
    """Model width (``--hidden-size``)."""
    ffn_hidden_size: int
    """MLP inner width (``--ffn-hidden-size``); for SwiGLU the width of each of gate and up."""
    num_attention_heads: int
    """Query heads (``--num-attention-heads``)."""
    num_query_groups: int
    """Key/value heads for grouped-query attention (``--num-query-groups``); equal to heads for MHA."""
    kv_channels: Optional[int] = None
    """Head dimension; None means hidden_size // num_attention_heads (``--kv-channels``)."""
    # ---------------- vocabulary and positions ----------------
    vocab_size: int = 128
    """Rows of the embedding and output layer, already padded (``--vocab-size``)."""
    max_position_embeddings: int = 4096
    """Longest sequence the position embedding supports (``--max-position-embeddings``)."""
    position_embedding_type: str = "rope"
    """``rope`` or ``learned_absolute`` (``--position-embedding-type``)."""
    rotary_base: float = 10000.0
    """RoPE theta (``--rotary-base``)."""
    rope_scaling_factor: Optional[float] = None
    """Llama 3.x RoPE scaling factor; None = no scaling (``--rope-scaling-factor``)."""
    # ---------------- layer details ----------------
    normalization: str = "RMSNorm"
    """``RMSNorm`` or ``LayerNorm`` (``--normalization``)."""
    norm_epsilon: float = 1e-5
    """Epsilon of every norm (``--norm-epsilon``)."""
    swiglu: bool = True
    """Gated SiLU MLP: fc1 holds [gate; up] (``--swiglu``)."""
    untie_embeddings_and_output_weights: bool = True
    """Separate output layer; False ties it to the input embedding (Qwen2.5 small models)."""
    add_bias_linear: bool = False
    """Biases on all linear layers (Megatron's ``--disable-bias-linear`` is its negation)."""
    add_qkv_bias: bool = False
    """Bias on the fused QKV projection only (Qwen2/2.5, ``--add-qkv-bias``)."""
    qk_layernorm: bool = False
    """Per-head RMSNorm on queries and keys (Qwen3, ``--qk-layernorm``)."""
    # ---------------- provenance ----------------
    hf_model_type: Optional[str] = None
    """``model_type`` of the Hugging Face family this shape maps to (llama, qwen2, qwen3, mistral)."""

    def __post_init__(self):
        if self.kv_channels is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                    f"({self.num_attention_heads}); set kv_channels explicitly")
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_query_groups ({self.num_query_groups})")
        if self.normalization not in ("RMSNorm", "LayerNorm"):
            raise ValueError(f"normalization must be RMSNorm or LayerNorm, got {self.normalization!r}")
        if self.position_embedding_type not in ("rope", "learned_absolute"):
            raise ValueError(f"position_embedding_type must be rope or learned_absolute, "
                             f"got {self.position_embedding_type!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "ModelShape":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model-shape fields {unknown}")
        return cls(**data)
