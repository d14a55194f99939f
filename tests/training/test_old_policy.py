"""Where π_old comes from (training/rl/old_policy.py): a pass only where it changes the result."""
from types import SimpleNamespace

from megatron_hpt.loss import preset
from megatron_hpt.training.rl.old_policy import old_logprob_source


def _cfg(name="grpo", engine="embedded", logprobs="engine", **loss):
    return SimpleNamespace(loss=preset(name).replace(**loss),
                           rollout=SimpleNamespace(engine=engine, old_logprobs=logprobs))


def test_one_update_per_rollout_takes_the_training_forward():
    for engine, lp in (("embedded", "engine"), ("embedded", "recompute"), ("vllm", "recompute")):
        assert old_logprob_source(_cfg(engine=engine, logprobs=lp), 1, False) == "forward"


def test_the_pass_stays_where_it_changes_the_result():
    assert old_logprob_source(_cfg(), 2, False) == "pass"  # the policy moves between updates
    assert old_logprob_source(_cfg(engine="vllm", logprobs="engine"), 1, False) == "engine"
    kl_reward = _cfg(kl_coef=0.1, kl_mode="reward", advantage_estimator="reinforce_pp")
    assert old_logprob_source(kl_reward, 1, True) == "pass"  # advantages read π_old first
    assert old_logprob_source(_cfg("egspo"), 1, False) == "pass"  # τ_B reads π_old's entropies
    assert old_logprob_source(_cfg("egspo", egspo_gate_mode="absolute"), 1, False) == "forward"
