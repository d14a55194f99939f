"""The RL task's steps alone (training/rl/): sample, grade, mini-batches, advantages and the
config arithmetic, on hand-built inputs; references written plainly here."""
from types import SimpleNamespace

import pytest
import torch

from megatron_hpt.loss import preset
from megatron_hpt.loss.batch import Batch
from megatron_hpt.rollout import RolloutSample
from megatron_hpt.training.rl import grade as grade_module
from megatron_hpt.training.rl.advantages import attach_advantages, rollout_advantages
from megatron_hpt.training.rl.batches import flatten, mini_batches
from megatron_hpt.training.rl.config import rl_config_errors, rows_per_rollout, uses_demonstrations
from megatron_hpt.training.rl.sample import rank_prompts, sample


def _cfg(**over):
    ro = SimpleNamespace(temperature=0.7, top_p=0.9, top_k=5, max_response_len=None,
                         n_samples_per_prompt=2, batch_size=4, engine="embedded")
    cfg = SimpleNamespace(rollout=ro, seq_length=8, seed=3, data_path="builtin:arithmetic",
                          loss=preset("grpo"), global_batch_size=8, micro_batch_size=3,
                          max_tokens_per_micro_batch=None, sequence_packing=False,
                          rl=SimpleNamespace(max_rollout_rounds=4, hpt_mode="off"),
                          parallel=SimpleNamespace(tensor_model_parallel_size=1,
                                                   sequence_parallel=False,
                                                   context_parallel_size=1))
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


# --------------------------------------------------------------------------- sample

def test_each_rank_takes_its_own_prompts():
    source = SimpleNamespace(items=lambda start, count: list(range(start, start + count)))
    # rollout batch 3 of 8 prompts, 4 per DP rank: rank 1 takes items 28..31
    assert rank_prompts(source, 3, 8, 4, 1) == [28, 29, 30, 31]


class RecordingEngine:
    def __init__(self):
        self.calls = []

    def data_parallel_seed(self, base, index):
        return base * 100 + index

    def generate(self, prompt_ids, n, params):
        self.calls.append((prompt_ids, n, params))
        return ["s"] * (n * len(prompt_ids))


def test_sample_asks_the_engine_with_the_run_sampling_flags():
    engine = RecordingEngine()
    problems = [SimpleNamespace(prompt_ids=[1, 2, 3]), SimpleNamespace(prompt_ids=[1, 2])]
    out = sample(engine, problems, _cfg(), 5, eos_token_id=2)
    assert out == ["s"] * 4
    (prompt_ids, n, params), = engine.calls
    assert prompt_ids == [[1, 2, 3], [1, 2]] and n == 2
    assert (params.temperature, params.top_p, params.top_k) == (0.7, 0.9, 5)
    assert params.max_new_tokens == 8 + 1 - 3  # what --seq-length leaves after the longest prompt
    assert params.eos_token_ids == (2,) and params.seed == 305
    with pytest.raises(ValueError, match="builtin:arithmetic: a prompt of rollout batch 5 is 9 tokens"):
        sample(engine, [SimpleNamespace(prompt_ids=list(range(9)))], _cfg(), 5, 2)


# --------------------------------------------------------------------------- grade

class EchoTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(str(i) for i in ids)


def test_grade_pairs_each_response_with_its_prompts_answer(monkeypatch):
    seen = {}

    def fake_replica(pool, pairs, n):  # the collective part is tests/rewards/test_pool.py's
        seen["pairs"] = pairs()
        return (torch.tensor([float(r == a) for r, a in seen["pairs"]]),
                {"reward timeouts": 0.0, "reward failures": 0.0}, None)
    monkeypatch.setattr(grade_module, "grade_replica", fake_replica)
    problems = [SimpleNamespace(answer="7"), SimpleNamespace(answer="12")]
    samples = [RolloutSample(0, [7], [0.0], "eos"), RolloutSample(0, [8], [0.0], "eos"),
               RolloutSample(1, [1, 2], [0.0, 0.0], "eos"), RolloutSample(1, [2], [0.0], "eos")]
    rewards, counts = grade_module.grade(None, EchoTokenizer(), problems, samples, 0)
    assert seen["pairs"] == [("7", "7"), ("8", "7"), ("12", "12"), ("2", "12")]
    assert rewards.tolist() == [1.0, 0.0, 1.0, 0.0] and counts["reward failures"] == 0.0

    monkeypatch.setattr(grade_module, "grade_replica",
                        lambda pool, pairs, n: (torch.zeros(n), {}, (2, "ZeroDivisionError: x")))
    with pytest.raises(RuntimeError, match=r"rollout batch 4, prompt 1 of this rank \(answer '12'\): "
                                           r"ZeroDivisionError: x"):
        grade_module.grade(None, EchoTokenizer(), problems, samples, 4)


# --------------------------------------------------------------------------- mini-batches

def _rows(prompt_of_row, rewards, demo=None):
    n = len(prompt_of_row)
    mask = torch.zeros(n, 8)
    mask[:, 2:5] = 1.0
    return Batch(tokens=torch.arange(n)[:, None].repeat(1, 8), labels=torch.zeros(n, 8, dtype=torch.long),
                 position_ids=torch.arange(8).expand(n, 8), response_mask=mask,
                 is_demo=torch.zeros(n, dtype=torch.bool) if demo is None else torch.tensor(demo),
                 rewards=torch.tensor(rewards, dtype=torch.float32),
                 prompt_index=torch.tensor(prompt_of_row))


def test_mini_batches_hold_whole_prompts_and_remember_their_rows():
    rows = _rows([0, 0, 1, 1, 2, 2, 3, 3], [0.0] * 8)
    mini, row_index = mini_batches(rows, 4, 2, _cfg())  # 2 updates of 2 prompts, 3 rows per mb
    assert [[mb.num_rows for mb in m] for m in mini] == [[3, 1], [3, 1]]
    assert row_index == [[0, 1, 2], [3], [4, 5, 6], [7]]
    for mb, idx in zip(flatten(mini), row_index):
        assert mb.tokens[:, 0].tolist() == idx  # row i's tokens are i


# --------------------------------------------------------------------------- advantages

def test_advantages_equal_the_group_formula_and_reach_their_rows():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    rows = _rows([0, 0, 0, 1, 1, 1], rewards)
    adv = rollout_advantages(rows, preset("grpo"))
    want = []
    for g in (rewards[:3], rewards[3:]):
        t = torch.tensor(g)
        want += ((t - t.mean()) / (t.std() + 1e-6)).tolist()  # GRPO: unbiased std, eps 1e-6
    assert adv.tolist() == pytest.approx(want, abs=1e-6)
    # Dr.GRPO with a demonstration outside the group (not mixed): A = R - mean of the rollouts,
    # 0 on the demonstration
    demo_rows = _rows([0, 0, 0], [1.0, 0.0, 1.0], demo=[False, False, True])
    dr = rollout_advantages(demo_rows, preset("dr_grpo"))
    assert dr.tolist() == pytest.approx([0.5, -0.5, 0.0])
    # LUFFY (mixed group, Dr.GRPO as released): the demonstration is part of the group mean
    lf = rollout_advantages(demo_rows, preset("luffy"))
    assert lf.tolist() == pytest.approx([1 - 2 / 3, 0 - 2 / 3, 1 - 2 / 3])
    # attached by row index: a micro-batch holding rows [4, 1] gets A[4], A[1]
    mbs = [rows.select([4, 1]), rows.select([0, 2, 3, 5])]
    attach_advantages(adv, mbs, [[4, 1], [0, 2, 3, 5]])
    assert mbs[0].advantages.tolist() == [adv[4].item(), adv[1].item()]
    assert mbs[1].advantages.tolist() == [adv[i].item() for i in (0, 2, 3, 5)]


# --------------------------------------------------------------------------- config

def test_rows_per_rollout_and_the_global_batch_check():
    cfg = _cfg()
    assert not uses_demonstrations(cfg) and rows_per_rollout(cfg) == 4 * 2
    assert rl_config_errors(cfg, pp=1, dp=1) == []
    hpt = _cfg(loss=preset("hpt"), global_batch_size=8)
    assert uses_demonstrations(hpt) and rows_per_rollout(hpt) == 4 * (2 + 1)
    (err,) = rl_config_errors(hpt, pp=1, dp=1)
    assert "--global-batch-size 8 must be the rows of one rollout batch" in err and "= 12" in err
    hpt.global_batch_size = 6  # two updates of 2 prompts each
    assert rl_config_errors(hpt, pp=1, dp=1) == []
    bad = _cfg(rl=SimpleNamespace(max_rollout_rounds=0, hpt_mode="soft"))
    errors = rl_config_errors(bad, pp=1, dp=3)
    assert any("--rollout-batch-size 4 is not divisible by the data-parallel size 3" in e for e in errors)
    assert any("--max-rollout-rounds 0 must be >= 1" in e for e in errors)
    assert any("--hpt-mode soft trains the demonstrations off-policy too" in e for e in errors)
