"""Step 2, grade: a step's rewards, graded once per answer (``grade``): on the first rank of each data-parallel replica
(TP rank 0, PP rank 0, CP rank 0), through the reward pool (rewards/pool.py), then broadcast to
the replica's other ranks, which hold copies of the same samples.

What moves: one broadcast of [answers + 2] floats over the CP group, then over the model-parallel
(TP x PP) group; one all-reduce of the two failure counts over the DP group."""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_hpt.rewards.pool import RewardPool


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"


def is_grading_rank() -> bool:
    return (parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_pipeline_model_parallel_rank() == 0
            and parallel_state.get_context_parallel_rank() == 0)


def grade_replica(pool: Callable[[], RewardPool], pairs: Callable[[], List[Tuple[str, str]]],
                  n: int) -> Tuple[torch.Tensor, Dict[str, float]]:
    """[n] rewards of this replica's answers, the step's counts summed over DP replicas
    (`reward timeouts`, `reward failures`) and ``raised``: None, or (answer index, message) of
    the first answer whose grader raised (the message on the grading rank only; every rank of
    the replica gets the index, so all can stop together). ``pool`` and ``pairs`` are only
    called on the grading rank (the pool's workers start there, the responses are decoded
    there)."""
    out = torch.zeros(n + 3, dtype=torch.float64, device=_device())
    message = None
    if is_grading_rank():
        report = pool().grade(pairs())
        if report.errors:
            print(f" rewards: {report.failures} failed, {report.timeouts} timed out; first: "
                  f"{report.errors[0]}", flush=True)
        first = report.raised[0] if report.raised else (-1, None)
        message = first[1]
        out.copy_(torch.tensor(report.scores + [report.timeouts, report.failures, first[0] + 1],
                               dtype=torch.float64))
    for group in (parallel_state.get_context_parallel_group(),
                  parallel_state.get_model_parallel_group()):
        if dist.get_world_size(group) > 1:
            dist.broadcast(out, src=dist.get_global_rank(group, 0), group=group)
    raised = int(out[n + 2]) - 1
    counts = out[n:n + 2].clone()
    dp = parallel_state.get_data_parallel_group()
    if dist.get_world_size(dp) > 1:
        dist.all_reduce(counts, group=dp)
    return (out[:n].float().cpu(), {"reward timeouts": float(counts[0]),
                                    "reward failures": float(counts[1])},
            None if raised < 0 else (raised, message))


def grade(pool: Callable[[], RewardPool], tokenizer, problems, samples, index: int
          ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """[len(samples)] rewards of ``samples`` against their prompts' answers and the step's
    `reward timeouts` / `reward failures` counts. A grader that raises stops the run with a
    RuntimeError naming rollout batch ``index``, the prompt and its answer."""
    rewards, counts, raised = grade_replica(
        pool, lambda: [(tokenizer.decode(s.response_token_ids, skip_special_tokens=True),
                        problems[s.prompt_index].answer) for s in samples], len(samples))
    if raised is not None:  # a grader bug stops the run naming the answer
        j = samples[raised[0]].prompt_index
        raise RuntimeError(f"the reward grader failed on rollout batch {index}, prompt {j} "
                           f"of this rank (answer {problems[j].answer!r}): "
                           f"{raised[1] or 'see the grading rank of this replica'}")
    return rewards, counts
