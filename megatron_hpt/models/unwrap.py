"""The one model unwrapper: the megatron-core ``GPTModel`` inside its wrappers (DDP,
``Float16Module``), whose parameter names checkpoints, weight export and decoding use."""
from __future__ import annotations


def unwrap_model(model):
    """``model`` with every ``.module`` wrapper removed (the wrappers share the parameters)."""
    while hasattr(model, "module"):
        model = model.module
    return model
