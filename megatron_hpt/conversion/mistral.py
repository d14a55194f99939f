"""Mistral (``model_type: mistral``, full attention: ``sliding_window`` null) = the Llama table."""
from megatron_hpt.conversion.llama import LLAMA

MISTRAL = LLAMA.extend("mistral", architecture="MistralForCausalLM", layer={})
