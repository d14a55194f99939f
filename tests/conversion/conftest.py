"""Session fixtures: one tiny HF model per variant, converted once to a Megatron save dir."""

import pytest

from conversion_helpers import VARIANTS, make_hf_model


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {v: make_hf_model(str(root / v), v, seed=i) for i, v in enumerate(VARIANTS)}


@pytest.fixture(scope="session")
def converted(hf_dirs, tmp_path_factory):
    from megatron_hpt.conversion import convert_hf_to_megatron
    root = tmp_path_factory.mktemp("megatron")
    out = {}
    for v, d in hf_dirs.items():
        out[v] = str(root / v)
        convert_hf_to_megatron(d, out[v], tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                               progress=False)
    return out
