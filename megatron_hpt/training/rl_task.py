"""The RL / hybrid task: rollouts -> rewards -> HPT gate -> advantages -> rows (DESIGN §1).

Used by every loss preset but ``sft``. One rollout batch feeds ``updates`` optimizer steps
(PPO mini-batches: the rows of a rollout batch / --global-batch-size; 1 by default). Per rollout
batch, on each data-parallel replica:

    prompts      this replica's --rollout-batch-size / DP prompts of the step (data/prompts.py)
    rollouts     --n-samples-per-prompt samples each, with the log-prob of every sampled token;
                 the batch's prompts are spread over all rollout engines (vLLM: every
                 --rollout-tensor-parallel-size consecutive ranks, pipeline stages included)
                 and the samples sent to the replica that trains them; the embedded engine
                 generates each replica's own prompts (rollout/assignment.py, rollout/spread.py).
                 One sampling seed per rollout batch, one per prompt derived from it
    old logprobs π_old is the policy that sampled. With one update per rollout batch it is the
                 training model itself: its log-probs and entropy are the detached values of
                 the training forward (no extra pass; training/old_policy.py), unless vLLM's own
                 log-probs are asked for (--rollout-logprobs engine). A forward-only pass runs
                 before the first update only where it changes the result: several updates,
                 KL in the reward, EGSPO's batch-entropy gate. The mean gap between the
                 engine's and the training model's log-probs is logged as `rollout logprob gap`
    dynamic      presets with filter_groups (dapo): all-equal groups dropped, prompts redrawn
    sampling     (training/dynamic_sampling.py)
    rewards      1 for a correct final answer, else 0 (rewards/: builtin exact match, or
                 math-verify for data files), graded once per replica, in --reward-workers
                 processes (training/grading.py, rewards/pool.py)
    gate         HPT: per prompt, from its number of correct rollouts (hybrid/hpt_gate.py)
    reference    with a KL term (--loss-kl-coef > 0): log-probs of a frozen copy of the
                 starting policy (as loss, k1/k2/k3, or in the reward for REINFORCE++)
    advantages   compute_advantages over each prompt's group (demonstration inside the group
                 for mixed-group presets such as LUFFY)
    rows         per prompt: its n rollouts, then its demonstration when the preset uses one

Rows of one prompt stay on one DP replica, so group statistics never cross ranks; the loss
normalizers are global (LossHead.attach_normalizers). What moves: the engine's own
collectives, the samples from the engine that generated them to the replica's ranks
(rollout/spread.py; nothing with the embedded engine) and the all-reduce of the logged
rollout statistics.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_hpt import platform
from megatron_hpt.arguments import TrainingConfig
from megatron_hpt.rollout.config import rows_per_rollout, uses_demonstrations
from megatron_hpt.data.prompts import PromptSource
from megatron_hpt.data.sft_batch import sft_rows
from megatron_hpt.hybrid import hpt_branch_coefficients
from megatron_hpt.hybrid.gate_rows import chord_step, gated_rows, update_rows
from megatron_hpt.loss import compute_advantages, mu_at_step
from megatron_hpt.loss.batch import Batch
from megatron_hpt.rollout import SamplingParams
from megatron_hpt.rewards import reward_fn
from megatron_hpt.rollout.trainer_engine import TrainerEngine
from megatron_hpt.rollout.assignment import batch_seed
from megatron_hpt.rollout.spread import generate_batch, layout_of
from megatron_hpt.rewards.pool import RewardPool
from megatron_hpt.training import packing
from megatron_hpt.training.dynamic_sampling import fill_batch
from megatron_hpt.training.grading import grade_replica
from megatron_hpt.training.loss_head import LossHead
from megatron_hpt.training.old_policy import needs_entropy_early, old_logprob_source
from megatron_hpt.training.colocation import reference_on_device
from megatron_hpt.training.setup import build_reference_model
from megatron_hpt.training.step import forward_logprobs
from megatron_hpt.training.held_out import greedy_accuracy


def rollout_rows(samples, seq_length: int, pad_token_id: int) -> Batch:
    """Rows ``prompt + response`` (length seq_length + 1, right-padded) as tokens/labels, a CPU
    ``Batch``; the response mask covers the response tokens, ``old_logprobs`` holds each sampled
    token's log-prob at its label position."""
    n = len(samples)
    rows = torch.full((n, seq_length + 1), pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, seq_length + 1))
    old = torch.zeros((n, seq_length + 1))
    for i, s in enumerate(samples):
        ids = list(s.prompt_token_ids) + list(s.response_token_ids)
        if len(ids) > seq_length + 1:
            raise ValueError(f"rollout {i}: prompt + response is {len(ids)} tokens, more than "
                             f"--seq-length + 1 = {seq_length + 1}")
        p = len(s.prompt_token_ids)
        rows[i, :len(ids)] = torch.tensor(ids)
        mask[i, p:len(ids)] = 1.0
        old[i, p:len(ids)] = torch.tensor(s.logprobs, dtype=torch.float32)
    return Batch(tokens=rows[:, :-1].contiguous(), labels=rows[:, 1:].contiguous(),
                 response_mask=mask[:, 1:].contiguous(), old_logprobs=old[:, 1:].contiguous(),
                 position_ids=torch.arange(seq_length).expand(n, seq_length).contiguous())


class RlTask:
    """Rollouts on a prompt source, trained with any RL or hybrid preset."""

    def __init__(self, cfg: TrainingConfig, tokenizer, model, source: PromptSource):
        self.cfg, self.tokenizer, self.model, self.source = cfg, tokenizer, model, source
        self.with_demos = uses_demonstrations(cfg)
        self.reward = reward_fn(cfg.reward_type or self.source.default_reward, cfg.reward_timeout)
        self._pool, self.reward_stats = None, {}
        self.loss_fn = LossHead(cfg.loss, temperature=cfg.rollout.temperature or 1.0)
        #: frozen copy of the starting policy, only when a KL term needs reference log-probs;
        #: built before the engine (with --offload-reference it is on the host when vLLM starts)
        self.reference = build_reference_model(cfg, model) if cfg.loss.kl_coef > 0 else None
        self.engine = TrainerEngine(cfg, model, tokenizer)
        self.stats: Dict[str, float] = {}
        self.stats_extra: Dict[str, float] = {}
        #: optimizer steps per rollout batch (PPO mini-batches): rows of a rollout / global batch
        self.updates = rows_per_rollout(cfg) // cfg.global_batch_size
        self._rollout_index, self._mini_batches = None, []

    # ------------------------------------------------------------------ one step's rows
    def micro_batches(self, iteration: int) -> List[Batch]:
        """This rank's micro-batches of optimizer step ``iteration``: mini-batch
        ``iteration % updates`` of rollout batch ``iteration // updates`` (generated once)."""
        rollout_index, update = divmod(iteration, self.updates)
        if self._rollout_index != rollout_index:
            self._mini_batches = self._rollout(rollout_index)
            self._rollout_index = rollout_index
        micro_batches = self._mini_batches[update]
        if self.cfg.loss.mu_schedule != "none":  # CHORD's SFT mixing weight of this step
            for mb in micro_batches:
                mb.mu = mu_at_step(chord_step(iteration), self.cfg.loss)
        return micro_batches

    def _rollout(self, index: int) -> List[List[Batch]]:
        """Rollout batch ``index``: this rank's rows, cut into ``updates`` mini-batches (whole
        prompt groups each) of micro-batches; old log-probs taken before the first update."""
        cfg, ro, tok = self.cfg, self.cfg.rollout, self.tokenizer
        per_rank = ro.batch_size // parallel_state.get_data_parallel_world_size()
        n = ro.n_samples_per_prompt
        self.reward_stats = {}
        if cfg.loss.filter_groups:  # DAPO dynamic sampling: draws index * R + round
            rounds = ro.max_rollout_rounds
            problems, samples, rewards, filtered = fill_batch(
                lambda r: self._draw(index * rounds + r, per_rank), per_rank, n, rounds,
                parallel_state.get_data_parallel_group())
            self.reward_stats.update(filtered)
        else:
            problems, samples, rewards = self._draw(index, per_rank)
        correct = rewards.view(per_rank, n).sum(dim=1)
        branch = hpt_branch_coefficients(correct, n, ro.hpt_gate, ro.hpt_mode)

        rollouts = rollout_rows(samples, cfg.seq_length, tok.pad_token_id)
        rows = self._interleave(rollouts, problems, n)
        per_row = n + int(self.with_demos)
        is_demo = torch.zeros(per_rank, per_row, dtype=torch.bool)
        on_w = branch.on_policy[:, None].expand(per_rank, per_row).clone()
        sft_w = torch.zeros(per_rank, per_row)
        demo_rl_w = torch.zeros(per_rank, per_row)
        all_rewards = rewards.view(per_rank, n)
        if self.with_demos:
            is_demo[:, -1] = True
            on_w[:, -1] = 0.0
            sft_w[:, -1] = branch.sft
            demo_rl_w[:, -1] = branch.off_policy
            all_rewards = torch.cat([all_rewards, torch.ones(per_rank, 1)], dim=1)
        rows.is_demo = is_demo.reshape(-1)
        if ro.hpt_mode != "off":
            rows = rows.replace(on_policy_weight=on_w.reshape(-1), sft_weight=sft_w.reshape(-1),
                                demo_rl_weight=demo_rl_w.reshape(-1))
        rows = rows.replace(
            rewards=all_rewards.reshape(-1).float(),
            prompt_index=torch.arange(per_rank)[:, None].expand(per_rank, per_row).reshape(-1))
        device = platform.device()
        rows = rows.to(device)  # the one move of the step's rows: everything below is on device
        # rows the gate switches off are removed, not kept at weight 0 (hybrid/gate_rows.py);
        # mini-batches of whole prompts, each cut into micro-batches (fixed size or by token
        # budget, training/packing.py); ``row_index``: each micro-batch's rows in ``rows``
        rows = gated_rows(rows)
        n_rows = rows.num_rows
        mini_batches, row_index = [], []
        for idx in update_rows(rows, per_rank, self.updates):
            sub = []
            mini_batches.append(packing.micro_batches(rows.select(idx), cfg, sub))
            row_index += [[idx[i] for i in s] for s in sub]
        flat = [mb for mini in mini_batches for mb in mini]
        source = old_logprob_source(cfg, self.updates, self.reference is not None)
        self.loss_fn.old_from_forward = source == "forward"
        if source == "pass" or (source == "engine" and needs_entropy_early(cfg.loss)):
            # with several updates the head's own entropy would be the moved policy's: take
            # π_old's log-probs and entropy before the first update
            self._recompute_old_logprobs(flat, entropy_only=source == "engine")
        if self.reference is not None:
            self._reference_logprobs(flat)
        # advantages last: KL-in-reward (REINFORCE++) reads the old and reference log-probs
        extras = {}
        if cfg.loss.kl_mode == "reward" and self.reference is not None and flat[0].ref_logprobs is not None:
            extras = {k: packing.unpack([getattr(mb, k) for mb in flat], row_index, n_rows,
                                        cfg.seq_length) for k in ("old_logprobs", "ref_logprobs")}
        advantages = compute_advantages(
            rows.rewards, rows.prompt_index, cfg.loss, is_demo=rows.is_demo,
            response_mask=rows.response_mask,
            group=parallel_state.get_data_parallel_group(), **extras).float()
        for idx, mb in zip(row_index, flat):
            adv = advantages[torch.tensor(idx, device=advantages.device)]
            mb.advantages = adv[:, :mb.response_mask.shape[1]] if adv.dim() == 2 else adv
        self._record(rewards, branch.sft_share, rollouts.response_mask.sum(1), samples)
        return mini_batches

    def _draw(self, index: int, per_rank: int):
        """Prompts ``index`` of this replica, their rollouts and rewards (graded once)."""
        cfg, ro, tok = self.cfg, self.cfg.rollout, self.tokenizer
        dp_rank = parallel_state.get_data_parallel_rank()
        # the whole batch's prompts: any engine may generate any of them (rollout/spread.py)
        batch = self.source.items(index * ro.batch_size, ro.batch_size)
        problems = batch[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        prompt_ids = [p.prompt_ids for p in batch]
        room = cfg.seq_length + 1 - max(map(len, prompt_ids))
        if room < 1:
            raise ValueError(f"{cfg.data_path}: a prompt of rollout batch {index} is "
                             f"{max(map(len, prompt_ids))} tokens, longer than --seq-length")
        sampling = SamplingParams(
            temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k,
            max_new_tokens=min(ro.max_response_len or room, room),
            eos_token_ids=(tok.eos_token_id,),
            seed=batch_seed(cfg.seed, index))
        samples = generate_batch(self.engine, prompt_ids, ro.n_samples_per_prompt, sampling,
                                 layout_of(cfg))  # this replica's, prompt-major
        rewards, counts, raised = grade_replica(
            self._reward_pool, lambda: [(tok.decode(s.response_token_ids, skip_special_tokens=True),
                                         problems[s.prompt_index].answer) for s in samples],
            len(samples))
        if raised is not None:  # a grader bug stops the run naming the answer
            j = samples[raised[0]].prompt_index
            raise RuntimeError(f"the reward grader failed on rollout batch {index}, prompt {j} "
                               f"of this rank (answer {problems[j].answer!r}): "
                               f"{raised[1] or 'see the grading rank of this replica'}")
        for k, v in counts.items():
            self.reward_stats[k] = self.reward_stats.get(k, 0.0) + v
        return problems, samples, rewards

    def _reward_pool(self) -> RewardPool:
        """The grader pool, started on first use (only grading ranks use it)."""
        if self._pool is None:
            self._pool = RewardPool(self.cfg.reward_type or self.source.default_reward,
                                    self.cfg.reward_timeout, self.cfg.reward_workers,
                                    inline_fn=self.reward)
        return self._pool

    def _reference_logprobs(self, micro_batches) -> None:
        """Log-probs of the frozen reference policy for the KL terms (last pipeline stage)."""
        with reference_on_device(self.reference):  # --offload-reference: host memory otherwise
            ref = forward_logprobs(self.reference, micro_batches, self.cfg.seq_length,
                                   self.cfg.rollout.temperature or 1.0)
        for mb, (logprobs, _) in zip(micro_batches, ref):
            mb.ref_logprobs = logprobs * mb.response_mask

    def _recompute_old_logprobs(self, micro_batches, entropy_only: bool = False) -> None:
        """Replace the engine's log-probs by the training model's (last pipeline stage, where the
        loss runs) and log the mean absolute gap over rollout tokens; ``entropy_only``: keep the
        engine's log-probs, take π_old's entropy (training/old_policy.py)."""
        fresh = forward_logprobs(self.model, micro_batches, self.cfg.seq_length,
                                 self.cfg.rollout.temperature or 1.0)
        if not fresh:
            return
        gap = torch.zeros(2, dtype=torch.float64, device=micro_batches[0].device)
        for mb, (logprobs, entropy) in zip(micro_batches, fresh):
            rollout_tokens = mb.response_mask * (~mb.is_demo)[:, None].float()
            gap += torch.stack([((logprobs - mb.old_logprobs).abs() * rollout_tokens).sum(),
                                rollout_tokens.sum()]).double()
            if not entropy_only:
                mb.old_logprobs = logprobs * mb.response_mask
            mb.old_entropy = entropy  # EGSPO's gate and SRFT's weights read π_old's entropy
        dist.all_reduce(gap, group=parallel_state.get_data_parallel_group())
        self.stats_extra = {"rollout logprob gap": float(gap[0] / gap[1].clamp(min=1))}

    def _interleave(self, rollouts: Batch, problems, n: int) -> Batch:
        """Per prompt: its n rollout rows, then (if used) its demonstration row."""
        if not self.with_demos:
            return rollouts
        demos = sft_rows(self.tokenizer, [p.prompt_ids for p in problems],
                         [p.demonstration for p in problems], self.cfg.seq_length,
                         source=self.cfg.data_path)
        demos.old_logprobs = torch.zeros_like(demos.response_mask)  # π_ref ≡ 1 for demos
        return Batch.cat([part for j in range(len(problems))
                          for part in (rollouts.select(slice(j * n, (j + 1) * n)),
                                       demos.select(slice(j, j + 1)))])

    def _record(self, rewards, sft_share: float, lengths, samples) -> None:
        """Rollout statistics of the step, averaged over DP replicas."""
        local = torch.tensor([float(rewards.mean()), sft_share, float(lengths.float().mean()),
                              sum(s.finish_reason == "length" for s in samples) / len(samples)],
                             dtype=torch.float64, device=platform.device())
        group = parallel_state.get_data_parallel_group()
        dist.all_reduce(local, group=group)
        local /= dist.get_world_size(group)
        self.stats = {"reward": float(local[0]), "sft share": float(local[1]),
                      "response length": float(local[2]), "truncated": float(local[3])}
        self.stats.update(self.stats_extra)
        self.stats.update(self.reward_stats)

    # ------------------------------------------------------------------ resume (resume.py)
    def state_dict(self) -> Dict[str, object]:
        """The rows of the rollout batch being trained (its later mini-batches are trained after
        a resume, not re-sampled by the moved policy). Per-step keys (normalizers, μ) are left
        out: they are recomputed."""
        if self._rollout_index is None or self.updates == 1:
            return {}
        return {"rollout_index": self._rollout_index, "stats": dict(self.stats),
                "mini_batches": [[{k: v.cpu() for k, v in mb.tensors().items()}
                                  for mb in mini] for mini in self._mini_batches]}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if state.get("mini_batches"):
            self._rollout_index = int(state["rollout_index"])
            self._mini_batches = [[Batch(**mb).to(platform.device()) for mb in mini]
                                  for mini in state["mini_batches"]]
            self.stats = dict(state.get("stats", {}))

    # ------------------------------------------------------------------ the loop's hooks
    def attach_normalizers(self, micro_batches: List[Batch]) -> None:
        self.loss_fn.attach_normalizers(micro_batches)

    def after_step(self) -> Dict[str, float]:
        """The optimizer changed the weights: the engine needs them before the next rollouts.
        Returns the step's rollout statistics for logging."""
        self.engine.weights_changed()
        return dict(self.stats)

    def evaluate(self, model, num_problems: int = 64) -> Dict[str, float]:
        return greedy_accuracy(self.engine, self.cfg, self.tokenizer, num_problems)

    def finish(self, model) -> Dict[str, float]:
        """End of the run: final evaluation, then the rollout engine is released."""
        try:
            return self.evaluate(model)
        finally:
            self.engine.shutdown()
            if self._pool is not None:
                self._pool.close()
