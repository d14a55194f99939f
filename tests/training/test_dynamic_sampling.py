"""DAPO dynamic sampling in the RL task (training/rl/dynamic_sampling.py): groups whose rewards are
all equal are dropped and more prompts drawn until the batch is full, at most
--max-rollout-rounds rounds; the rest is logged."""
import pytest
import torch

from dist_utils import run_distributed
from megatron_hpt.rollout import RolloutSample

#: correct rollouts (of 4) per prompt, per round: informative groups are those with 1..3
ROUNDS = [[0, 2, 4], [4, 4, 1], [0, 0, 0], [3, 0, 0]]


class RoundEngine:
    """Round r answers its prompt j correctly in ROUNDS[r][j] of 4 samples."""

    def __init__(self, tok, answers):
        self.tok, self.answers, self.round = tok, answers, 0

    def data_parallel_seed(self, base, iteration):
        return iteration

    def generate(self, prompt_ids, n, sampling):
        out = []
        for j, p in enumerate(prompt_ids):
            for k in range(n):
                text = f"#{self.answers[tuple(p)]}" if k < ROUNDS[self.round][j] else "#x"
                ids = self.tok.encode(text, add_special_tokens=False) + [self.tok.eos_token_id]
                out.append(RolloutSample(j, ids, [-0.5] * len(ids), "eos", list(p)))
        self.round += 1
        return out


def dapo_rows_of(settings):
    """Rank entry point: dapo_rows for each --max-rollout-rounds in ``settings``."""
    return [dapo_rows(r) for r in settings]


def dapo_rows(max_rounds):
    """Iteration 0 of the dapo preset with 3 prompts x 4 rollouts."""
    from megatron_hpt.training import distributed
    from training.test_rl_task import _rl_task
    try:
        task, cfg, tok = _rl_task("dapo", ["--micro-batch-size", "4",
                                           "--max-rollout-rounds", str(max_rounds)])
        items = task.source.items(0, 3 * max_rounds)
        task.engine = RoundEngine(tok, {tuple(it.prompt_ids): it.answer for it in items})
        mbs = task.micro_batches(0)
        rows = torch.cat([mb.tokens for mb in mbs])

        def item_of(row):  # the drawn prompt this row continues
            return [k for k, it in enumerate(items)
                    if row[:len(it.prompt_ids)].tolist() == list(it.prompt_ids)][0]
        which = [item_of(rows[i]) for i in range(0, 12, 4)]
        adv = torch.cat([mb.advantages for mb in mbs])
        return which, adv, task.reward_stats
    finally:
        distributed.destroy()


@pytest.fixture(scope="module")
def runs():
    return dict(zip((4, 3), run_distributed(dapo_rows_of, 1, (4, 3))[0]))


def test_dapo_refills_the_batch_with_informative_groups(runs):
    which, adv, stats = runs[4]
    # kept: round 0 prompt 1, round 1 prompt 2, round 3 prompt 0 (prompt k of round r = item 3r+k)
    assert which == [1, 5, 9]
    assert stats["filtered groups"] == 9 and stats["rollout rounds"] == 4
    assert stats["unfilled groups"] == 0
    assert all(adv[g * 4:(g + 1) * 4].abs().max() > 0 for g in range(3))  # every group teaches


def test_dapo_stops_after_max_rollout_rounds_and_tops_up(runs):
    which, adv, stats = runs[3]
    # after 3 rounds two groups are informative; the first dropped group fills the third slot
    assert which == [1, 5, 0]
    assert stats["rollout rounds"] == 3 and stats["unfilled groups"] == 1
    assert stats["filtered groups"] == 7  # 2 + 2 + 3 dropped while drawing
    assert adv[8:].abs().max() == 0
