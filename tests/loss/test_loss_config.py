"""Preset registry, LossConfig validation messages and the command-line flags."""
import argparse
import dataclasses

import pytest
import torch

import megatron_hpt.loss as L
from megatron_hpt.loss.cli import add_loss_arguments, loss_config_from_args

DESIGN_PRESETS = ["sft", "reinforce", "grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo",
                  "reinforce_pp", "luffy", "srft", "chord_mu", "chord_phi", "hpt", "hpt_clean",
                  "egspo", "srft_paper"]


def test_every_design_preset_is_registered():
    assert sorted(DESIGN_PRESETS) == L.preset_names()
    assert L.preset("hpt-clean") == L.preset("hpt_clean")


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        L.preset("grpoo")
    assert "'grpoo'" in str(err.value) and all(n in str(err.value) for n in DESIGN_PRESETS)


def test_duplicate_registration_refused():
    def grpo():
        return L.LossConfig()
    with pytest.raises(ValueError, match="already registered"):
        L.register_preset(grpo)


@pytest.mark.parametrize("field,value,expect", [
    ("loss_agg_mode", "token-sum", "'token-sum' is not one of ['token-mean'"),
    ("on_policy_mask", "clip", "on_policy_mask='clip' is not one of ['none', 'ppo_clip'"),
    ("clip_ratio_c", 0.5, "clip_ratio_c=0.5 must be > 1"),
    ("egspo_rho", 0.0, "egspo_rho=0.0 must be in (0, 1]"),
    ("kl_estimator", "k4", "['k1', 'k2', 'k3']"),
    ("overlong_buffer_len", 9000, "overlong_buffer_len=9000 must be in [0, max_response_length=8192)"),
])
def test_bad_values_have_clear_messages(field, value, expect):
    with pytest.raises(ValueError) as err:
        L.preset("grpo").replace(**{field: value})
    assert expect in str(err.value)


def test_unknown_field_and_extras_refused():
    with pytest.raises(ValueError, match="unknown LossConfig field"):
        L.preset("grpo").replace(clip_ratio=0.3)
    with pytest.raises(ValueError, match="unknown extras"):
        L.policy_loss(torch.zeros(1, 2), None, None, torch.ones(1, 2), L.preset("sft"), is_demos=None)


def test_cli_flags_override_the_preset():
    parser = add_loss_arguments(argparse.ArgumentParser())
    flags = {f.name for f in dataclasses.fields(L.LossConfig)}
    for name in flags:
        assert f"--loss-{name.replace('_', '-')}" in parser.format_help()
    assert loss_config_from_args(parser.parse_args([])) == L.preset("sft")
    args = parser.parse_args(["--loss-preset", "hpt", "--loss-sft-coef", "0.3",
                              "--loss-sft-normalization", "global", "--loss-mixed-group", "false",
                              "--loss-max-response-length", "4096"])
    cfg = loss_config_from_args(args)
    assert cfg == L.preset("hpt").replace(sft_coef=0.3, sft_normalization="global",
                                          mixed_group=False, max_response_length=4096)
    bad = parser.parse_args(["--loss-preset", "grpo", "--loss-clip-ratio-low", "1.5"])
    with pytest.raises(ValueError, match="clip_ratio_low=1.5"):
        loss_config_from_args(bad)
    with pytest.raises(SystemExit):
        parser.parse_args(["--loss-filter-groups", "maybe"])


def test_missing_extras_are_explained():
    cfg = L.preset("chord_mu")
    with pytest.raises(ValueError, match="needs the mu or step extra"):
        L.policy_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2), torch.ones(2, 2), cfg,
                      is_demo=torch.tensor([False, True]))
    with pytest.raises(ValueError, match="needs the entropy extra"):
        L.policy_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2), torch.ones(2, 2),
                      L.preset("luffy"))
