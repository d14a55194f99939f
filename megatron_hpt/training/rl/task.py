"""The RL / hybrid task: one rollout batch as named steps, one module each (DESIGN §1).

Used by every loss preset but ``sft``. One rollout batch feeds ``updates`` optimizer steps
(PPO mini-batches: the rows of a rollout batch / --global-batch-size; 1 by default). Per rollout
batch, on each data-parallel replica (``RlTask._rollout`` reads as this list):

    sample       this replica's --rollout-batch-size / DP prompts, --n-samples-per-prompt
                 rollouts each with the log-prob of every sampled token; the batch is spread
                 over all rollout engines (pipeline stages too; rollout/assignment.py)
                                                                                 (sample.py)
    grade        1 for a correct final answer, else 0, graded once per replica, in
                 --reward-workers processes (rewards/, rewards/pool.py)          (grade.py)
                 with filter_groups (dapo): all-equal groups dropped, prompts redrawn
                                                                       (dynamic_sampling.py)
    gate         HPT: each prompt's branch from its number of correct rollouts  (gate.py)
    rows         per prompt: its n rollouts, then its demonstration when the preset uses
                 one (data/rows.py); the gate's per-row weights, switched-off rows removed
                                                                   (rows.py, gate.py, hybrid/)
    mini-batches whole prompts per optimizer step, each cut into micro-batches (batches.py)
    log-probs    π_old: the training forward's own (no extra pass) unless a forward-only pass
                 before the first update changes the result: several updates, KL in the
                 reward, EGSPO's batch-entropy gate, vLLM's log-probs kept (old_policy.py);
                 π_ref: a frozen copy of the starting policy with --loss-kl-coef > 0
                                                                             (logprobs.py)
    advantages   compute_advantages over each prompt's group (demonstration inside the group
                 for mixed-group presets such as LUFFY)                     (advantages.py)
    statistics   reward, sft share, response length, truncated, logprob gap    (stats.py)

Rows of one prompt stay on one DP replica, so group statistics never cross ranks; the loss
normalizers are global (LossHead.attach_normalizers). What moves: the engine's own
collectives, the samples from the engine that generated them to the ranks of the replica that
trains them (rollout/spread.py; nothing with the embedded engine) and the all-reduce of the
logged rollout statistics.
"""
from __future__ import annotations

from typing import Dict, List

from megatron.core import parallel_state

from megatron_hpt import platform
from megatron_hpt.arguments import TrainingConfig
from megatron_hpt.data.prompts import PromptSource
from megatron_hpt.hybrid.gate_rows import chord_step
from megatron_hpt.loss import mu_at_step
from megatron_hpt.loss.batch import Batch
from megatron_hpt.rewards import reward_fn
from megatron_hpt.rewards.pool import RewardPool
from megatron_hpt.rollout.trainer_engine import TrainerEngine
from megatron_hpt.rollout.spread import SpreadEngine, layout_of
from megatron_hpt.training.held_out import greedy_accuracy
from megatron_hpt.training.loss_head import LossHead
from megatron_hpt.training.rl.advantages import attach_advantages, rollout_advantages
from megatron_hpt.training.rl.batches import flatten, mini_batches
from megatron_hpt.training.rl.config import rows_per_rollout, uses_demonstrations
from megatron_hpt.training.rl.dynamic_sampling import fill_batch
from megatron_hpt.training.rl.gate import apply_gate, gate
from megatron_hpt.training.rl.grade import grade
from megatron_hpt.training.rl.logprobs import recompute_old_logprobs, reference_logprobs
from megatron_hpt.training.rl.old_policy import needs_pass, old_logprob_source
from megatron_hpt.training.rl.rows import rollout_batch_rows
from megatron_hpt.training.rl.sample import batch_prompts, rank_prompts, sample
from megatron_hpt.training.rl.stats import rollout_stats
from megatron_hpt.training.setup import build_reference_model


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
        cfg, n = self.cfg, self.cfg.rollout.n_samples_per_prompt
        per_rank = cfg.rollout.batch_size // parallel_state.get_data_parallel_world_size()
        dp_group = parallel_state.get_data_parallel_group()
        problems, samples, rewards = self._sample_and_grade(index, per_rank)
        branch = gate(rewards, n, cfg.rl)
        rows = rollout_batch_rows(samples, problems, rewards, n, self.with_demos, self.tokenizer,
                                  cfg.seq_length, source=cfg.data_path)
        rows = apply_gate(rows, branch, n, self.with_demos, cfg.rl.hpt_mode)
        rows = rows.to(platform.device())  # the one move of the step's rows
        mini, row_index = mini_batches(rows, per_rank, self.updates, cfg)
        flat = flatten(mini)
        self._old_and_reference_logprobs(flat)
        attach_advantages(rollout_advantages(rows, cfg.loss, flat, row_index, cfg.seq_length,
                                             group=dp_group), flat, row_index)
        self.stats = {**rollout_stats(rewards, branch.sft_share, samples, platform.device(),
                                      dp_group), **self.stats_extra, **self.reward_stats}
        return mini

    # ------------------------------------------------------------------ the steps' parts
    def _sample_and_grade(self, index: int, per_rank: int):
        """(problems, samples, rewards) of rollout batch ``index``; with DAPO's filter_groups,
        prompts redrawn (rounds index·R + r) until each group's rewards differ."""
        self.reward_stats = {}
        if not self.cfg.loss.filter_groups:
            return self._draw(index, per_rank)
        rounds = self.cfg.rl.max_rollout_rounds
        problems, samples, rewards, filtered = fill_batch(
            lambda r: self._draw(index * rounds + r, per_rank), per_rank,
            self.cfg.rollout.n_samples_per_prompt, rounds, parallel_state.get_data_parallel_group())
        self.reward_stats.update(filtered)
        return problems, samples, rewards

    def _draw(self, index: int, per_rank: int):
        """Prompts ``index`` of this replica, their rollouts and rewards (graded once)."""
        batch = batch_prompts(self.source, index, self.cfg.rollout.batch_size)
        problems = rank_prompts(batch, per_rank, parallel_state.get_data_parallel_rank())
        # any engine may generate any prompt of the batch; this replica's samples come back
        samples = sample(self.engine, batch, self.cfg, index, self.tokenizer.eos_token_id)
        rewards, counts = grade(self._reward_pool, self.tokenizer, problems, samples, index)
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

    def _old_and_reference_logprobs(self, flat: List[Batch]) -> None:
        """π_old's log-probs / entropy where a pass is needed (old_policy.py), π_ref's with KL."""
        source = old_logprob_source(self.cfg, self.updates, self.reference is not None)
        self.loss_fn.old_from_forward = source == "forward"
        if needs_pass(source, self.cfg.loss):
            # with several updates the head's own entropy would be the moved policy's: take
            # π_old's log-probs and entropy before the first update
            self._recompute_old_logprobs(flat, entropy_only=source == "engine")
        if self.reference is not None:
            reference_logprobs(self.reference, flat, self.cfg.seq_length,
                               self.cfg.rollout.temperature or 1.0)

    def _recompute_old_logprobs(self, micro_batches, entropy_only: bool = False) -> None:
        """The training model's log-probs (or only its entropy) as π_old's; logs the gap."""
        gap = recompute_old_logprobs(self.model, micro_batches, self.cfg.seq_length,
                                     self.cfg.rollout.temperature or 1.0, entropy_only)
        if gap is not None:
            self.stats_extra = {"rollout logprob gap": gap}

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
        # the problems generated once over all rollout engines, every rank gets all samples
        engine = SpreadEngine(self.engine, layout_of(self.cfg))
        return greedy_accuracy(engine, self.cfg, self.tokenizer, num_problems)

    def finish(self, model) -> Dict[str, float]:
        """End of the run: final evaluation, then the rollout engine is released."""
        try:
            return self.evaluate(model)
        finally:
            self.engine.shutdown()
            if self._pool is not None:
                self._pool.close()
