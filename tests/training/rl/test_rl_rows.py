"""The row builder (data/rows.py) for a demonstration and a rollout, and the RL task's rows and
gate steps (training/rl/rows.py, training/rl/gate.py, hybrid/row_weights.py) on hand-built
graded samples. Expected tokens, labels and masks are written out here."""
from types import SimpleNamespace

import pytest
import torch

from megatron_hpt.data.rows import rollout_rows, sft_rows, token_rows
from megatron_hpt.hybrid import hpt_branch_coefficients
from megatron_hpt.hybrid.row_weights import row_weights
from megatron_hpt.rollout import RolloutSample
from megatron_hpt.training.rl.gate import apply_gate, gate
from megatron_hpt.training.rl.rows import rollout_batch_rows

PAD, BOS, EOS = 0, 1, 2


class DigitTokenizer:
    """'7' -> 17: each digit is one token 10 + d; bos 1, eos 2, pad 0."""
    pad_token_id, bos_token_id, eos_token_id = PAD, BOS, EOS

    def encode(self, text, add_special_tokens=False):
        return [10 + int(c) for c in text]


def test_one_builder_for_a_demonstration_and_a_rollout():
    demo = sft_rows(DigitTokenizer(), ["34"], ["7"], seq_length=6)
    # row: <bos> 3 4 | 7 <eos> | <pad> <pad>   (prompt | response | padding), 7 = seq_length + 1
    assert demo.tokens.tolist() == [[BOS, 13, 14, 17, EOS, PAD]]
    assert demo.labels.tolist() == [[13, 14, 17, EOS, PAD, PAD]]
    assert demo.response_mask.tolist() == [[0, 0, 1, 1, 0, 0]]
    assert demo.position_ids.tolist() == [[0, 1, 2, 3, 4, 5]]
    assert demo.old_logprobs is None

    sample = RolloutSample(0, [17, 18, EOS], [-0.25, -0.5, -0.75], "eos", [BOS, 13, 14])
    ro = rollout_rows([sample], seq_length=6, pad_token_id=PAD)
    assert ro.tokens.tolist() == [[BOS, 13, 14, 17, 18, EOS]]
    assert ro.labels.tolist() == [[13, 14, 17, 18, EOS, PAD]]
    assert ro.response_mask.tolist() == [[0, 0, 1, 1, 1, 0]]
    assert ro.old_logprobs.tolist() == [[0, 0, -0.25, -0.5, -0.75, 0]]  # at the label positions

    # token-id prompts (e.g. a chat template) are kept as they are; the same rows as token_rows
    same = sft_rows(DigitTokenizer(), [[BOS, 13, 14]], ["7"], seq_length=6)
    plain = token_rows([[BOS, 13, 14]], [[17, EOS]], 6, PAD)
    assert torch.equal(same.tokens, plain.tokens) and torch.equal(same.response_mask, plain.response_mask)


def test_an_over_long_row_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"data\.jsonl: row 1: prompt \+ response is 8 tokens, "
                                         r"more than --seq-length \+ 1 = 7"):
        sft_rows(DigitTokenizer(), ["1", "12345"], ["2", "6"], seq_length=6, source="data.jsonl")


def test_row_weights_put_the_branch_on_rollouts_and_the_demonstration():
    branch = hpt_branch_coefficients(torch.tensor([0, 2]), 2, gate=0, mode="switch")
    w = row_weights(branch, n=2, with_demo=True)  # rows: r r d | r r d
    assert w["on_policy_weight"].tolist() == [0, 0, 0, 1, 1, 0]
    assert w["sft_weight"].tolist() == [0, 0, 1, 0, 0, 0]
    assert w["demo_rl_weight"].tolist() == [0] * 6
    soft = row_weights(hpt_branch_coefficients(torch.tensor([1]), 2, mode="soft"), 2, True)
    # 1 of 2 correct = 4 of 8: the table's (0.5, 0.5, 0.125)
    assert soft["on_policy_weight"].tolist() == [0.5, 0.5, 0.0]
    assert soft["demo_rl_weight"].tolist() == [0.0, 0.0, 0.5]
    assert soft["sft_weight"].tolist() == [0.0, 0.0, 0.125]


def _graded(correct, n=2):
    """P prompts '1', '2', ... with demonstration '9', and n samples each; the first correct[j]
    samples of prompt j score 1."""
    problems = [SimpleNamespace(prompt_ids=[BOS, 11 + j], demonstration="9", answer="9")
                for j in range(len(correct))]
    samples = [RolloutSample(j, [15 + k, EOS], [-0.25, -0.5], "eos", [BOS, 11 + j])
               for j in range(len(correct)) for k in range(n)]
    rewards = torch.tensor([1.0 if k < c else 0.0 for c in correct for k in range(n)])
    return problems, samples, rewards


def test_gate_step_on_graded_samples_keeps_the_expected_rows():
    """HPT switch at gate 0, n = 2: prompt 0 (0 correct) keeps only its demonstration, prompts
    1 and 2 (1 and 2 correct) keep their rollouts and lose their demonstrations."""
    problems, samples, rewards = _graded([0, 1, 2])
    rl = SimpleNamespace(hpt_gate=0, hpt_mode="switch")
    branch = gate(rewards, 2, rl)
    assert branch.sft.tolist() == [1, 0, 0] and branch.on_policy.tolist() == [0, 1, 1]
    rows = rollout_batch_rows(samples, problems, rewards, 2, True, DigitTokenizer(), 6)
    assert rows.num_rows == 9  # per prompt: r r d
    assert rows.is_demo.tolist() == [False, False, True] * 3
    assert rows.rewards.tolist() == [0, 0, 1, 1, 0, 1, 1, 1, 1]  # a demonstration scores 1
    gated = apply_gate(rows, branch, 2, True, rl.hpt_mode)
    assert gated.prompt_index.tolist() == [0, 1, 1, 2, 2]
    assert gated.is_demo.tolist() == [True, False, False, False, False]
    assert gated.sft_weight.tolist() == [1, 0, 0, 0, 0]
    assert gated.on_policy_weight.tolist() == [0, 1, 1, 1, 1]
    assert gated.tokens.tolist() == [
        [BOS, 11, 19, EOS, PAD, PAD],   # prompt 0's demonstration: <bos> 1 | 9 <eos>
        [BOS, 12, 15, EOS, PAD, PAD],   # prompt 1's rollouts
        [BOS, 12, 16, EOS, PAD, PAD],
        [BOS, 13, 15, EOS, PAD, PAD],   # prompt 2's rollouts
        [BOS, 13, 16, EOS, PAD, PAD]]
    assert gated.old_logprobs.tolist()[0] == [0.0] * 6  # π_ref ≡ 1 for demonstrations
    assert gated.old_logprobs.tolist()[1] == [0.0, -0.25, -0.5, 0.0, 0.0, 0.0]
    # --hpt-mode off: every row stays, without weights
    off = apply_gate(rows, gate(rewards, 2, SimpleNamespace(hpt_gate=0, hpt_mode="off")), 2, True, "off")
    assert off.num_rows == 9 and off.on_policy_weight is None


def test_rows_without_demonstrations():
    problems, samples, rewards = _graded([1, 2])
    rows = rollout_batch_rows(samples, problems, rewards, 2, False, DigitTokenizer(), 6)
    assert rows.num_rows == 4 and not rows.is_demo.any()
    assert rows.prompt_index.tolist() == [0, 0, 1, 1]
    assert rows.rewards.tolist() == [1, 0, 1, 1]
