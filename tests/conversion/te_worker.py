"""Rank entry point of test_te_names: the same converted checkpoints in a local-spec model and in
a TE-spec model (stand-ins, ``te_standins.py``) built by the provider's ``transformer_engine``
path, at TP2 (parameter names do not depend on TP; the export merges the TP shards)."""
from __future__ import annotations

import io
import os
from typing import Dict

import torch


def te_worker(converted: Dict[str, str], tokens: torch.Tensor) -> bytes:
    import megatron_hpt.models.provider as provider
    from conversion_helpers import _full_logits, _set_layout
    from megatron.core import parallel_state as ps
    from megatron_hpt.conversion import load_megatron_weights, mapping_for
    from megatron_hpt.conversion.names import te_spec_parameter_names
    from megatron_hpt.models import ModelShape, build_gpt_model, transformer_config
    from megatron_hpt.rollout.weights import export_hf_weights
    from te_standins import te_layer_spec

    torch.set_num_threads(1)
    provider.get_gpt_layer_with_transformer_engine_spec = te_layer_spec  # TE itself is absent
    results = {}
    for tp in (2,):
        _set_layout(tp, 1)
        for variant, load_dir in converted.items():
            with open(os.path.join(load_dir, "model_shape.json")) as f:
                shape = ModelShape.from_json(f.read())
            cfg = transformer_config(shape, tensor_model_parallel_size=tp, params_dtype=torch.float32)
            entry = {}
            for impl in ("local", "transformer_engine"):
                model = build_gpt_model(shape, cfg, transformer_impl=impl)
                load_megatron_weights(load_dir, model)
                entry[impl] = dict(
                    names=[n for n, _ in model.named_parameters()],
                    state_keys=sorted(model.state_dict()),
                    export={n: t.clone() for b in export_hf_weights([model], shape, 0.05) for n, t in b},
                    logits=_full_logits(model, tokens))
            entry["table"] = te_spec_parameter_names(mapping_for(shape.hf_model_type), shape)
            if ps.get_tensor_model_parallel_rank() == 0:
                results[(tp, variant)] = entry
    ps.destroy_model_parallel()
    buf = io.BytesIO()
    torch.save(results, buf)
    return buf.getvalue()
