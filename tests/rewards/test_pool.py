"""rewards/pool.py and training/rl/grade.py: answers graded in worker processes, each under a
hard limit; a hanging or crashing grader costs that answer (0, counted), not the pool; a grader
that raises is reported with its answer (the trainer stops naming it); the scores equal
in-process grading; a replica grades once and every rank gets the scores."""
import time


from dist_utils import run_distributed
from megatron_hpt.rewards import math_reward
from megatron_hpt.rewards.pool import RewardPool

GRADER = "rewards.graders:scripted"


def test_pool_survives_hanging_crashing_and_raising_graders():
    pool = RewardPool(GRADER, workers=2, hard_limit_s=1.0)
    try:
        pairs = [("1", "1"), ("hang", "1"), ("2", "1"), ("crash", "1"), ("raise", "1"), ("3", "3")]
        t0 = time.monotonic()
        rep = pool.grade(pairs)
        took = time.monotonic() - t0
        assert rep.scores == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        assert (rep.timeouts, rep.failures) == (1, 1), rep.errors
        assert rep.raised == [(4, "ValueError: grader bug")]
        assert took < 1.0 + 30.0  # the hang costs its limit (plus a worker restart), not forever
        # the replaced workers grade the next step
        again = pool.grade([("5", "5"), ("4", "5"), ("hang", "x")])
        assert again.scores == [1.0, 0.0, 0.0] and again.timeouts == 1
    finally:
        pool.close()


def test_inline_grading_reports_a_raising_grader():
    rep = RewardPool(GRADER, workers=0).grade([("raise", "1"), ("7", "7")])
    assert rep.scores == [0.0, 1.0] and rep.raised == [(0, "ValueError: grader bug")]


def test_pool_math_scores_equal_in_process_grading():
    pairs = [(r"the answer is $\boxed{\frac{1}{2}}$", "0.5"), (r"$\boxed{3}$", "4"),
             (r"so $\theta = \boxed{\frac{\pi}{2}}$", r"\frac{\pi}{2}"),
             ("no answer", "p - q"), (r"\boxed{p - q}", "p - q")]
    pool = RewardPool("math", timeout_s=5, workers=2)
    try:
        got = pool.grade(pairs).scores
    finally:
        pool.close()
    assert got == [math_reward(r, a) for r, a in pairs] == [1.0, 0.0, 1.0, 0.0, 1.0]




def grade_at_tp2():
    """Rank entry point: TP=2, one replica; the pool is built and called on TP rank 0 only."""
    from megatron_hpt.training import distributed
    from megatron_hpt.training.rl.grade import grade_replica
    distributed.initialize(2, 1, seed=1)
    try:
        built = []

        def pool():
            built.append(1)
            return RewardPool(GRADER, workers=0)
        rewards, stats, raised = grade_replica(
            pool, lambda: [("1", "1"), ("0", "1"), ("raise", "1")], 3)
        return rewards.tolist(), stats, len(built), raised
    finally:
        distributed.destroy()


def test_a_replica_grades_once_and_broadcasts():
    (r0, s0, b0, e0), (r1, s1, b1, e1) = run_distributed(grade_at_tp2, 2)
    assert r0 == r1 == [1.0, 0.0, 0.0]
    assert s0 == s1 == {"reward timeouts": 0.0, "reward failures": 0.0}
    assert (b0, b1) == (1, 0)
    # the raising answer reaches every rank (all stop together); its message the grading rank
    assert e0 == (2, "ValueError: grader bug") and e1 == (2, None)
