"""Who generates which prompt of a rollout batch, and who trains which rows (pure functions).

Rollout engines are decoupled from the training layout:

- **Separate engines** (vLLM, ``--rollout-tensor-parallel-size R``, default the training TP):
  every rank of the job belongs to exactly one engine, engine ``e`` = ranks ``[e*R, (e+1)*R)``
  (vLLM's external launcher forms its TP groups from consecutive ranks), so there are
  ``world / R`` engines. The prompts of the batch are cut into contiguous blocks of whole
  prompts, sizes differing by at most one, one block per engine: pipeline stages (and CP ranks)
  act as extra data parallelism for generation, and no prompt is generated twice.
- **The shared engine** (``embedded``: the training model decodes, so one engine is a whole
  TP x PP x CP model replica): one engine per data-parallel replica, generating exactly the
  prompts that replica trains; nothing moves. Its rollout TP is the training TP by construction.

Training rows: DP rank ``d`` trains the prompts ``[d*P/DP, (d+1)*P/DP)`` of the batch (each with
its ``n`` samples and, if used, its demonstration), as before; every rank of the replica (all TP,
PP and CP ranks) receives the same samples. The routes say who sends what to whom: the first rank
of each engine sends every prompt's samples to every rank of the replica that trains it.

Sampling seeds: one seed per rollout batch (from the run seed and the rollout index); prompt ``p``
of the batch draws from its own seed derived from the batch seed and ``p``, and its sample ``j``
from that seed + ``j``, so a prompt's samples do not depend on which engine generates it nor on
what else is in that engine's batch (both engines support per-prompt seeds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

SEED_MODULUS = 2 ** 31


def rollout_tensor_parallel_size(cfg) -> int:
    """``--rollout-tensor-parallel-size``, defaulting to the training TP size."""
    return cfg.rollout.tensor_parallel_size or cfg.parallel.tensor_model_parallel_size


def rollout_layout_errors(world_size: int, train_tp: int, rollout_tp: int, shared: bool,
                          engine: str, batch_size: int) -> List[str]:
    """Why this rollout layout cannot run, one message per problem (empty when it can). Every
    separate engine needs at least one prompt: its ``generate`` call is where the weight
    stream (a collective over the training groups) runs."""
    if rollout_tp < 1:
        return [f"--rollout-tensor-parallel-size {rollout_tp} must be >= 1"]
    errors = []
    if shared and rollout_tp != train_tp:
        errors.append(f"--rollout-engine {engine} decodes with the training model itself, so "
                      f"its tensor parallelism is the training one: --rollout-tensor-parallel-size "
                      f"{rollout_tp} differs from --tensor-model-parallel-size {train_tp}; drop "
                      f"the flag or use --rollout-engine vllm")
    if world_size % rollout_tp:
        errors.append(f"--rollout-tensor-parallel-size {rollout_tp} does not divide the world "
                      f"size {world_size} (every rank belongs to exactly one rollout engine)")
    elif not shared and batch_size < world_size // rollout_tp:
        errors.append(f"--rollout-batch-size {batch_size} is smaller than the number of rollout "
                      f"engines, world size {world_size} / --rollout-tensor-parallel-size "
                      f"{rollout_tp} = {world_size // rollout_tp}: every engine needs a prompt; "
                      f"raise the batch or the rollout TP")
    return errors


def batch_seed(run_seed: int, rollout_index: int) -> int:
    """The sampling seed of rollout batch ``rollout_index`` (the same on every rank)."""
    return (run_seed * 1_000_003 + rollout_index * 1_009) % SEED_MODULUS


def prompt_seed(seed_of_batch: int, prompt: int) -> int:
    """Prompt ``prompt``'s seed within a batch (its sample j uses this + j): a 64-bit mix of the
    two, so that neighbouring prompts' seeds (and their +j) do not overlap."""
    x = (seed_of_batch * 0x9E3779B97F4A7C15 + (prompt + 1) * 0xBF58476D1CE4E5B9) % 2 ** 64
    x = ((x ^ (x >> 31)) * 0x94D049BB133111EB) % 2 ** 64
    return (x ^ (x >> 29)) % (SEED_MODULUS - 2 ** 20)  # room for + j below 2**31


def balanced_blocks(num_items: int, num_parts: int) -> List[range]:
    """``num_items`` cut into ``num_parts`` contiguous ranges whose sizes differ by at most one
    (the first ``num_items % num_parts`` one longer; empty ranges when items < parts)."""
    base, extra = divmod(num_items, num_parts)
    out, start = [], 0
    for k in range(num_parts):
        size = base + (k < extra)
        out.append(range(start, start + size))
        start += size
    return out


@dataclass(frozen=True)
class RolloutLayout:
    """The job as the rollout sees it."""

    dp_rank_of: Tuple[int, ...]
    """Training data-parallel rank of every global rank (index = global rank)."""
    rollout_tp: int
    """Ranks per rollout engine (separate engines); ignored when ``shared``."""
    shared: bool = False
    """True when the engine is the training model itself (embedded): one engine per DP replica."""

    @property
    def world_size(self) -> int:
        return len(self.dp_rank_of)

    @property
    def dp_size(self) -> int:
        return max(self.dp_rank_of) + 1

    def engines(self) -> List[Tuple[int, ...]]:
        """Global ranks of each engine; the first rank of each is the one that sends."""
        if self.shared:
            return [tuple(r for r, d in enumerate(self.dp_rank_of) if d == dp)
                    for dp in range(self.dp_size)]
        if self.world_size % self.rollout_tp:
            raise ValueError(f"--rollout-tensor-parallel-size {self.rollout_tp} does not divide "
                             f"the world size {self.world_size}")
        return [tuple(range(e, e + self.rollout_tp))
                for e in range(0, self.world_size, self.rollout_tp)]

    def engine_of(self, rank: int) -> int:
        if self.shared:
            return self.dp_rank_of[rank]
        return rank // self.rollout_tp


@dataclass(frozen=True)
class RolloutPlan:
    """One rollout batch of ``num_prompts`` prompts on a layout."""

    layout: RolloutLayout
    num_prompts: int
    engine_prompts: Tuple[range, ...]
    """Prompts (batch indices) each engine generates."""
    train_prompts: Tuple[range, ...]
    """Prompts each DP rank trains."""

    def sends(self, rank: int) -> Dict[int, List[int]]:
        """Destination rank -> the prompts whose samples ``rank`` sends there (in order). Only
        the first rank of a separate engine sends; the shared engine sends nothing."""
        if self.layout.shared:
            return {}
        engine = self.layout.engine_of(rank)
        if self.layout.engines()[engine][0] != rank:
            return {}
        mine = self.engine_prompts[engine]
        out: Dict[int, List[int]] = {}
        for dest, dp in enumerate(self.layout.dp_rank_of):
            wanted = [p for p in self.train_prompts[dp] if p in mine]
            if wanted:
                out[dest] = wanted
        return out

    def receives(self, rank: int) -> Dict[int, List[int]]:
        """Source rank -> the prompts whose samples ``rank`` receives from it (in order)."""
        if self.layout.shared:
            return {}
        out: Dict[int, List[int]] = {}
        train = self.train_prompts[self.layout.dp_rank_of[rank]]
        for engine, ranks in enumerate(self.layout.engines()):
            got = [p for p in train if p in self.engine_prompts[engine]]
            if got:
                out[ranks[0]] = got
        return out


def plan_rollout(layout: RolloutLayout, num_prompts: int) -> RolloutPlan:
    """Which engine generates which prompt and which DP rank trains which; raises when the
    prompts cannot be split evenly over the DP ranks."""
    if num_prompts % layout.dp_size:
        raise ValueError(f"--rollout-batch-size {num_prompts} is not divisible by the "
                         f"data-parallel size {layout.dp_size}")
    train = balanced_blocks(num_prompts, layout.dp_size)
    if layout.shared:
        engine = train  # each replica generates what it trains
    else:
        engine = balanced_blocks(num_prompts, len(layout.engines()))
    return RolloutPlan(layout, num_prompts, tuple(engine), tuple(train))


def megatron_dp_ranks(tp: int, pp: int, dp: int, cp: int = 1) -> Tuple[int, ...]:
    """DP rank of each global rank in megatron-core's default order ``tp-cp-ep-dp-pp`` (TP
    fastest, PP slowest; expert parallelism 1): a reference for tests. At run time the layout
    is gathered from megatron's own process groups (``spread.current_layout``)."""
    return tuple((r // (tp * cp)) % dp for r in range(tp * cp * dp * pp))


def owned_prompts(plan: RolloutPlan, rank: int) -> Sequence[int]:
    """The prompts the engine of ``rank`` generates."""
    return plan.engine_prompts[plan.layout.engine_of(rank)]
