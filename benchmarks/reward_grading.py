"""Reward grading throughput (answers/s) with math-verify on the MATH-500 answers, 1 vs 2 worker
processes (rewards/pool.py), interleaved in one run, and the time bound when one grader hangs.

Answers: for problem i, ``The answer is $\\boxed{a}$`` with a = its own ground truth (even i) or
the next problem's (odd i, mostly wrong), so parse and verify both run. Pools are started before
timing (start-up reported separately). Hang: the same answers plus one whose grader sleeps
forever (``hang_or_math``); its worker is killed at the hard limit (3 x --reward-timeout + 2 s).
A grader that waits 20 ms without computing (``waits``) shows whether answers overlap when the
cores are busy with other jobs.

Usage: ``python benchmarks/reward_grading.py [--n 500] [--reps 2] [--timeout 5]``."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "benchmarks",
                    "MATH-500.json")
HANG = "<hang>"


def hang_or_math(response: str, answer: str) -> float:
    """math-verify, except that the response ``<hang>`` never returns."""
    if response == HANG:
        time.sleep(10 ** 6)
    from megatron_hpt.rewards import math_reward
    return math_reward(response, answer, 5)


def waits(response: str, answer: str) -> float:
    """A grader that takes 20 ms without using the CPU (checks that answers overlap)."""
    time.sleep(0.02)
    return float(response == answer)


def pairs(n, path):
    with open(path) as f:
        rows = json.load(f)[:n]
    return [(f"The answer is $\\boxed{{{rows[i if i % 2 == 0 else (i + 1) % len(rows)]['answer']}}}$",
             rows[i]["answer"]) for i in range(len(rows))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--timeout", type=int, default=5)
    p.add_argument("--data", default=DATA)
    a = p.parse_args()
    from megatron_hpt.rewards.pool import RewardPool
    work = pairs(a.n, a.data)
    pools = {}
    for w in (1, 2):
        t0 = time.perf_counter()
        pools[w] = RewardPool("math", a.timeout, workers=w)
        pools[w].grade(work[:2])  # workers started and warm
        print(f"pool of {w}: start-up {time.perf_counter() - t0:.1f} s")
    times = {1: [], 2: []}
    scores = {}
    for _ in range(a.reps):
        for w in (1, 2):
            t0 = time.perf_counter()
            rep = pools[w].grade(work)
            times[w].append(time.perf_counter() - t0)
            scores[w] = (sum(rep.scores), rep.timeouts, rep.failures)
    assert scores[1][0] == scores[2][0], scores
    print(f"{len(work)} answers, {scores[1][0]:.0f} correct; timeouts/failures "
          f"1 worker {scores[1][1:]}, 2 workers {scores[2][1:]}")
    print("| workers | s (median) | answers/s |")
    print("|---|---|---|")
    med = {w: statistics.median(v) for w, v in times.items()}
    for w in (1, 2):
        print(f"| {w} | {med[w]:.2f} | {len(work) / med[w]:.1f} |")
    print(f"2 / 1 workers answers/s: {med[1] / med[2]:.2f}")
    for pool in pools.values():
        pool.close()

    # concurrency without CPU contention: a 20 ms waiting grader, 1 vs 2 workers
    waited = {}
    for w in (1, 2):
        pool = RewardPool("reward_grading:waits", a.timeout, workers=w)
        pool.grade(work[:2])
        t0 = time.perf_counter()
        pool.grade(work[:200])
        waited[w] = time.perf_counter() - t0
        pool.close()
    print(f"20 ms waiting grader, 200 answers: 1 worker {waited[1]:.2f} s, 2 workers "
          f"{waited[2]:.2f} s, ratio {waited[1] / waited[2]:.2f}")

    hang = RewardPool("reward_grading:hang_or_math", a.timeout, workers=2)
    try:
        hang.grade(work[:2])
        sample = work[:100]
        t0 = time.perf_counter()
        base = hang.grade(sample)
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        k = len(sample) // 2
        rep = hang.grade(sample[:k] + [(HANG, "1")] + sample[k:])
        t_hang = time.perf_counter() - t0
        same = rep.scores[:k] + rep.scores[k + 1:] == base.scores
        print(f"hang: {len(sample)} answers {t_base:.2f} s; with one hanging grader "
              f"{t_hang:.2f} s (hard limit {hang.hard_limit_s:.0f} s), timeouts {rep.timeouts}, "
              f"other scores unchanged: {same}")
    finally:
        hang.close()


if __name__ == "__main__":
    main()
