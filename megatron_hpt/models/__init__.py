"""Model shapes (from Megatron flags or Hugging Face configs) and the megatron-core GPTModel provider."""
from megatron_hpt.models.hf_config import (SUPPORTED_MODEL_TYPES, hf_config_from_shape, load_hf_config,
                                           shape_from_hf_config)
from megatron_hpt.models.provider import build_gpt_model, layer_spec, transformer_config
from megatron_hpt.models.shape import ModelShape

__all__ = ["ModelShape", "SUPPORTED_MODEL_TYPES", "build_gpt_model", "hf_config_from_shape",
           "layer_spec", "load_hf_config", "shape_from_hf_config", "transformer_config"]
