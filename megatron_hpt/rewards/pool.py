"""Grading a step's answers in a pool of worker processes (``--reward-workers``).

Each answer is graded once, by one worker, under a hard wall-clock limit (``hard_limit_s``:
math-verify bounds each of its three steps, parse gold / parse answer / verify, by
``--reward-timeout``; the limit is three of those plus 2 s of slack). A worker that passes the
limit is killed and replaced, one that dies (a crash in native code, ``os._exit``) is replaced;
either way that answer scores 0 and is counted (``timeouts``, ``failures``). A grader that
raises a Python exception has a bug: the answer is reported in ``raised`` and the trainer stops
naming it (training/rl/grade.py). The pool lives as long as the trainer (workers start once, with
the grader imported) and keeps ``workers`` answers in flight. A worker is a fresh interpreter
(``python -m megatron_hpt.rewards.pool FD GRADER TIMEOUT``, talking over a socket pair), so it
never re-imports the trainer's main module, torch or megatron.

With ``workers = 0`` answers are graded in the calling process (math-verify's own timeouts only).
Graders: ``arithmetic`` / ``math`` (rewards/__init__.py) or ``"module:function"``, a function
``(response, answer) -> float`` importable in the worker (tests use it for a hanging grader).
"""
from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import List, Sequence, Tuple


def resolve_grader(name: str, timeout_s: int):
    if ":" in name:
        module, fn = name.split(":", 1)
        return getattr(importlib.import_module(module), fn)
    from megatron_hpt.rewards import reward_fn
    return reward_fn(name, timeout_s)


def _serve(conn, name: str, timeout_s: int) -> None:
    """Worker loop: import the grader, say ready, then grade (index, response, answer) messages."""
    grade = resolve_grader(name, timeout_s)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        i, response, answer = msg
        try:
            conn.send((i, float(grade(response, answer)), None))
        except Exception as e:  # the grader's failure is this answer's 0, not the worker's end
            conn.send((i, 0.0, f"{type(e).__name__}: {e}"))


@dataclass
class GradeReport:
    """Scores of one call, in answer order, and what went wrong."""

    scores: List[float]
    """One score per answer (0 for an answer whose grader hung, crashed or raised)."""
    timeouts: int = 0
    """Answers whose grader passed the hard limit (worker killed and replaced)."""
    failures: int = 0
    """Answers whose grader raised or whose worker died."""
    errors: List[str] = field(default_factory=list)
    """The first few failure messages (for the log)."""
    raised: List[Tuple[int, str]] = field(default_factory=list)
    """(answer index, "Type: message") of answers whose grader raised."""


class _Worker:
    def __init__(self, name, timeout_s):
        mine, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "megatron_hpt.rewards.pool", str(theirs.fileno()), name,
             str(timeout_s)], pass_fds=(theirs.fileno(),), env=env)
        theirs.close()
        self.conn = Connection(mine.detach())
        try:
            ready = self.conn.poll(120) and self.conn.recv() == "ready"
        except (EOFError, OSError):  # the worker died importing the grader
            ready = False
        if not ready:
            code = self.proc.poll()
            self.kill()
            raise RuntimeError(f"reward worker for grader {name!r} did not start in 120 s "
                               f"(exit code {code}; see its traceback above)")
        self.task = None  # (index, deadline)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self.conn.close()


class RewardPool:
    """``grade(pairs)`` -> GradeReport; ``close()`` stops the workers."""

    def __init__(self, grader: str, timeout_s: int = 5, workers: int = 0, hard_limit_s=None,
                 inline_fn=None):
        """``inline_fn``: the grading function to use when ``workers`` is 0 (default: the
        grader resolved by name)."""
        self.grader, self.timeout_s, self.num_workers = grader, timeout_s, workers
        self.hard_limit_s = 3 * timeout_s + 2.0 if hard_limit_s is None else hard_limit_s
        self._workers: List[_Worker] = []
        self._inline = (inline_fn or resolve_grader(grader, timeout_s)) if workers == 0 else None

    def grade(self, pairs: Sequence[Tuple[str, str]]) -> GradeReport:
        report = GradeReport(scores=[0.0] * len(pairs))
        if self._inline is not None:
            for i, (response, answer) in enumerate(pairs):
                try:
                    report.scores[i] = float(self._inline(response, answer))
                except Exception as e:  # noqa: BLE001 - reported with its answer, run stops
                    report.raised.append((i, f"{type(e).__name__}: {e}"))
            return report
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self.grader, self.timeout_s))
        pending = deque(enumerate(pairs))
        while pending or any(w.task for w in self._workers):
            for w in self._workers:
                if w.task is None and pending:
                    i, (response, answer) = pending.popleft()
                    w.conn.send((i, response, answer))
                    w.task = (i, time.monotonic() + self.hard_limit_s)
            busy = [w for w in self._workers if w.task]
            next_deadline = min(w.task[1] for w in busy)
            ready = wait([w.conn for w in busy], timeout=max(0.0, next_deadline - time.monotonic()))
            for k, w in enumerate(self._workers):
                if w.task is None:
                    continue
                if w.conn in ready:
                    try:
                        i, score, err = w.conn.recv()
                    except (EOFError, OSError):  # the worker died mid-answer
                        self._replace(k, report, f"reward worker died (exit {w.proc.wait(5)})")
                        continue
                    report.scores[i] = score
                    if err:
                        report.raised.append((i, err))
                    w.task = None
                elif time.monotonic() >= w.task[1]:
                    report.timeouts += 1
                    self._replace(k, report, None)
        return report

    def _fail(self, report: GradeReport, message: str) -> None:
        report.failures += 1
        if len(report.errors) < 5:
            report.errors.append(message)

    def _replace(self, k: int, report: GradeReport, failure) -> None:
        """Kill worker k (its answer keeps score 0) and start a fresh one."""
        if failure is not None:
            self._fail(report, failure)
        self._workers[k].kill()
        self._workers[k] = _Worker(self.grader, self.timeout_s)

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
                w.proc.wait(5)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
            if w.proc.poll() is None:
                w.kill()
            else:
                w.conn.close()
        self._workers = []


if __name__ == "__main__":  # a worker: FD GRADER TIMEOUT
    _serve(Connection(int(sys.argv[1])), sys.argv[2], int(sys.argv[3]))
